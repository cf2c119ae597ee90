"""Step hooks stack: each sees the plan and every step, each ``wrap`` wraps what the hooks before it produced, and
``end`` runs even when a step raises."""

from types import SimpleNamespace

import pytest
import torch

from wanflow.pipelines.core import Conditioning, Sampler, denoise
from wanflow.sampling.hooks import StepHook
from wanflow.sampling.solvers import get_schedule, get_solver


class Ones(torch.nn.Module):
    """A velocity model that predicts 1 everywhere (so CFG gives 1 at any scale)."""

    cfg = SimpleNamespace(patch_size=(1, 2, 2))

    def forward(self, x, t, context, y=None):
        return torch.ones_like(x)


class Affine(StepHook):
    def __init__(self, a: float, b: float):
        self.a, self.b = a, b

    def wrap(self, velocity, step):
        return lambda *args: self.a * velocity(*args) + self.b


class Recorder(StepHook):
    def __init__(self, events: list, fail_at: int | None = None):
        self.events, self.fail_at = events, fail_at

    def begin(self, steps):
        self.events.append(("begin", [s.expert for s in steps]))

    def before(self, step, model):
        self.events.append(("before", step.index, step.next_expert))

    def after(self, step, latents):
        if step.index == self.fail_at:
            raise RuntimeError("stop")
        self.events.append(("after", step.index))

    def end(self):
        self.events.append(("end",))


def run(hooks, steps=4, boundary_t=None):
    noise = torch.randn(1, 4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    cond = Conditioning(torch.zeros(1, 3, 8), torch.zeros(1, 3, 8))
    sampler = Sampler(get_schedule("euler", steps, 3.0), get_solver("euler"), boundary_t, 5.0)
    return noise, denoise({"dense": Ones(), "high": Ones(), "low": Ones()}, noise, cond, sampler, hooks)


def test_wraps_compose_in_list_order():
    """Euler from t = 1 to 0 with a constant velocity c ends at noise - c: c = 2 * 1 + 1, or 2 * (1 + 1)."""
    noise, out = run([Affine(2.0, 0.0), Affine(1.0, 1.0)])
    torch.testing.assert_close(out, noise - 3.0, rtol=0, atol=1e-6)
    noise, out = run([Affine(1.0, 1.0), Affine(2.0, 0.0)])
    torch.testing.assert_close(out, noise - 4.0, rtol=0, atol=1e-6)
    noise, out = run([])
    torch.testing.assert_close(out, noise - 1.0, rtol=0, atol=1e-6)


def test_hooks_see_the_plan_every_step_and_the_end():
    events = []
    run([Recorder(events)], steps=3, boundary_t=900.0)
    experts = events[0][1]
    assert events[0][0] == "begin" and experts[0] == "high" and experts[-1] == "low"
    switch = experts.index("low")
    befores = [e for e in events if e[0] == "before"]
    assert [b[2] for b in befores] == [*experts[1:], None]  # each step knows the next one's expert
    assert befores[switch - 1][2] == "low" and events[-1] == ("end",)
    assert [e[1] for e in events if e[0] == "after"] == [0, 1, 2]


def test_end_runs_when_a_step_raises():
    events = []
    with pytest.raises(RuntimeError, match="stop"):
        run([Recorder(events, fail_at=1)])
    assert events[-1] == ("end",) and ("after", 2) not in events


class Shift(StepHook):
    """Adds ``offset`` to the latents after step ``at`` (a replacement, as diffusers' callback_on_step_end makes)."""

    def __init__(self, at: int, offset: float, seen: list | None = None):
        self.at, self.offset, self.seen = at, offset, seen

    def after(self, step, latents):
        if self.seen is not None:
            self.seen.append(latents.clone())
        return latents + self.offset if step.index == self.at else None


class StopAfter(StepHook):
    def __init__(self, index: int):
        self.index, self.last = index, None

    def after(self, step, latents):
        self.last = step.index

    def finished(self):
        return self.last == self.index


def test_a_hook_may_replace_the_latents_and_the_next_hooks_and_steps_see_them():
    """A constant velocity moves Euler by the same total whatever the latents are: the offset stays in the result."""
    seen = []
    noise, out = run([Shift(1, 10.0), Shift(-1, 0.0, seen)])
    torch.testing.assert_close(out, noise - 1.0 + 10.0, rtol=0, atol=1e-5)
    sigmas = get_schedule("euler", 4, 3.0).sigmas
    torch.testing.assert_close(seen[1], noise + (sigmas[2] - sigmas[0]) + 10.0, rtol=0, atol=1e-5)


def test_a_finished_hook_ends_the_run_with_the_latents_so_far():
    events, stop = [], StopAfter(1)
    noise, out = run([Recorder(events), stop])
    sigmas = get_schedule("euler", 4, 3.0).sigmas
    torch.testing.assert_close(out, noise + (sigmas[2] - sigmas[0]), rtol=0, atol=1e-6)
    assert [e[1] for e in events if e[0] == "after"] == [0, 1] and events[-1] == ("end",)


def test_replaced_latents_keep_the_given_first_frame():
    """TI2V: frame 0 is the image latent after every step, whatever a hook puts there."""
    noise = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    frame0 = torch.full((1, 4, 1, 2, 2), 0.5)
    cond = Conditioning(torch.zeros(1, 3, 8), torch.zeros(1, 3, 8), frame0=frame0)
    sampler = Sampler(get_schedule("euler", 4, 3.0), get_solver("euler"), None, 5.0)
    out = denoise({"dense": Ones()}, noise, cond, sampler, [Shift(3, 7.0)])
    assert torch.equal(out[:, :, :1], frame0)
    torch.testing.assert_close(out[:, :, 1:], noise[:, :, 1:] - 1.0 + 7.0, rtol=0, atol=1e-5)
