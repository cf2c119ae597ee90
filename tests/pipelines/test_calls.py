"""A run as ComfyUI's chain of sampler calls (``pipelines.calls``): the "three KSampler" recipe on a tiny T2V-A14B,
checked step by step against what each call must compute (its expert, its guidance scale and its LoRA strengths,
evaluated again by hand from the step's own inputs), and against its solver started afresh at each call with that
call's seed (replaying the recorded velocities gives the run's latents bit for bit)."""

import re

import pytest
import torch
from safetensors.torch import save_file

from tests.tiny.checkpoint import TINY_DITS, write_official_checkpoint
from tests.tiny.lora import make_lora
from wanflow.pipelines.core import guided_velocity
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.lora import loaded_loras, set_strength
from wanflow.sampling.comfy_schedules import comfy_schedule
from wanflow.sampling.hooks import StepHook
from wanflow.sampling.solvers import get_solver

PROMPT = "a red circle moving right"
TASK = "t2v-A14B"
RUN = dict(size=(64, 64), frames=5, steps=6, scheduler="simple", shift=8.0, switch_step=4, seed=3, noise_device="cpu")
RECIPE = dict(sampler_calls=[2, 4], call_guide_scale=[3.5, 1, 1.5])


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("calls")
    pipe = WanPipeline.from_pretrained(write_official_checkpoint(root / "ckpt", TASK, seed=11), device="cpu")
    for expert, seed in (("high", 5), ("low", 6)):
        state, _ = make_lora("lightx2v", TINY_DITS[TASK], seed)
        save_file(state, root / f"{expert}.safetensors")
        pipe.load_lora(root / f"{expert}.safetensors", 0.7, expert=expert, name=f"fast_{expert}")
    return pipe


class Inputs(StepHook):
    """Each step's model call (its model, latents, timesteps, conditioning and scale, and the velocity), with the
    strength each LoRA had on that model then, and the latents the step produced."""

    def __init__(self):
        self.calls, self.latents = [], []

    def wrap(self, velocity, step):
        def seen(model, latents, t, cond, scale):
            out = velocity(model, latents, t, cond, scale)
            strengths = {a.name: a.strength for a in loaded_loras(model)}
            self.calls.append((step, model, latents, t, cond, scale, strengths, out))
            return out

        return seen

    def after(self, step, latents):
        self.latents.append(latents)


def test_each_call_runs_its_expert_scale_and_lora_strengths(pipe):
    """High-noise steps 0-1 without the fast LoRA at guidance 3.5, steps 2-3 with it at guidance 1, the low-noise
    steps 4-5 with its own at 1.5: each step's velocity equals the guided velocity computed again from the step's
    inputs with the expected strength set on the model; the strengths come back at the end."""
    hook = Inputs()
    pipe(PROMPT, solver="dpmpp_2m", call_loras={"fast_high": [0, 1], "fast_low": [0.8]}, hooks=[hook], **RUN, **RECIPE)
    expect = [("high", 3.5, 0.0), ("high", 3.5, 0.0), ("high", 1.0, 1.0), ("high", 1.0, 1.0),
              ("low", 1.5, 0.8), ("low", 1.5, 0.8)]  # fmt: skip
    assert len(hook.calls) == 6
    for k, (step, model, latents, t, cond, scale, strengths, v) in enumerate(hook.calls):
        expert, want_scale, want_strength = expect[k]
        assert (step.expert, step.call, scale) == (expert, [0, 0, 1, 1, 2, 2][k], want_scale)
        assert strengths == {f"fast_{expert}": want_strength}
        loaded = {a.name: a.strength for a in loaded_loras(model)}
        try:
            set_strength(model, f"fast_{expert}", want_strength)
            again = guided_velocity(model, latents, t, cond, want_scale)
        finally:
            for name, s in loaded.items():
                set_strength(model, name, s)
        assert torch.equal(again, v), k
    assert {a.name: a.strength for m in pipe.experts.values() for a in loaded_loras(m)} == {
        "fast_high": 0.7,
        "fast_low": 0.7,
    }


@pytest.mark.parametrize("solver", ["dpmpp_2m", "lcm", "uni_pc"])
def test_each_call_starts_its_solver_afresh_from_its_seed(pipe, solver):
    """Replaying the run's velocities through the solver started afresh at each call (each to its own end, from its
    seed) gives the run's latents bit for bit; the same run as one call does not, for these solvers (a history, or
    step noise from one generator); other call seeds change the steps from the call they seed on, and no others."""
    schedule, fresh = comfy_schedule("simple", 6, 8.0, sampler=solver), get_solver(solver)
    runs = {}
    for seeds in ((7, 8), (7, 9)):
        hook = Inputs()
        pipe(PROMPT, solver=solver, call_seeds=list(seeds), hooks=[hook], **RUN, **RECIPE)
        bounds, x = [(0, 2, 3), (2, 4, seeds[0]), (4, None, seeds[1])], hook.calls[0][2]
        for start, stop, seed in bounds:
            state = fresh.init(schedule, seed, stop)
            for k in range(start, stop or 6):
                x, state = fresh.step(state, hook.calls[k][-1], x, k)
                assert torch.equal(x, hook.latents[k]), (seeds, k)
        state, x, whole = fresh.init(schedule, 3), hook.calls[0][2], []
        for k in range(6):
            x, state = fresh.step(state, hook.calls[k][-1], x, k)
            whole.append(torch.equal(x, hook.latents[k]))
        assert not all(whole)
        runs[seeds] = hook.latents
    same = [torch.equal(a, b) for a, b in zip(runs[(7, 8)], runs[(7, 9)], strict=True)]
    assert same == [True] * 4 + [False] * 2 if fresh.noised else same == [True] * 6


def test_a_run_of_calls_is_the_steps_of_the_plain_run_up_to_where_it_differs(pipe):
    """Calls of the same guidance and LoRAs as the plain run, on a solver with no state (euler), give the plain run's
    frames bit for bit; a later call at another scale keeps the frames before it (output latents compared)."""
    plain = pipe(PROMPT, solver="euler", guide_scale=(3.0, 3.5), output_type="latent", **RUN).frames
    calls = pipe(PROMPT, solver="euler", sampler_calls=[2, 4], call_guide_scale=[3.5, 3.5, 3.0],
                 output_type="latent", **RUN).frames  # fmt: skip
    assert torch.equal(plain, calls)
    hooks = [Inputs(), Inputs()]
    pipe(PROMPT, solver="euler", guide_scale=(3.0, 3.5), hooks=[hooks[0]], **RUN)
    pipe(PROMPT, solver="euler", sampler_calls=[2, 4], call_guide_scale=[3.5, 2.0, 3.0], hooks=[hooks[1]], **RUN)
    same = [torch.equal(a, b) for a, b in zip(hooks[0].latents, hooks[1].latents, strict=True)]
    assert same == [True, True, False, False, False, False]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(sampler_calls=[2]), "switch is a call of its own"),
        (dict(sampler_calls=[4, 2]), "rising"),
        (dict(sampler_calls=[2, 6]), "rising, 1..5"),
        (dict(sampler_calls="2,x"), "ints separated by commas"),
        (dict(call_guide_scale=[3.5, 1]), "each of the 3 calls"),
        (dict(call_seeds=[1]), "each call after the first (2)"),
        (dict(call_loras={"nope": [0, 1]}), "not loaded"),
        (dict(call_loras={"fast_high": [0, 1, 1]}), "each of the 2 calls of its experts (high)"),
        (dict(cache="magcache"), "not with sampler_calls"),
        (dict(low_noise_seed=4), "give call_seeds"),
        (dict(sampler_calls=None), "give sampler_calls"),
    ],
)
def test_calls_asked_wrong_are_clear_errors(pipe, change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe(PROMPT, solver="euler", **{**RUN, **RECIPE, **change})


def test_calls_on_one_model():
    """A dense model (TI2V-5B) in two calls: the second at its own guidance, its solver afresh (dpmpp_2m: replaying
    the velocities with a fresh state at the second call gives the run's latents bit for bit)."""
    pipe = WanPipeline.from_builtin("ti2v-5B")
    hook = Inputs()
    pipe(PROMPT, solver="dpmpp_2m", scheduler="simple", shift=5.0, steps=5, size=(64, 64), frames=5, seed=2,
         sampler_calls="3", call_guide_scale="4,1", hooks=[hook])  # fmt: skip
    assert [(s.expert, s.call, scale) for s, _, _, _, _, scale, _, _ in hook.calls] == [
        ("dense", 0, 4.0), ("dense", 0, 4.0), ("dense", 0, 4.0), ("dense", 1, 1.0), ("dense", 1, 1.0)
    ]  # fmt: skip
    schedule, fresh = comfy_schedule("simple", 5, 5.0, sampler="dpmpp_2m"), get_solver("dpmpp_2m")
    x = hook.calls[0][2]
    for start, stop in ((0, 3), (3, None)):
        state = fresh.init(schedule, 2, stop)
        for k in range(start, stop or 5):
            x, state = fresh.step(state, hook.calls[k][-1], x, k)
            assert torch.equal(x, hook.latents[k]), k


class ModelCalls(StepHook):
    """Every model call of every step: (step, latents, timesteps, velocity)."""

    def __init__(self):
        self.seen = []

    def wrap(self, velocity, step):
        def seen(model, latents, t, cond, scale):
            out = velocity(model, latents, t, cond, scale)
            self.seen.append((step.index, latents, t, out))
            return out

        return seen


TWO_CALLS, THREE_CALLS = [0, 0, 1, 1, 2, 2, 3], [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]


@pytest.mark.parametrize(
    ("solver", "steps"),
    [("heun", TWO_CALLS), ("dpm_2", TWO_CALLS), ("dpmpp_2s_ancestral", TWO_CALLS), ("dpmpp_sde", TWO_CALLS),
     ("seeds_2", TWO_CALLS), ("seeds_3", THREE_CALLS), ("heunpp2", [0, 0, 0, 1, 1, 1, 2, 2, 3]),
     ("sa_solver_pece", [0, 1, 1, 2, 2, 3, 3]), ("res_2s", [0, 0, 1, 1, 2, 2, 3, 3]),
     ("res_3s", [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]), ("res_2m", [0, 0, 1, 1, 2, 3, 3])],
)  # fmt: skip
def test_more_model_calls_a_step_in_the_loop(pipe, solver, steps):
    """Samplers of two or three model calls a step in the shared loop: each step but the last calls its expert two or
    three times (heunpp2: two on the second last step; sa_solver_pece: once on its first, at its prediction, then
    also at each corrected sample; res_2s and res_3s: on the last too, to sigma_min; res_2m: twice on its first two
    steps, then once, and twice on its last: a step that long is a res_2s one), the later times where the solver
    asks (at timestep 1000 sigma, float), and driving the solver with the recorded velocities (and the run's shift)
    gives the run's final latents bit for bit; the step cache refuses them."""
    hook = ModelCalls()
    out = pipe(PROMPT, solver=solver, output_type="latent", hooks=[hook], **{**RUN, "steps": 4}).frames
    assert [k for k, *_ in hook.seen] == steps
    schedule, fresh = comfy_schedule("simple", 4, 8.0, sampler=solver), get_solver(solver)
    x, state, calls = hook.seen[0][1], fresh.init(schedule, 3, shift=8.0), iter(hook.seen)
    for k in range(4):
        _, _, _, v = next(calls)
        x, state = fresh.step(state, v, x, k)
        while state.pending is not None:
            _, at, t, v = next(calls)
            assert torch.equal(at, state.pending[0]) and t.dtype == torch.float32
            assert float(t[0]) == float(torch.tensor(float(state.pending[1]) * 1000.0))
            x, state = fresh.step(state, v, x, k)
    assert torch.equal(x, out)
    with pytest.raises(ValueError, match=f"not with {solver} \\({get_solver(solver).model_calls} model calls a step"):
        pipe(PROMPT, solver=solver, cache="magcache", **{**RUN, "steps": 4})


def test_a_call_at_its_own_shift_gives_its_solver_that_shift():
    """low_noise_shift's call (and the calls after it) hands its solver its own model's shift (sa_solver's noise
    interval, res_2s's smallest sigma), the calls before it the run's."""
    from wanflow.pipelines.calls import CallPlan, loop_calls
    from wanflow.pipelines.core import Sampler, _solver_state

    schedule, low = comfy_schedule("simple", 6, 8.0, sampler="sa_solver"), comfy_schedule("simple", 6, 5.0)
    solver = get_solver("sa_solver")
    for plan in (None, CallPlan((0, 2, 4), seeds=(1, 1, 1))):
        calls = loop_calls(plan, 2, None, low, True, 5.0)
        sampler = Sampler(schedule, solver, 500.0, 3.0, seed=1, calls=calls, shift=8.0)
        shifts = [_solver_state(sampler, calls, n).shift for n in range(len(calls))]
        assert shifts == ([8.0, 5.0] if plan is None else [8.0, 5.0, 5.0])
        assert _solver_state(sampler, calls, 1).schedule is low


def test_a_step_that_needs_no_model_output_makes_no_call(pipe):
    """res_2s on karras (its last sigma the model's smallest): the last step is RES4LYF's denoise alone and the loop
    calls no expert there; the other steps call it twice; the latents are those of the solver driven with the calls'
    velocities."""
    hook = ModelCalls()
    call = {**RUN, "steps": 4, "scheduler": "karras"}
    out = pipe(PROMPT, solver="res_2s", output_type="latent", hooks=[hook], **call).frames
    assert [k for k, *_ in hook.seen] == [0, 0, 1, 1, 2, 2]
    schedule, fresh = comfy_schedule("karras", 4, 8.0, sampler="res_2s"), get_solver("res_2s")
    x, state, calls = hook.seen[0][1], fresh.init(schedule, 3, shift=8.0), iter(hook.seen)
    for k in range(4):
        v = next(calls)[3] if fresh.calls_model(state, k) else torch.zeros_like(x)
        x, state = fresh.step(state, v, x, k)
        while state.pending is not None:
            x, state = fresh.step(state, next(calls)[3], x, k)
    assert torch.equal(x, out)
