"""The training loop: learning-rate schedule, clipping, EMA, bit-identical resume after a crash, atomic checkpoints;
and the runtime tokenizer builder."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from tests.tiny.dit import TINY_T2V, random_dit
from tests.tiny.t5 import TINY_T5
from tests.tiny.tokenizer import CORPUS, build_tiny_tokenizer
from wanflow.models.text_encoder import TextEncoder, build_umt5
from wanflow.training import loop
from wanflow.training.flow import flow_matching_loss, maybe_drop_context, sample_timesteps
from wanflow.training.loop import (
    TrainConfig,
    as_module,
    load_checkpoint,
    lr_factor,
    resolve_device,
    save_checkpoint,
    train,
)
from wanflow.training.tokenizer import build_tokenizer


def quadratic(w: nn.Parameter, target: torch.Tensor):
    def loss_fn(step, gen):
        return ((w - target) ** 2).sum()

    return loss_fn


def test_warmup_then_cosine_schedule():
    cfg = TrainConfig(steps=10, lr=0.1, warmup=4, min_lr_ratio=0.1, grad_clip=None)
    assert [lr_factor(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    for s in range(4, 10):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 6))
        assert lr_factor(s, cfg) == pytest.approx(expected)
    w = nn.Parameter(torch.zeros(3))
    history = train([w], quadratic(w, torch.ones(3)), cfg, progress=False)
    assert history.lrs == pytest.approx([0.1 * lr_factor(s, cfg) for s in range(10)])
    assert history.losses[-1] < history.losses[0]


def test_gradient_clipping_scales_the_gradient_to_the_limit(monkeypatch):
    w = nn.Parameter(torch.zeros(4))
    direction = torch.tensor([3.0, 4.0, 0.0, 0.0])  # gradient norm 5
    run = {}

    def loss_fn(step, gen):
        return (w * direction).sum()

    update = loop._update

    def spy(r, *args):  # keep the optimiser to look at its first moment
        run["opt"] = r.optimizer
        update(r, *args)

    monkeypatch.setattr(loop, "_update", spy)
    history = train([w], loss_fn, TrainConfig(steps=1, lr=0.1, grad_clip=0.5, weight_decay=0.0), progress=False)
    assert history.grad_norms == [pytest.approx(5.0)]
    exp_avg = run["opt"].state[w]["exp_avg"]  # (1 - beta1) * clipped gradient
    assert torch.allclose(exp_avg, 0.1 * direction * 0.5 / 5.0, atol=1e-6)


def test_ema_follows_the_weights():
    w = nn.Parameter(torch.zeros(2))
    seen = []

    def loss_fn(step, gen):
        seen.append(w.detach().clone())
        return ((w - 1.0) ** 2).sum()

    history = train([w], loss_fn, TrainConfig(steps=3, lr=0.1, ema_decay=0.9, grad_clip=None), progress=False)
    ema = seen[0]
    for p in [*seen[1:], w.detach()]:
        ema = 0.9 * ema + 0.1 * p
    assert torch.allclose(history.ema["0"], ema)


def test_frozen_parameters_are_not_trained_or_saved(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    extra = nn.Parameter(torch.ones(1))

    def loss_fn(step, gen):
        return (model(torch.ones(1, 2)) * extra).sum() ** 2

    train([model, extra], loss_fn, TrainConfig(steps=2, lr=0.1), tmp_path / "ck.pt", progress=False)
    assert torch.equal(model[0].weight, frozen)
    assert set(load_checkpoint(tmp_path / "ck.pt")["model"]) == {"0.1.weight", "0.1.bias", "1.0"}
    assert isinstance(as_module(model), nn.Sequential)
    with pytest.raises(ValueError, match="list of modules"):
        as_module([model, "not a module"])


# ---- resume ---------------------------------------------------------------------------------------------------------


def dit_task(crash_at: int | None = None, calls: list[int] | None = None):
    """A tiny DiT and a loss that draws from the generator and from the global torch and Python RNGs; the steps it
    runs are appended to ``calls``."""
    torch.manual_seed(123)
    model = random_dit(TINY_T2V)
    data = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 16, 1, 4, 4, generator=data)
    context, null = torch.randn(2, 5, 32, generator=data), torch.zeros(1, 32)

    def loss_fn(step, gen):
        if step == crash_at:
            raise RuntimeError("simulated crash")
        if calls is not None:
            calls.append(step)
        t = sample_timesteps(2, 5.0, generator=gen)
        ctx = maybe_drop_context(context, null, 0.3, gen)
        jitter = 1 + 0.1 * torch.rand(()) + 0.1 * random.random()  # global RNGs, as data augmentation would
        return flow_matching_loss(model, x0 * jitter, ctx, t, torch.randn(x0.shape, generator=gen))

    return model, loss_fn


CFG = TrainConfig(steps=10, lr=1e-3, warmup=3, grad_clip=0.5, ema_decay=0.9, checkpoint_every=5, seed=7)


def test_resume_after_a_crash_is_bit_identical(tmp_path):
    straight, loss_fn = dit_task()
    reference = train(straight, loss_fn, CFG, tmp_path / "straight.pt", progress=False)

    crashed, loss_fn = dit_task(crash_at=7)  # steps 5 and 6 run, then the crash: they are lost
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, loss_fn, CFG, tmp_path / "run.pt", progress=False)
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 5
    torch.rand(100), random.random()  # the new process starts from other RNG states

    calls = []
    resumed, loss_fn = dit_task(calls=calls)  # a fresh model: its weights come from the checkpoint
    history = train(resumed, loss_fn, CFG, tmp_path / "run.pt", progress=False)
    assert calls == [5, 6, 7, 8, 9]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert history.losses == reference.losses and history.lrs == reference.lrs
    assert history.grad_norms == reference.grad_norms
    assert all(torch.equal(reference.ema[k], history.ema[k]) for k in reference.ema)
    final = load_checkpoint(tmp_path / "run.pt")
    assert final["step"] == 10 and len(final["history"]["losses"]) == 10


def test_resuming_a_finished_run_does_nothing(tmp_path):
    w = nn.Parameter(torch.zeros(2))
    cfg = TrainConfig(steps=3, lr=0.1)
    first = train([w], quadratic(w, torch.ones(2)), cfg, tmp_path / "ck.pt", progress=False)
    after = w.detach().clone()

    def never(step, gen):
        raise AssertionError("no step should run")

    again = train([w], never, cfg, tmp_path / "ck.pt", progress=False)
    assert again.losses == first.losses and torch.equal(w.detach(), after)
    with pytest.raises(ValueError, match="beyond"):
        train([w], never, TrainConfig(steps=2, lr=0.1), tmp_path / "ck.pt", progress=False)
    with pytest.raises(ValueError, match="trainable weights"):
        train([nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))], never, cfg, tmp_path / "ck.pt")


# ---- checkpoint files -----------------------------------------------------------------------------------------------


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint({"step": 1, "weights": torch.ones(3)}, path)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(loop.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2, "weights": torch.zeros(3)}, path)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, tmp_path / "new.pt")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temporary, no partial new.pt
    assert torch.load(path, weights_only=True)["step"] == 1  # the old checkpoint is intact


def test_a_failed_save_inside_train_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    w = nn.Parameter(torch.zeros(2))
    monkeypatch.setattr(loop.torch, "save", lambda obj, f, *a, **k: (f.write(b"xx"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        train([w], quadratic(w, torch.ones(2)), TrainConfig(steps=2, lr=0.1), tmp_path / "ck.pt", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_config_and_device_checks(tmp_path):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ({"steps": 0}, {"warmup": 20, "steps": 10}, {"dtype": "float16"}, {"grad_clip": 0.0}, {"lr": 0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    torch.save({"step": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    w = nn.Parameter(torch.zeros(1))
    with pytest.raises(FloatingPointError, match="step 0"):
        train([w], lambda step, gen: w.sum() * float("nan"), TrainConfig(steps=1), progress=False)


def test_bfloat16_autocast_trains():
    w = nn.Parameter(torch.zeros(4, 4))
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))

    def loss_fn(step, gen):
        out = x @ w
        assert out.dtype == torch.bfloat16  # inside autocast
        return ((out.float() - x) ** 2).mean()

    history = train([w], loss_fn, TrainConfig(steps=20, lr=0.05, dtype="bfloat16"), progress=False)
    assert w.dtype == torch.float32 and history.losses[-1] < 0.5 * history.losses[0]


# ---- tokenizer (wanflow.training.tokenizer) -------------------------------------------------------------------------


def test_build_tokenizer_is_umt5_shaped_deterministic_and_reloadable(tmp_path):
    tok = build_tokenizer(CORPUS, tmp_path / "a", vocab_size=120)
    again = build_tokenizer(list(CORPUS), tmp_path / "b", vocab_size=120)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2, None)
    ids = tok("a red circle moving right")["input_ids"]
    assert ids[-1] == 1 and 0 not in ids and 2 not in ids
    assert again.get_vocab() == tok.get_vocab()
    assert (tmp_path / "a" / "tokenizer_config.json").exists()
    assert tok.get_vocab() == build_tiny_tokenizer(tmp_path / "tiny").get_vocab()  # same recipe as the test helper
    encoder = TextEncoder(tok, build_umt5(TINY_T5), text_len=TINY_T5.text_len)
    (context,) = encoder.encode(["a red circle moving right"])
    assert context.shape == (len(ids), TINY_T5.dim)
    with pytest.raises(ValueError, match="non-empty"):
        build_tokenizer(["", "  "], tmp_path / "c")
