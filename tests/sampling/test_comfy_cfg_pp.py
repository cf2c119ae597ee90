"""ComfyUI's CFG++ samplers (``sampling.comfy_cfg_pp``): against ComfyUI's own functions run as an oracle
(``comfy_cfg_pp.json``: see its "source"), on a toy model whose unconditional prediction differs from its guided
one, in one sampler call and split in two; the loop hands them each model call's unconditional velocity and runs the
unconditional pass at guidance 1 too; what they do not run with."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tests.pipelines.test_calls import PROMPT, RUN, pipe  # noqa: F401  (the fixture)
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.runtime.cfg_parallel import CfgParallel
from wanflow.sampling.comfy_schedules import comfy_schedule
from wanflow.sampling.hooks import StepHook
from wanflow.sampling.solvers import SOLVERS, get_solver
from wanflow.tasks import TASKS

CASES = json.loads((Path(__file__).parent / "comfy_cfg_pp.json").read_text())["cases"]
CFG_PP = sorted(name for name, solver in SOLVERS.items() if solver.uncond)


def _v_cond(x, s):
    return (x - ((1 - s) * torch.tanh(1.5 * x) + s * 0.25 * torch.sin(x))) / s


def _v_uncond(x, s):
    return (x - ((1 - s) * 0.5 * torch.tanh(x) + s * 0.1 * torch.cos(x))) / s


def _fields(x, sigma, scale):
    """(the guided velocity as wanflow's guidance combines it, the unconditional one)."""
    v_c, v_u = _v_cond(x, sigma), _v_uncond(x, sigma)
    return v_u + scale * (v_c - v_u), v_u


def _run(case, seed):
    """The solver over the case's sigmas from the oracle's noise, afresh at its split; (the sample, the sigmas the
    model was called at)."""
    solver = get_solver(case["sampler"])
    schedule = comfy_schedule(case["scheduler"], case["steps"], case["shift"], sampler=case["sampler"])
    x = torch.randn(1, 2, 2, 3, 3, generator=torch.Generator().manual_seed(0)) * schedule.sigmas[0]
    split = case.get("split")
    state, seen = solver.init(schedule, seed, stop=split), []
    for k in range(schedule.num_steps):
        if k == split:
            state = solver.init(schedule, case["seed_low"])
        at, sigma = x, schedule.sigmas[k]
        while True:
            seen.append(float(sigma))
            v, v_u = _fields(at, sigma, case["scale"])
            x, state = solver.step(dataclasses.replace(state, uncond=v_u), v, x, k)
            if state.pending is None:
                break
            at, sigma = state.pending
    return x, seen


def test_every_cfg_pp_sampler_is_checked():
    assert sorted({c["sampler"] for c in CASES}) == CFG_PP


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c['sampler']}-{c['scheduler']}-g{c['scale']:g}-{c.get('split', 'whole')}"
)
def test_comfyuis_cfg_pp_samplers(case):
    """The model is called at ComfyUI's sigmas and the samples are ComfyUI's: bit for bit in one call, to 2e-6 split
    in two (the sample scaled out of the first call and back into the second); another seed moves the ancestral
    ones."""
    x, seen = _run(case, case["seed"])
    assert seen == case["model_sigmas"]
    want = torch.tensor(case["x"])
    if "split" in case:
        assert (x.flatten() - want).abs().max() <= 2e-6
    else:
        assert torch.equal(x.flatten(), want)
    if get_solver(case["sampler"]).noised:
        assert (_run(case, case["seed"] + 1)[0] - x).abs().max() > 1e-2


def test_the_multistep_forms_step_off_a_flow_models_path():
    """ComfyUI wrote its CFG++ functions other than the Euler ones for VE models: on a flow model a first-order step
    of dpmpp_2m_cfg_pp lands ``sigma' (x0_guided - x0_uncond)`` away from euler_cfg_pp's (which goes through the half
    log-SNR); the two agree where the predictions do (guidance 1). The reason for their noisy frames (BENCHMARKS)."""
    schedule = comfy_schedule("simple", 10, 8.0, sampler="euler_cfg_pp")
    k, (sigma, sigma_next) = 2, schedule.sigmas[2:4]
    g = torch.Generator().manual_seed(1)
    x, v, v_u = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    steps = {}
    for name in ("euler_cfg_pp", "dpmpp_2m_cfg_pp"):
        solver = get_solver(name)  # (a call's first step: no history)
        steps[name] = solver.step(dataclasses.replace(solver.init(schedule), uncond=v_u), v, x, k)[0]
    drift = sigma_next * ((x - sigma * v) - (x - sigma * v_u))
    torch.testing.assert_close(steps["dpmpp_2m_cfg_pp"] - steps["euler_cfg_pp"], drift, rtol=0, atol=1e-6)
    assert drift.abs().max() > 0.05
    same = {n: get_solver(n).step(dataclasses.replace(get_solver(n).init(schedule), uncond=v), v, x, k)[0]
            for n in steps}  # fmt: skip
    torch.testing.assert_close(same["dpmpp_2m_cfg_pp"], same["euler_cfg_pp"], rtol=0, atol=1e-6)


class Passes(StepHook):
    """Every model call's input rows and output rows, and the velocity each step's call returned."""

    def __init__(self):
        self.rows, self.velocities = [], []

    def wrap(self, velocity, step):
        def seen(model, latents, t, cond, scale):
            def recorded(x, *args, **kwargs):
                out = model(x, *args, **kwargs)
                self.rows.append(out)
                return out

            v = velocity(recorded, latents, t, cond, scale)
            self.velocities.append((step.index, latents, v))
            return v

        return seen


@pytest.mark.parametrize("solver", ["euler_cfg_pp", "dpmpp_2s_ancestral_cfg_pp"])
@pytest.mark.parametrize("scale", [1.0, 3.5])
def test_the_loop_hands_each_call_its_unconditional_pass(pipe, solver, scale):  # noqa: F811
    """At every model call the unconditional pass runs (at guidance 1 too: ComfyUI's disable_cfg1_optimization), in the
    CFG batch, and the solver steps on it: the run's latents are the solver's driven with the calls' outputs."""
    hook = Passes()
    call = {**RUN, "steps": 4, "switch_step": None, "guide_scale": scale}
    out = pipe(PROMPT, solver=solver, output_type="latent", hooks=[hook], **call).frames
    assert all(rows.shape[0] == 2 for rows in hook.rows)  # (the prompt's pass and the unconditional one, batched)
    schedule, fresh = comfy_schedule("simple", 4, 8.0, sampler=solver), get_solver(solver)
    x, state, calls = hook.velocities[0][1], fresh.init(schedule, 3), zip(hook.velocities, hook.rows, strict=True)
    for k in range(4):
        while True:
            (index, _, v), rows = next(calls)
            assert index == k
            x, state = fresh.step(dataclasses.replace(state, uncond=rows[1:]), v, x, k)
            if state.pending is None:
                break
    assert torch.equal(x, out)


def test_what_cfg_pp_samplers_do_not_run_with():
    task = TASKS["t2v-A14B"]
    with pytest.raises(ValueError, match="euler_cfg_pp reads every step's unconditional pass, which cfg_zero_star"):
        resolve(GenerateOptions(PROMPT, solver="euler_cfg_pp", guidance="cfg_zero_star:1"), task)
    resolve(GenerateOptions(PROMPT, solver="euler_cfg_pp", guidance="cfg_zero_star:0"), task)  # (the scale alone)
    with pytest.raises(ValueError, match="magcache plans the passes guidance runs: not with dpmpp_2m_cfg_pp"):
        resolve(GenerateOptions(PROMPT, solver="dpmpp_2m_cfg_pp", cache="magcache"), task)
    resolve(GenerateOptions(PROMPT, solver="dpmpp_2m_cfg_pp", cache="easycache"), task)


def test_cfg_parallelism_refuses_what_it_would_run_otherwise_than_one_process():
    """Each rank runs one of the two passes: a CFG++ sampler, EasyCache (its rates are the unconditional pass's) and
    Enhance-A-Video (one number for the CFG batch) would not be one process's run."""
    builtin = WanPipeline.from_builtin("t2v-A14B")
    builtin.add_hook(CfgParallel.__new__(CfgParallel))  # (the two passes split over two ranks; no process group here)
    with pytest.raises(ValueError, match="euler_cfg_pp reads the unconditional pass on every rank: not with CFG"):
        builtin(PROMPT, solver="euler_cfg_pp", steps=2)
    with pytest.raises(ValueError, match="easycache decides from the unconditional pass on every rank"):
        builtin(PROMPT, cache="easycache", steps=2)
    with pytest.raises(ValueError, match="Enhance-A-Video's number is the CFG batch's"):
        builtin(PROMPT, enhance_a_video=2, steps=2)
