import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from wanflow.sampling.comfy_schedules import comfy_schedule
from wanflow.sampling.comfy_solvers import UNI_PC_LAST_SIGMA
from wanflow.sampling.noise import step_noise
from wanflow.sampling.schedule import UNIPC_SIGMA_MAX, dpm_schedule
from wanflow.sampling.solvers import SOLVERS, get_schedule, get_solver

NAMES = ["euler", "unipc", "dpm++", "dpmpp_2m", "res_multistep", "uni_pc", "uni_pc_bh2"]
UNI_PC = ("uni_pc", "uni_pc_bh2")  # (ComfyUI's: they stop at sigma 0.001, not 0)


def _sample(name, schedule, field, x):
    """Run ``name`` over ``schedule``; ``field(x, sigma)`` is the velocity. Returns every sample, x_0 first."""
    solver = get_solver(name)
    state = solver.init(schedule)
    samples = [x]
    for k in range(schedule.num_steps):
        x, state = solver.step(state, field(x, schedule.sigmas[k].item()), x, k)
        samples.append(x)
    return samples


# ---------------------------------------------------------------- parity with diffusers


def _fake_velocities(steps: int, shape):
    """A fixed fake model: nonlinear in x and t plus a per-step random field."""
    gen = torch.Generator().manual_seed(1234)
    noise = [torch.randn(shape, generator=gen) for _ in range(steps)]
    return lambda x, t, k: (torch.tanh(1.3 * x.float()) * (1 + t / 1000) + 0.3 * noise[k]).to(x.dtype)


def _unipc_reference(shift: float, n: int):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
        solver_order=2, solver_type="bh2", lower_order_final=True, predict_x0=True, final_sigmas_type="zero",
    )  # fmt: skip
    # diffusers.md §6.2: the official grid, as a numpy array; diffusers applies flow_shift to it once
    ref.set_timesteps(sigmas=np.linspace(UNIPC_SIGMA_MAX, 0.0, n + 1)[:-1])
    return ref


def _dpm_reference(shift: float, n: int):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
        euler_at_final=False, final_sigmas_type="zero",
    )  # fmt: skip
    with warnings.catch_warnings():  # a numpy-2 DeprecationWarning inside diffusers
        warnings.simplefilter("ignore", DeprecationWarning)
        ref.set_timesteps(n)
    # DPMSolverMultistepScheduler.set_timesteps takes no `sigmas`, and its flow grid is 1 - linspace(1, 1/1000)
    # (starting at shift(0.999), not 1.0). Its step reads only `sigmas` and `timesteps`, so hand it the official grid.
    official = dpm_schedule(n, shift)
    ref.sigmas, ref.timesteps = official.sigmas.clone(), official.timesteps.clone()
    ref.set_begin_index(0)
    return ref


REFERENCES = {"unipc": _unipc_reference, "dpm++": _dpm_reference}


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
@pytest.mark.parametrize("shift", [3.0, 5.0, 12.0])
@pytest.mark.parametrize("n", [5, 10, 40])
def test_matches_diffusers_step_by_step(name, shift, n):
    ref = REFERENCES[name](shift, n)
    schedule = get_schedule(name, n, shift)
    assert torch.equal(schedule.timesteps, ref.timesteps)
    torch.testing.assert_close(schedule.sigmas, ref.sigmas, atol=1e-7, rtol=0)

    shape = (2, 3, 4, 5)
    model = _fake_velocities(n, shape)
    solver = get_solver(name)
    state = solver.init(schedule)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    for k, t in enumerate(schedule.timesteps):
        x, state = solver.step(state, model(x, t.item(), k), x, k)
        y = ref.step(model(y, t.item(), k), t, y).prev_sample
        assert (x - y).abs().max().item() <= 1e-6, f"step {k}"
    # the last step lands on the data prediction, so the sample is not trivially small
    assert x.abs().max() > 0.1


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
def test_matches_diffusers_in_bfloat16(name):
    n, shift = 10, 5.0
    ref = REFERENCES[name](shift, n)
    schedule = get_schedule(name, n, shift)
    model = _fake_velocities(n, (2, 3, 4, 5))
    solver = get_solver(name)
    state = solver.init(schedule)
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0)).bfloat16()
    y = x.clone()
    for k, t in enumerate(schedule.timesteps):
        x, state = solver.step(state, model(x, t.item(), k), x, k)
        y = ref.step(model(y, t.item(), k), t, y).prev_sample
        assert x.dtype == torch.bfloat16
        torch.testing.assert_close(x, y, atol=2**-7 * y.abs().max().item(), rtol=0)


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shift", [1.0, 5.0, 12.0])
def test_point_mass_is_integrated_exactly(name, shift):
    # Data = one point x0: the field (x - x0) / sigma is v = eps - x0 along the straight line, which every solver
    # follows exactly: each sample is (1 - sigma) x0 + sigma eps and the last one is x0.
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, generator=gen), torch.randn(64, generator=gen)
    schedule = get_schedule(name, 12, shift)
    sigma0 = schedule.sigmas[0].item()
    samples = _sample(name, schedule, lambda x, s: (x - x0) / s, (1 - sigma0) * x0 + sigma0 * eps)
    for sigma, x in zip(schedule.sigmas.tolist()[:-1], samples[:-1], strict=True):
        torch.testing.assert_close(x, (1 - sigma) * x0 + sigma * eps, atol=2e-6, rtol=0)
    if name not in UNI_PC:
        assert (samples[-1] - x0).abs().max().item() <= 1e-6
        return
    # ComfyUI's UniPC stops at sigma 0.001, returns that sample over its VP alpha, and ComfyUI divides it by 1 - 0.001
    # (its inverse noise scaling, with the 0.001 sample_unipc wrote over the final sigma): x0 + 0.001 / 0.999 eps,
    # times sqrt(1 + 0.001^2). To 1e-4: ComfyUI's float32 lambda is 2% off at sigma 0.001 (measured 8.8e-5).
    final = (x0 + eps * UNI_PC_LAST_SIGMA / (1 - UNI_PC_LAST_SIGMA)) * math.sqrt(1 + UNI_PC_LAST_SIGMA**2)
    assert (samples[-1] - final).abs().max().item() <= 1e-4
    assert (samples[-1] - x0).abs().max().item() > 2e-3  # (not x0 itself)
    # a call of one step (the second expert's, at the last step) takes a first-order step; ComfyUI's takes none
    one = _sample_split(name, schedule, lambda x, s: (x - x0) / s, samples[0], schedule.num_steps - 1)
    assert (one - final).abs().max().item() <= 1e-4


class Gaussian:
    """Data N(mu, s^2): the flow-matching field is affine in x and transports z = (x - (1-sigma) mu) / sqrt(V)."""

    def __init__(self, mu: float, s: float):
        self.mu, self.s = mu, s

    def var(self, sigma: float) -> float:  # Var x_sigma
        return (1 - sigma) ** 2 * self.s**2 + sigma**2

    def velocity(self, x: torch.Tensor, sigma: float) -> torch.Tensor:  # E[eps - x0 | x_sigma = x]
        dvar = -2 * (1 - sigma) * self.s**2 + 2 * sigma
        return -self.mu + dvar / (2 * self.var(sigma)) * (x - (1 - sigma) * self.mu)

    def point(self, z: torch.Tensor, sigma: float) -> torch.Tensor:  # where the standard score z sits at sigma
        return (1 - sigma) * self.mu + math.sqrt(self.var(sigma)) * z


# (final, whole path) max errors, about 1.3x those measured for this problem (40 steps, shift 5, |x0| up to 6.5):
# euler 0.24 / 0.24, unipc 1.9e-2 / 2.7e-2, dpm++ 3.9e-2 / 4.6e-2, dpmpp_2m 7.1e-2 / 7.4e-2, res_multistep 8.2e-2 /
# 8.4e-2 (ComfyUI's two start at sigma 1 and step in -log sigma, which spends no steps near sigma 1 on shift 5).
GAUSSIAN_TOLERANCE = {
    "euler": (0.32, 0.32),
    "unipc": (2.4e-2, 3.6e-2),
    "dpm++": (5e-2, 6e-2),
    "dpmpp_2m": (9.3e-2, 9.7e-2),
    "res_multistep": (0.107, 0.109),
    "uni_pc": (5.2e-2, 5.2e-2),  # (measured 3.97e-2: the last step, to 0.001, is the longest, as ComfyUI lays it out)
    "uni_pc_bh2": (5.7e-2, 5.7e-2),  # (measured 4.37e-2)
}


@pytest.mark.parametrize("name", NAMES)
def test_gaussian_data_is_transported_to_the_exact_point(name):
    g = Gaussian(mu=0.5, s=2.0)
    z = torch.linspace(-3, 3, 13)
    schedule = get_schedule(name, 40, 5.0)
    samples = _sample(name, schedule, g.velocity, g.point(z, schedule.sigmas[0].item()))
    final_tol, path_tol = GAUSSIAN_TOLERANCE[name]
    assert (samples[-1] - g.point(z, 0.0)).abs().max().item() <= final_tol
    for sigma, x in zip(schedule.sigmas.tolist(), samples, strict=True):
        assert (x - g.point(z, sigma)).abs().max().item() <= path_tol


@pytest.mark.parametrize(
    ("name", "band"),
    [
        ("euler", (0.85, 1.15)),
        ("unipc", (1.7, 2.5)),
        ("dpm++", (1.6, 2.3)),
        ("dpmpp_2m", (1.8, 2.2)),  # measured 1.99
        ("res_multistep", (1.8, 2.2)),  # measured 2.00
        # third-order steps (2.7 from 20 to 80 steps), down to 2.40 and 2.55 by the floor of stopping at sigma 0.001
        ("uni_pc", (2.2, 2.8)),
        ("uni_pc_bh2", (2.3, 2.9)),
    ],
)
def test_order_of_accuracy(name, band):
    # Uniform sigma grid (shift 1). DPM++(2M) measures ~1.75 here, not 2: with sigma spaced uniformly the steps in
    # lambda do not shrink near sigma = 0 and 1, which costs a log factor; UniPC's corrector makes up for it (~2.1).
    g = Gaussian(mu=0.5, s=2.0)
    z = torch.linspace(-3, 3, 13)
    steps = [20, 40, 80, 160]
    errors = []
    for n in steps:
        schedule = get_schedule(name, n, 1.0)
        final = _sample(name, schedule, g.velocity, g.point(z, schedule.sigmas[0].item()))[-1]
        errors.append((final - g.point(z, 0.0)).abs().max().item())
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert band[0] <= slope <= band[1], (errors, slope)


# ---------------------------------------------------------------- explicit state


@pytest.mark.parametrize("name", NAMES)
def test_state_is_explicit_and_immutable(name):
    solver = get_solver(name)
    schedule = get_schedule(name, 6, 5.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, generator=gen)
    state = solver.init(schedule)
    states, xs = [state], [x]
    for k in range(schedule.num_steps):
        x, state = solver.step(state, torch.sin(3 * x) + k, x, k)
        states.append(state)
        xs.append(x)
    # replay any step from its saved state: same result, and the saved state and inputs are untouched
    for k in range(schedule.num_steps):
        before = [t.clone() for t in states[k].x0]
        x_in = xs[k].clone()
        again, new_state = solver.step(states[k], torch.sin(3 * xs[k]) + k, xs[k], k)
        once_more, _ = solver.step(states[k], torch.sin(3 * xs[k]) + k, xs[k], k)
        assert torch.equal(again, xs[k + 1]) and torch.equal(once_more, xs[k + 1])
        assert new_state is not states[k] and new_state.index == k
        assert all(torch.equal(a, b) for a, b in zip(before, states[k].x0, strict=True))
        assert torch.equal(x_in, xs[k])
    with pytest.raises(dataclasses.FrozenInstanceError):
        states[1].index = 5


@pytest.mark.parametrize("name", NAMES)
def test_steps_must_be_consecutive_and_in_range(name):
    solver = get_solver(name)
    schedule = get_schedule(name, 5, 5.0)
    x = torch.zeros(3)
    state = solver.init(schedule)
    _, state = solver.step(state, x, x, 0)
    with pytest.raises(ValueError, match="consecutive"):
        solver.step(state, x, x, 2)
    with pytest.raises(ValueError, match="outside"):
        solver.step(solver.init(schedule), x, x, 5)
    # starting part-way through a schedule is allowed (fresh state, no history)
    solver.step(solver.init(schedule), x, x, 3)


@pytest.mark.parametrize("name", NAMES)
def test_the_state_carries_the_history(name):
    # From step 2 on, the same (velocity, x) stepped from the carried state and from a fresh one (no history) agree
    # only for the one-step Euler solver.
    solver = get_solver(name)
    schedule = get_schedule(name, 8, 5.0)
    x = torch.linspace(-1, 1, 5)
    state = solver.init(schedule)
    for k in range(schedule.num_steps - 1):
        v = torch.tanh(x) * (k + 1)
        x_next, state_next = solver.step(state, v, x, k)
        x_fresh, _ = solver.step(solver.init(schedule), v, x, k)
        if k >= 2:
            assert torch.equal(x_next, x_fresh) == (name == "euler")
        x, state = x_next, state_next


def test_solver_registry():
    assert set(SOLVERS) == {
        "unipc", "dpm++", "euler", "lcm", "dpmpp_2m", "res_multistep", "uni_pc", "uni_pc_bh2", "euler_ancestral",
        "ipndm", "ipndm_v", "er_sde", "gradient_estimation", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde",
        "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde_gpu", "deis", "res_multistep_ancestral", "heun",
        "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "lms", "heunpp2", "seeds_2",
        "seeds_3", "sa_solver", "sa_solver_pece", "res_2s", "res_2s_ode", "res_3s", "res_3s_ode", "res_2m",
        "res_2m_ode", "euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp", "res_multistep_cfg_pp",
        "res_multistep_ancestral_cfg_pp", "gradient_estimation_cfg_pp", "dpmpp_2s_ancestral_cfg_pp",
    }  # fmt: skip
    assert get_solver("dpm++").order == 2 and get_solver("euler").order == 1 and get_solver("dpmpp_3m_sde").order == 3
    with pytest.raises(
        ValueError,
        match=r"choose one of \['deis', 'dpm\+\+', 'dpm_2', 'dpm_2_ancestral', 'dpmpp_2m', 'dpmpp_2m_cfg_pp', "
        r"'dpmpp_2m_sde', 'dpmpp_2m_sde_gpu', 'dpmpp_2m_sde_heun', 'dpmpp_2m_sde_heun_gpu', 'dpmpp_2s_ancestral', "
        r"'dpmpp_2s_ancestral_cfg_pp', 'dpmpp_3m_sde', 'dpmpp_3m_sde_gpu', 'dpmpp_sde', 'dpmpp_sde_gpu', 'er_sde', "
        r"'euler', 'euler_ancestral', 'euler_ancestral_cfg_pp', 'euler_cfg_pp', 'gradient_estimation', "
        r"'gradient_estimation_cfg_pp', 'heun', 'heunpp2', 'ipndm', 'ipndm_v', 'lcm', 'lms', "
        r"'res_2m', 'res_2m_ode', 'res_2s', 'res_2s_ode', 'res_3s', 'res_3s_ode', 'res_multistep', "
        r"'res_multistep_ancestral', 'res_multistep_ancestral_cfg_pp', 'res_multistep_cfg_pp', 'sa_solver', "
        r"'sa_solver_pece', 'seeds_2', 'seeds_3', 'uni_pc', 'uni_pc_bh2', 'unipc'\]",
    ):
        get_solver("ddpm")


def test_lcm_noises_the_data_prediction_afresh():
    """``(1 - s') (x - s v) + s' eps_k``, eps_k the seed's and the step's own noise; the last step is ``x - s v``."""
    schedule = get_schedule("lcm", 3, 5.0)
    assert torch.equal(schedule.sigmas, get_schedule("euler", 3, 5.0).sigmas)  # the few-step grid
    solver = get_solver("lcm")
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    state = solver.init(schedule, seed=11)
    sigmas = schedule.sigmas
    for k in range(3):
        x0 = x - sigmas[k] * v
        expected = x0 if k == 2 else (1 - sigmas[k + 1]) * x0 + sigmas[k + 1] * step_noise((4, 2, 3, 3), 11, k, "cpu")
        x, state = solver.step(state, v, x, k)
        assert torch.equal(x, expected)
    a, b, c = (step_noise((4, 2, 3, 3), seed, k, "cpu") for seed, k in ((11, 0), (11, 1), (12, 0)))
    assert not torch.equal(a, b) and not torch.equal(a, c)  # its own noise per step and per seed ...
    assert torch.equal(a, step_noise((4, 2, 3, 3), 11, 0, "cpu"))  # ... and the same again for the same two
    assert not torch.allclose(step_noise((4, 2, 3, 3), 12, 0, "cpu"), step_noise((4, 2, 3, 3), 11, 1, "cpu"))
    with pytest.raises(ValueError, match="needs the run's seed"):
        solver.step(solver.init(schedule), v, x, 0)


COMFY = json.loads((Path(__file__).parent / "comfy_samplers.json").read_text())["cases"]


def _sample_split(name, schedule, field, x, split, seed=None, seed_low=None):
    """``_sample`` with the solver started afresh at step ``split`` (what the loop does at the expert switch for a
    solver that ``restarts_at_switch``, or one given the low-noise expert's seed, ``seed_low``)."""
    solver = get_solver(name)
    state = solver.init(schedule, seed, stop=split)
    for k in range(schedule.num_steps):
        if k == split:
            state = solver.init(schedule, seed_low)
        x, state = solver.step(state, field(x, schedule.sigmas[k].item()), x, k)
    return x


@pytest.mark.parametrize(
    "case", COMFY, ids=lambda c: f"{c['sampler']}-{c['scheduler']}-{c.get('split', 'whole')}{c.get('layout', '')}"
)
def test_comfyuis_samplers(case):
    """ComfyUI's ``dpmpp_2m``, ``res_multistep``, ``uni_pc``, ``uni_pc_bh2``, ``lcm`` and ``euler_ancestral`` run on a
    toy denoiser over its schedulers' sigmas (saved in comfy_samplers.json; for the UniPC samplers laid out as KSampler
    lays them out, one step more and the penultimate dropped, and scaled in and out of each call as KSAMPLER.sample
    scales a flow model's; the stochastic ones with the noise of each call's seed), in one call or in two split at a
    step as two KSamplerAdvanced nodes run them: the same denoiser, given here as the velocity ``(x - D) / sigma``,
    gives their samples (started afresh at the split)."""

    def denoiser(x, sigma):
        return (1 - sigma) * torch.tanh(1.5 * x) + sigma * 0.25 * torch.sin(x)

    def field(x, s):
        return (x - denoiser(x, s)) / s

    ksampler = case.get("layout") != "custom"  # (custom sampling: BasicScheduler's sigmas as they are)
    schedule = comfy_schedule(
        case["scheduler"], case["steps"], case["shift"], sampler=case["sampler"] if ksampler else None
    )
    if "sigmas" in case:
        assert torch.equal(schedule.sigmas, torch.tensor(case["sigmas"]))
    x = torch.randn(1, 2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    final = _sample_split(
        case["sampler"], schedule, field, x, case.get("split"), case.get("seed"), case.get("seed_low")
    )
    assert (final.flatten() - torch.tensor(case["x"])).abs().max() <= 1e-6
    assert (final - _sample("euler", schedule, field, x)[-1]).abs().max() > 1e-3  # (another step than Euler's)
    if "split" in case:
        one_call = _sample_split(case["sampler"], schedule, field, x, None, case.get("seed"))
        assert (final - one_call).abs().max() > 1e-5  # (not one call)
    solver = get_solver(case["sampler"])
    assert solver.restarts_at_switch or solver.noised
