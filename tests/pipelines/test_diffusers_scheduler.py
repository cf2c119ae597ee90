"""``pipe.scheduler``, diffusers' way to choose the sampler: the same scheduler given to diffusers' own ``WanPipeline``
and to wanflow gives the same frames (UniPC, DPM++ and flow-matching Euler on their diffusers grids, a tiny
two-expert checkpoint both read; flow-matching LCM with the same noise at each step); the reference's grid given as a
scheduler is wanflow's default bit for bit; a scheduler or an option wanflow cannot run exactly is refused."""

from typing import ClassVar

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchLCMScheduler,
    UniPCMultistepScheduler,
)

from tests.pipelines.test_parity import ReferenceUniPC
from tests.tiny.checkpoint import write_both_layouts
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.sampling.comfy_schedules import comfy_schedule, comfy_sigmas
from wanflow.sampling.diffusers_schedulers import ReferenceScheduler
from wanflow.sampling.hooks import StepHook
from wanflow.sampling.noise import step_noise
from wanflow.sampling.solvers import get_solver
from wanflow.tasks import TASKS

TASK = "t2v-A14B"
PROMPT = "a red circle moving right"
CALL = dict(
    prompt=PROMPT,
    negative_prompt=TASKS[TASK].negative_prompt,  # diffusers' default is none, the reference's is this
    height=64,
    width=64,
    num_frames=9,
    output_type="pt",
)
GUIDED = dict(num_inference_steps=8, guidance_scale=4.5, guidance_scale_2=3.0)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """wanflow and diffusers' ``WanPipeline`` on one tiny two-expert checkpoint (official and diffusers layouts)."""
    from diffusers import WanPipeline as DiffusersWanPipeline

    root = tmp_path_factory.mktemp("sched")
    write_both_layouts(root, TASK, seed=11)
    theirs = DiffusersWanPipeline.from_pretrained(root / "diffusers")
    theirs.set_progress_bar_config(disable=True)
    return WanPipeline.from_pretrained(root / "official"), theirs, theirs.scheduler.config  # (the folder's)


@pytest.fixture
def ours(pipes):
    pipe = pipes[0]
    yield pipe
    pipe.scheduler = None


def generator(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


SCHEDULERS = {
    # diffusers' Wan examples: UniPC from the pipeline's config with another flow_shift (diffusers' grid, from sigma 1)
    "unipc": (lambda config: UniPCMultistepScheduler.from_config(config, flow_shift=5.0), GUIDED),
    "dpm++": (
        lambda config: DPMSolverMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
        GUIDED,
    ),
    # a step-distilled run: 4 Euler steps, no guidance (diffusers' grid is not the Lightning one: float timesteps
    # from linspace(1000, 1000 * shifted sigma_min) shifted again)
    "euler": (
        lambda config: FlowMatchEulerDiscreteScheduler(shift=5.0),
        dict(num_inference_steps=4, guidance_scale=1.0),
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_a_diffusers_scheduler_gives_diffusers_frames(pipes, ours, name):
    _, theirs, config = pipes
    make, call = SCHEDULERS[name]
    default = ours(generator=generator(), **CALL, **call).frames
    ours.scheduler = make(ours.scheduler.config)
    theirs.scheduler = make(config)
    a = ours(generator=generator(), **CALL, **call).frames
    with torch.no_grad():
        b = theirs(generator=generator(), **CALL, **call).frames
    assert a.shape == b.shape == (1, 9, 3, 64, 64)
    assert (a - b).abs().max() <= 1e-4 and a.std() > 0.05
    assert (a - default).abs().max() > 1e-2  # the scheduler was followed: not wanflow's default sampler
    again = ours(generator=generator(), **CALL, **call).frames  # the set scheduler is read, not stepped in place
    assert torch.equal(a, again)


def test_flow_match_lcm_gives_diffusers_frames_with_the_same_step_noise(pipes, ours, monkeypatch):
    """diffusers' ``FlowMatchLCMScheduler`` (data prediction noised afresh to the next sigma at each step) on both
    sides; diffusers draws each step's noise from the global generator (its pipeline passes none), so it is handed
    wanflow's noise of that step (``step_noise``): the noise is an input here, as the initial latents are."""
    from diffusers.schedulers import scheduling_flow_match_lcm

    _, theirs, _ = pipes
    drawn = []

    def wanflow_noise(shape, generator=None, device=None, dtype=None):
        drawn.append(shape)
        return step_noise(tuple(shape[1:]), 3, len(drawn) - 1, device or "cpu").to(dtype)

    monkeypatch.setattr(scheduling_flow_match_lcm, "randn_tensor", wanflow_noise)
    call = dict(num_inference_steps=4, guidance_scale=1.0)
    ours.scheduler = FlowMatchLCMScheduler(shift=5.0)
    theirs.scheduler = FlowMatchLCMScheduler(shift=5.0)
    a = ours(generator=generator(3), **CALL, **call).frames
    with torch.no_grad():
        b = theirs(generator=generator(3), **CALL, **call).frames
    assert len(drawn) == 4 and (a - b).abs().max() <= 1e-4 and a.std() > 0.05
    ours.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)  # the same grid, the ODE step
    assert (ours(generator=generator(3), **CALL, **call).frames - a).abs().max() > 1e-2


def test_the_reference_grid_as_a_scheduler_is_the_default_bit_for_bit(ours):
    call = dict(size=(64, 64), frames=9, steps=6, guide_scale=(3.0, 4.0), seed=4)
    default = ours(PROMPT, **call)
    assert isinstance(ours.scheduler, ReferenceScheduler)
    assert ours.scheduler.config.flow_shift == ours.scheduler.config["flow_shift"] == TASKS[TASK].shift
    ours.scheduler = ReferenceUniPC.from_config(ours.scheduler.config)  # diffusers' UniPC on the reference's grid
    given = ours(PROMPT, **call)
    assert torch.equal(given.frames, default.frames)
    assert given.metadata["scheduler"] == "ReferenceUniPC" and given.metadata["solver"] == "unipc"
    assert given.metadata["shift"] == TASKS[TASK].shift
    diffusers_grid = UniPCMultistepScheduler.from_config(ours.scheduler.config)  # from sigma 1, not 0.999
    ours.scheduler = diffusers_grid
    assert not torch.equal(ours(PROMPT, **call).frames, default.frames)
    ours.scheduler = None  # back to wanflow's own sampler
    back = ours(PROMPT, **call)
    assert torch.equal(back.frames, default.frames) and "scheduler" not in back.metadata


def test_from_pretrained_takes_a_scheduler(pipes, tmp_path_factory):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    ours = pipes[0]
    pipe = WanPipeline.from_pretrained(ours.layout, scheduler=scheduler)
    assert pipe.scheduler is scheduler
    call = dict(size=(64, 64), frames=9, steps=4, guide_scale=1.0, seed=2)
    ours.scheduler = scheduler
    try:
        assert torch.equal(pipe(PROMPT, **call).frames, ours(PROMPT, **call).frames)
    finally:
        ours.scheduler = None
    with pytest.raises(ValueError, match="EulerDiscreteScheduler"):
        WanPipeline.from_pretrained(ours.layout, scheduler=EulerDiscreteScheduler())


@pytest.mark.parametrize(
    ("scheduler", "named"),
    [
        (EulerDiscreteScheduler(), "EulerDiscreteScheduler"),  # not a flow-matching scheduler
        (UniPCMultistepScheduler(), "prediction_type"),  # diffusers' defaults: epsilon prediction, VP sigmas
        (
            UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, solver_order=3),
            "solver_order",
        ),
        (
            DPMSolverMultistepScheduler(
                prediction_type="flow_prediction", use_flow_sigmas=True, algorithm_type="sde-dpmsolver++"
            ),
            "algorithm_type",
        ),
        (FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), "stochastic_sampling"),
        (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), "use_dynamic_shifting"),
    ],
)
def test_a_scheduler_wanflow_cannot_run_exactly_is_refused(ours, scheduler, named):
    with pytest.raises(ValueError, match=named):
        ours.scheduler = scheduler
    assert isinstance(ours.scheduler, ReferenceScheduler)  # nothing was set


@pytest.mark.parametrize("option", [{"shift": 3.0}, {"solver": "euler"}, {"preset": "lightning"}])
def test_options_that_choose_another_sampler_are_refused_under_a_scheduler(ours, option):
    ours.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    with pytest.raises(ValueError, match=r"pipe\.scheduler"):
        ours(PROMPT, size=(64, 64), frames=9, steps=4, **option)


def test_the_euler_grid_is_read_from_the_scheduler(ours):
    """diffusers' FlowMatchEuler grid, float timesteps, given to the DiT as they are (what the Euler parity above
    rests on), against the closed form of its set_timesteps."""
    ours.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    steps = []
    ours(PROMPT, size=(64, 64), frames=9, steps=4, guide_scale=1.0, seed=1, callback=steps.append)

    def shifted(s):
        return 5.0 * s / (1 + 4.0 * s)

    sigmas = shifted(np.linspace(1000, 1000 * shifted(1 / 1000), 4) / 1000)
    assert np.allclose([s.timestep for s in steps], sigmas * 1000, rtol=0, atol=1e-3)
    assert all(isinstance(s.timestep, float) for s in steps)
    assert [s.expert for s in steps] == ["high", "high", "low", "low"]  # the switch at t >= 875, as diffusers'


class GivenSigmas(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow-matching Euler on a grid given as it is (its ``set_timesteps(sigmas=...)`` at shift 1, the DiT
    fed ``1000 * sigma``), whatever step count the pipeline asks for."""

    sigmas_given: ClassVar[list[float]] = []

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(sigmas=self.sigmas_given, device=device)


def test_a_comfyui_scheduler_gives_diffusers_frames_on_its_sigmas(pipes, ours):
    """ComfyUI's beta scheduler at shift 8 (its sigmas: tests/sampling/test_comfy_schedules.py) with the Euler solver
    and CFG on both experts gives the frames of diffusers' ``WanPipeline`` stepping flow-matching Euler through the same
    sigmas: float timesteps fed as they are, the experts switched at t >= 875 by them. The same sigmas given as
    ``sigmas=`` give the same frames bit for bit."""
    _, theirs, _ = pipes
    call = dict(scheduler="beta", solver="euler", shift=8.0, num_inference_steps=7, guidance_scale=4.5)
    steps = []
    a = ours(generator=generator(), **CALL, **call, guidance_scale_2=3.0, callback=steps.append)
    sigmas = comfy_sigmas("beta", 7, 8.0)
    GivenSigmas.sigmas_given = sigmas[:-1].tolist()
    theirs.scheduler = GivenSigmas(shift=1.0)
    with torch.no_grad():
        b = theirs(
            generator=generator(), **CALL, num_inference_steps=7, guidance_scale=4.5, guidance_scale_2=3.0
        ).frames
    assert (a.frames - b).abs().max() <= 1e-4 and b.std() > 0.05
    assert [s.timestep for s in steps] == (sigmas[:-1] * 1000).tolist()
    assert [s.expert for s in steps] == ["high"] * 4 + ["low"] * 3  # 1000, 990.5, 966.5, 922.8 | 843.2, ...
    given = ours(generator=generator(), **CALL, sigmas=sigmas.tolist(), solver="euler", guidance_scale=4.5,
                 guidance_scale_2=3.0)  # fmt: skip
    assert torch.equal(given.frames, a.frames)
    default = ours(generator=generator(), **CALL, solver="euler", shift=8.0, num_inference_steps=7)
    assert (default.frames - a.frames).abs().max() > 1e-2  # the scheduler was followed
    short = dict(size=(64, 64), frames=9, seed=1)
    assert ours(PROMPT, scheduler="beta", steps=7, **short).metadata["scheduler"] == "beta"
    named = ours(PROMPT, sigmas="1,0.5", **short).metadata
    assert (named["scheduler"], named["sigmas"], named["steps"]) == ("sigmas", [1.0, 0.5, 0.0], 2)


@pytest.mark.parametrize(
    "solver",
    [
        "unipc",
        "dpm++",
        "lcm",
        "dpmpp_2m",
        "res_multistep",
        "uni_pc",
        "uni_pc_bh2",
        "euler_ancestral",
        "dpmpp_3m_sde",
        "ipndm_v",
        "er_sde",
    ],
)
def test_every_solver_walks_a_comfyui_schedule_from_sigma_one(ours, solver):
    """karras at shift 8 starts at sigma 1 (log-SNR -inf), where the multistep solvers' first ratios are infinite:
    the frames stay finite and differ from Euler's on the same steps."""
    call = dict(size=(64, 64), frames=9, steps=6, scheduler="karras", shift=8.0, guide_scale=(3.0, 4.0), seed=5)
    video = ours(PROMPT, solver=solver, **call).frames
    euler = ours(PROMPT, solver="euler", **call).frames
    assert torch.isfinite(video).all() and video.std() > 0.05 and (video - euler).abs().max() > 1e-3


@pytest.mark.parametrize("option", [{"scheduler": "beta"}, {"sigmas": [1.0, 0.75, 0.5, 0.25]}])
def test_a_comfyui_schedule_is_refused_under_a_scheduler(ours, option):
    ours.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    with pytest.raises(ValueError, match=r"pipe\.scheduler"):
        ours(PROMPT, size=(64, 64), frames=9, steps=4, **option)


class Recorder(StepHook):
    """Each step's velocity and the latents it produced."""

    def __init__(self):
        self.velocities, self.latents = [], []

    def wrap(self, velocity, step):
        def recorded(*args):
            out = velocity(*args)
            self.velocities.append(out)
            return out

        return recorded

    def after(self, step, latents):
        self.latents.append(latents)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "res_multistep", "uni_pc", "uni_pc_bh2", "ipndm", "unipc"])
def test_comfyuis_multistep_samplers_start_afresh_at_the_expert_switch(ours, solver):
    """ComfyUI runs each expert as its own KSamplerAdvanced call, so its multistep samplers have no history at the
    low-noise expert's first step; wanflow's loop starts them afresh there (replaying the recorded velocities with a
    fresh state at the switch gives the run's latents bit for bit; the first expert's state ends at the switch, where
    ComfyUI's first call ends), and carries the reference's solvers through."""
    noise = ours.noise((16, 3, 8, 8), seed=2)
    hook = Recorder()
    steps = []
    ours(PROMPT, size=(64, 64), frames=9, steps=8, solver=solver, scheduler="simple", shift=8.0, guide_scale=(3.0, 4.0),
         latents=noise, hooks=[hook], callback=steps.append)  # fmt: skip
    switch = next(s.index for s in steps if s.expert == "low")
    assert 0 < switch < 8
    schedule, fresh = comfy_schedule("simple", 8, 8.0, sampler=solver), get_solver(solver)
    for restart in (True, False):
        x, state = noise, fresh.init(schedule, stop=switch if restart else None)
        same = []
        for k, v in enumerate(hook.velocities):
            if restart and k == switch:
                state = fresh.init(schedule)
            x, state = fresh.step(state, v, x, k)
            same.append(torch.equal(x, hook.latents[k]))
        assert all(same) == (restart == fresh.restarts_at_switch), (restart, same)


def test_lcm_draws_the_low_noise_experts_noise_from_its_own_seed(ours):
    """ComfyUI's lcm draws each sampler call's step noise from that call's seed: with ``low_noise_seed`` the loop
    starts the low-noise expert's draws afresh from it (replaying the recorded velocities so gives the run's latents
    bit for bit); without, the draws go on from the run's seed. The two runs agree up to the switch only."""
    noise = ours.noise((16, 3, 8, 8), seed=2)
    schedule, lcm = comfy_schedule("simple", 6, 8.0), get_solver("lcm")
    runs = {}
    for low_seed in (4, None):
        hook, steps = Recorder(), []
        ours(PROMPT, size=(64, 64), frames=9, steps=6, solver="lcm", scheduler="simple", shift=8.0, seed=9,
             low_noise_seed=low_seed, guide_scale=(3.0, 4.0), latents=noise, hooks=[hook],
             callback=steps.append)  # fmt: skip
        switch = next(s.index for s in steps if s.expert == "low")
        x, state = noise, lcm.init(schedule, 9)
        for k, v in enumerate(hook.velocities):
            if k == switch and low_seed is not None:
                state = lcm.init(schedule, low_seed)
            x, state = lcm.step(state, v, x, k)
            assert torch.equal(x, hook.latents[k])
        runs[low_seed] = hook.latents
    assert 0 < switch < 5
    same = [torch.equal(a, b) for a, b in zip(runs[4], runs[None], strict=True)]
    assert same == [True] * switch + [False] * (6 - switch)


def test_the_sde_samplers_draw_each_calls_noise_from_its_seed(ours):
    """ComfyUI's dpmpp_2m_sde builds a Brownian tree per sampler call from the call's seed over the call's sigmas:
    in the loop, the high-noise expert's from the run's seed up to sigma 1 (its first sigma moved off 1), the
    low-noise expert's from ``low_noise_seed`` from the switch down (replaying the recorded velocities so gives the
    run's latents bit for bit); the two runs agree up to the switch only."""
    noise = ours.noise((16, 3, 8, 8), seed=2)
    schedule, sde = comfy_schedule("simple", 6, 8.0, sampler="dpmpp_2m_sde"), get_solver("dpmpp_2m_sde")
    assert schedule.first_moved
    runs = {}
    for low_seed in (4, 5):
        hook, steps = Recorder(), []
        ours(PROMPT, size=(64, 64), frames=9, steps=6, solver="dpmpp_2m_sde", scheduler="simple", shift=8.0, seed=9,
             low_noise_seed=low_seed, guide_scale=(3.0, 4.0), latents=noise, hooks=[hook],
             callback=steps.append)  # fmt: skip
        switch = next(s.index for s in steps if s.expert == "low")
        x, state = noise, sde.init(schedule, 9, stop=switch)
        for k, v in enumerate(hook.velocities):
            if k == switch:
                state = sde.init(schedule, low_seed)
            x, state = sde.step(state, v, x, k)
            assert torch.equal(x, hook.latents[k])
        runs[low_seed] = hook.latents
    assert 0 < switch < 5
    same = [torch.equal(a, b) for a, b in zip(runs[4], runs[5], strict=True)]
    assert same == [True] * switch + [False] * (6 - switch)


class FirstInput(StepHook):
    """The latents the first step's model call sees."""

    def wrap(self, velocity, step):
        def seen(model, latents, *args):
            if step.index == 0:
                self.latents = latents
            return velocity(model, latents, *args)

        return seen


@pytest.mark.parametrize(
    "option, scaled",
    [({"scheduler": "ddim_uniform"}, True), ({"sigmas": "0.9,0.6,0.3"}, True), ({"scheduler": "simple"}, False),
     ({"scheduler": "ddim_uniform", "solver": "dpmpp_2m_sde"}, True),
     ({"sigmas": "1,0.6,0.3", "solver": "dpmpp_2m_sde"}, False), ({}, False)],
)  # fmt: skip
def test_a_comfyui_schedule_starting_below_one_starts_from_the_noise_scaled(ours, option, scaled):
    """ComfyUI's KSampler starts a flow model from ``sigma_0 * noise`` on an empty latent (its noise scaling): so do
    its schedules here where they start below 1 (ddim_uniform, given sigmas); the reference's grids start from the
    noise, as the reference does, and a first sigma moved off 1 counts as 1."""
    noise = ours.noise((16, 3, 8, 8), seed=2)
    hook, steps = FirstInput(), []
    ours(PROMPT, size=(64, 64), frames=9, steps=3, latents=noise, hooks=[hook], callback=steps.append,
         **({"shift": 8.0} if "sigmas" not in option else {}), **option)  # fmt: skip
    sigma0 = steps[0].timestep / 1000
    if scaled:
        assert sigma0 < 0.9999 and torch.allclose(hook.latents, noise * sigma0, rtol=1e-6, atol=0)
    else:
        assert torch.equal(hook.latents, noise)


def test_the_low_noise_call_on_steps_of_its_own_shift(ours):
    """ComfyUI's two KSamplerAdvanced nodes on models of different ModelSamplingSD3 shifts each lay the steps out on
    their own model's shift: with ``low_noise_shift`` the high-noise expert walks the scheduler's steps at ``shift`` up
    to the switch, the low-noise one those at its own shift from there, its latents scaled out of the first call's
    sigma and into its own, ``(1 - s') x / (1 - s)`` (the recorded velocities so replayed give the run's latents bit
    for bit); the same shift is the one-schedule run, bit for bit; what it needs is checked."""
    noise = ours.noise((16, 3, 8, 8), seed=2)
    call = dict(size=(64, 64), frames=9, steps=6, solver="dpmpp_2m", scheduler="simple", shift=5.0, switch_step=3,
                guide_scale=(3.0, 4.0), latents=noise, seed=1)  # fmt: skip
    hook, steps = Recorder(), []
    ours(PROMPT, low_noise_shift=8.0, hooks=[hook], callback=steps.append, **call)
    high, low = (comfy_schedule("simple", 6, shift, sampler="dpmpp_2m") for shift in (5.0, 8.0))
    assert [s.timestep for s in steps] == [*high.timesteps[:3].tolist(), *low.timesteps[3:].tolist()]
    assert [s.expert for s in steps] == ["high"] * 3 + ["low"] * 3
    solver = get_solver("dpmpp_2m")
    x, state = noise, solver.init(high, stop=3)
    for k, v in enumerate(hook.velocities):
        if k == 3:
            x, state = (1.0 - low.sigmas[3]) * (x / (1.0 - high.sigmas[3])), solver.init(low)
        x, state = solver.step(state, v, x, k)
        assert torch.equal(x, hook.latents[k]), k
    one = Recorder()
    ours(PROMPT, hooks=[one], **call)
    same = [torch.equal(a, b) for a, b in zip(one.latents, hook.latents, strict=True)]
    assert same == [True] * 3 + [False] * 3
    assert torch.equal(ours(PROMPT, low_noise_shift=5.0, **call).frames, ours(PROMPT, **call).frames)
    for change, message in (({"scheduler": None}, "it needs scheduler"), ({"switch_step": None}, "give one"),
                            ({"slg_layers": "1", "slg_percent": "0,1"}, "not with low_noise_shift")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            ours(PROMPT, low_noise_shift=8.0, **{**call, **change})
