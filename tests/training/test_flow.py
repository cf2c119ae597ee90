"""Flow-matching objective: timestep distribution per expert, the loss against hand computations, image
conditioning (TI2V frame 0, I2V ``y``), context dropout, and a tiny DiT that overfits a fixed batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.tiny.dit import TINY_T2V, TINY_TI2V, random_dit
from tests.tiny.vae import TINY_VAE21, random_vae
from wanflow.pipelines.core import model_timesteps
from wanflow.tasks import TASKS
from wanflow.training.flow import (
    expert_range,
    flow_matching_loss,
    image_condition,
    maybe_drop_context,
    sample_timesteps,
    token_timesteps,
)
from wanflow.training.loop import TrainConfig, train


def shifted_cdf(x: torch.Tensor, shift: float, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """P(t <= x | lo <= t < hi) for t = s u / (1 + (s - 1) u), u ~ U(0, 1): the pre-image u = x / (s - (s - 1) x)."""

    def g(v):
        return v / (shift - (shift - 1) * v)

    x = torch.as_tensor(x, dtype=torch.float64)
    return (g(x) - g(torch.tensor(lo))) / (g(torch.tensor(hi)) - g(torch.tensor(lo)))


def ks_statistic(samples: torch.Tensor, cdf) -> float:
    """Kolmogorov-Smirnov distance between the empirical CDF of ``samples`` and ``cdf``."""
    x = samples.double().sort().values
    n = len(x)
    f = cdf(x)
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - f
    below = f - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(above, below).max())


N = 20_000
KS_LIMIT = 1.95 / N**0.5  # the 0.1% critical value; the draws are seeded, so this is a fixed check


@pytest.mark.parametrize("shift", [1.0, 5.0, 12.0])
def test_dense_timesteps_follow_the_shifted_distribution(shift):
    t = sample_timesteps(N, shift, generator=torch.Generator().manual_seed(0))
    assert t.shape == (N,) and t.dtype == torch.float32
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    assert ks_statistic(t, lambda x: shifted_cdf(x, shift)) < KS_LIMIT
    # the closed-form median: shift(0.5) = s / (1 + s)
    assert float(t.median()) == pytest.approx(shift / (1 + shift), abs=0.01)


@pytest.mark.parametrize("task", ["t2v-A14B", "i2v-A14B"])
def test_experts_stay_on_their_side_of_the_boundary(task):
    spec = TASKS[task]
    gen = torch.Generator().manual_seed(1)
    high = sample_timesteps(N, spec.shift, expert_range(spec.boundary, "high"), gen)
    low = sample_timesteps(N, spec.shift, expert_range(spec.boundary, "low"), gen)
    b = spec.boundary
    assert bool((high * 1000 >= b * 1000).all()) and bool((high >= b).all()) and bool((high <= 1).all())
    assert bool((low * 1000 < b * 1000).all()) and bool((low < b).all()) and bool((low >= 0).all())
    assert ks_statistic(high, lambda x: shifted_cdf(x, spec.shift, b, 1.0)) < KS_LIMIT
    assert ks_statistic(low, lambda x: shifted_cdf(x, spec.shift, 0.0, b)) < KS_LIMIT


def test_timesteps_at_the_exact_edges_are_pulled_inside():
    # u in a range of width 0: every sample sits on the boundary, which belongs to the high expert only
    t = sample_timesteps(100, 5.0, (0.9, 0.9 + 1e-12), torch.Generator().manual_seed(0))
    assert bool((t >= 0.9).all()) and bool((t * 1000 >= 900).all())
    below = sample_timesteps(100, 1.0, (0.9 - 1e-12, 0.9), torch.Generator().manual_seed(0))
    assert bool((below < 0.9).all()) and bool((below * 1000 < 900).all())


def test_timesteps_are_seeded_and_checked():
    a = sample_timesteps(8, 5.0, generator=torch.Generator().manual_seed(3))
    b = sample_timesteps(8, 5.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="t_range"):
        sample_timesteps(8, 5.0, (0.5, 0.5))
    with pytest.raises(ValueError, match="shift"):
        sample_timesteps(8, 0.0)
    assert expert_range(0.875, "high") == (0.875, 1.0)
    assert expert_range(0.875, "low") == (0.0, 0.875)
    assert expert_range(None) == (0.0, 1.0)
    with pytest.raises(ValueError, match="expert"):
        expert_range(0.875, "middle")
    with pytest.raises(ValueError, match="dense"):
        expert_range(None, "high")


# ---- the loss ---------------------------------------------------------------------------------------------------


class LinearVelocity(nn.Module):
    """v = W x (over channels) + a * t / 1000 + mean(context): a model whose output we can compute by hand."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(channels, channels, generator=gen) / channels**0.5)
        self.a = nn.Parameter(torch.tensor(0.7))
        self.calls: list[dict] = []

    def forward(self, x, t, context, y=None):
        self.calls.append({"x": x.detach().clone(), "t": t.detach().clone(), "y": y})
        t = t.view(t.shape[0], 1, 1, 1, 1) if t.ndim == 1 else t.view(t.shape[0], 1, x.shape[2], 1, -1).mean(-1, True)
        return torch.einsum("oc,bcthw->bothw", self.weight, x) + self.a * t / 1000 + context.mean()


def batch(b=2, c=4, t=3, h=4, w=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, c, t, h, w, generator=gen)
    noise = torch.randn(b, c, t, h, w, generator=gen)
    context = torch.randn(b, 5, 8, generator=gen)
    return x0, noise, context


def test_loss_equals_hand_computation():
    x0, noise, context = batch()
    t = torch.tensor([0.25, 0.9])
    model = LinearVelocity(4)
    loss = flow_matching_loss(model, x0, context, t, noise)
    x_t = torch.stack([(1 - ti) * xi + ti * ni for xi, ni, ti in zip(x0, noise, t, strict=True)])
    with torch.no_grad():
        v = torch.einsum("oc,bcthw->bothw", model.weight, x_t)
        v = v + 0.7 * t.view(-1, 1, 1, 1, 1) + context.mean()
    expected = ((v - (noise - x0)) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(model.calls[0]["t"], 1000 * t)  # the DiT sees 1000 t
    loss.backward()
    assert model.weight.grad is not None and model.a.grad is not None


def test_frame0_mask_keeps_frame0_clean_at_t0_and_out_of_the_loss():
    x0, noise, context = batch(t=3, h=4, w=4)
    t = torch.tensor([0.6, 0.3])
    rows = torch.tensor([True, False])
    model = LinearVelocity(4)
    loss = flow_matching_loss(model, x0, context, t, noise, frame0_mask=rows, patch=(1, 2, 2))
    x_in, t_in = model.calls[0]["x"], model.calls[0]["t"]
    assert torch.equal(x_in[0, :, 0], x0[0, :, 0])  # conditioned: clean frame 0
    assert torch.allclose(x_in[0, :, 1:], 0.4 * x0[0, :, 1:] + 0.6 * noise[0, :, 1:])
    assert torch.allclose(x_in[1], 0.7 * x0[1] + 0.3 * noise[1])  # not conditioned: all noised
    tokens = 2 * 2  # tokens per latent frame: (4 / 2) * (4 / 2)
    assert t_in.shape == (2, 3 * tokens)
    assert torch.equal(t_in[0, :tokens], torch.zeros(tokens))
    assert torch.allclose(t_in[0, tokens:], torch.full((2 * tokens,), 600.0))
    assert torch.allclose(t_in[1], torch.full((3 * tokens,), 300.0))
    # hand computation: the mean over every element except frame 0 of sample 0
    with torch.no_grad():
        v = model(x_in, t_in, context)
    err = (v - (noise - x0)) ** 2
    expected = (err[0, :, 1:].sum() + err[1].sum()) / (err[0, :, 1:].numel() + err[1].numel())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_teacher_replaces_the_target_on_the_same_input_without_gradients():
    x0, noise, context = batch(t=3, h=4, w=4)
    t = torch.tensor([0.6, 0.3])
    rows = torch.tensor([True, False])
    model, teacher = LinearVelocity(4), LinearVelocity(4)
    with torch.no_grad():
        teacher.weight.mul_(-0.5)
        teacher.a.fill_(3.0)
    for mask in (None, rows):
        model.calls.clear()
        teacher.calls.clear()
        loss = flow_matching_loss(model, x0, context, t, noise, frame0_mask=mask, patch=(1, 2, 2), teacher=teacher)
        x_in, t_in = model.calls[0]["x"], model.calls[0]["t"]
        assert torch.equal(teacher.calls[0]["x"], x_in) and torch.equal(teacher.calls[0]["t"], t_in)
        with torch.no_grad():
            err = (model(x_in, t_in, context) - teacher(x_in, t_in, context)) ** 2
        expected = (
            err.mean()
            if mask is None
            else (err[0, :, 1:].sum() + err[1].sum()) / (err[0, :, 1:].numel() + err[1].numel())
        )
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        assert loss.item() > 0.1
        loss.backward()
        assert teacher.weight.grad is None and model.weight.grad is not None  # no gradient through the teacher
    assert flow_matching_loss(model, x0, context, t, noise, teacher=model).item() == 0.0  # its own teacher


def test_frame0_loss_ignores_the_prediction_on_frame0():
    x0, noise, context = batch()
    t = torch.tensor([0.5, 0.5])

    def model(x, tt, ctx, y=None, bump=0.0):
        v = x.clone()
        v[:, :, 0] += bump
        return v

    base = flow_matching_loss(model, x0, context, t, noise, frame0_mask=True)
    bumped = flow_matching_loss(lambda *a, **k: model(*a, **k, bump=100.0), x0, context, t, noise, frame0_mask=True)
    assert float(base) == float(bumped)
    unmasked = flow_matching_loss(lambda *a, **k: model(*a, **k, bump=100.0), x0, context, t, noise)
    assert float(unmasked) > 100 * float(base)


def test_token_timesteps_match_the_sampler():
    latents = torch.zeros(1, 48, 3, 4, 6)
    ours = token_timesteps(torch.tensor([0.5]), torch.tensor([True]), latents.shape, (1, 2, 2))
    theirs = model_timesteps(500, latents, torch.zeros(1, 48, 1, 4, 6), (1, 2, 2))
    assert torch.equal(ours, theirs.dense())
    with pytest.raises(ValueError, match="temporal patch"):
        token_timesteps(torch.tensor([0.5]), torch.tensor([True]), latents.shape, (2, 2, 2))


def test_frame0_training_on_the_ti2v_dit():
    torch.manual_seed(0)
    model = random_dit(TINY_TI2V)
    x0, noise = torch.randn(2, 48, 2, 4, 4), torch.randn(2, 48, 2, 4, 4)
    context = torch.randn(2, 6, TINY_TI2V.text_dim)
    loss = flow_matching_loss(model, x0, context, torch.tensor([0.3, 0.8]), noise, frame0_mask=torch.tensor([1, 0]))
    loss.backward()
    assert torch.isfinite(loss) and model.patch_embedding.weight.grad.abs().sum() > 0


def test_y_is_passed_to_the_model():
    x0, noise, context = batch()
    y = torch.randn(2, 20, 3, 4, 4)
    model = LinearVelocity(4)
    flow_matching_loss(model, x0, context, torch.tensor([0.1, 0.2]), noise, y=y)
    assert model.calls[0]["y"] is y


def test_loss_rejects_bad_shapes():
    x0, noise, context = batch()
    with pytest.raises(ValueError, match=r"\(B,\)"):
        flow_matching_loss(LinearVelocity(4), x0, context, torch.tensor([0.1]), noise)
    with pytest.raises(ValueError, match="frame0_mask"):
        flow_matching_loss(LinearVelocity(4), x0, context, torch.tensor([0.1, 0.2]), noise, frame0_mask=torch.ones(3))


# ---- conditioning -----------------------------------------------------------------------------------------------


def test_maybe_drop_context():
    gen = torch.Generator().manual_seed(0)
    context = torch.randn(1000, 6, 8, generator=gen)
    null = torch.randn(4, 8, generator=gen)  # shorter: zero-padded to 6 tokens
    padded_null = torch.cat([null, torch.zeros(2, 8)])
    assert torch.equal(maybe_drop_context(context, null, 0.0, gen), context)
    assert torch.equal(maybe_drop_context(context, null, 1.0, gen), padded_null.expand(1000, -1, -1))
    out = maybe_drop_context(context, null, 0.3, torch.Generator().manual_seed(1))
    dropped = (out == padded_null).all(-1).all(-1)
    kept = (out == context).all(-1).all(-1)
    assert bool((dropped ^ kept).all())  # each row is one or the other
    assert 0.25 < float(dropped.float().mean()) < 0.35
    again = maybe_drop_context(context, null, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="probability"):
        maybe_drop_context(context, null, 1.5)


def test_image_condition_is_mask_then_latent_of_first_frame_and_zeros():
    vae = random_vae(TINY_VAE21)
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = image_condition(vae, video)
    assert y.shape == (1, 4 + 16, 2, 2, 2)
    assert torch.equal(y[:, :4, 0], torch.ones(1, 4, 2, 2)) and torch.equal(y[:, :4, 1], torch.zeros(1, 4, 2, 2))
    given = torch.cat([video[:, :, :1], torch.zeros(1, 3, 4, 16, 16)], dim=2)
    with torch.no_grad():
        assert torch.allclose(y[:, 4:], vae.encode(given))


# ---- overfitting ------------------------------------------------------------------------------------------------


def test_tiny_dit_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = random_dit(TINY_T2V)
    data = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 16, 2, 4, 4, generator=data)
    context = torch.randn(2, 7, TINY_T2V.text_dim, generator=data)
    t_eval, noise_eval = torch.tensor([0.2, 0.7]), torch.randn(2, 16, 2, 4, 4, generator=data)

    def eval_loss():
        with torch.no_grad():
            return float(flow_matching_loss(model, x0, context, t_eval, noise_eval))

    def loss_fn(step, gen):
        t = sample_timesteps(2, 3.0, generator=gen)
        return flow_matching_loss(model, x0, context, t, torch.randn(x0.shape, generator=gen))

    before = eval_loss()
    history = train(model, loss_fn, TrainConfig(steps=50, lr=3e-3, warmup=5, weight_decay=0.0), progress=False)
    after = eval_loss()
    assert len(history.losses) == 50
    assert after < 0.5 * before
    assert sum(history.losses[-10:]) < 0.5 * sum(history.losses[:10])
