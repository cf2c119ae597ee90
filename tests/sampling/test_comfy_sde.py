"""ComfyUI's SDE samplers (``sampling.comfy_sde``): against ComfyUI's own functions run as an oracle, and the
Brownian noise against what a Brownian motion is."""

import json
from pathlib import Path

import pytest
import torch

from wanflow.sampling.comfy_schedules import comfy_schedule
from wanflow.sampling.comfy_sde import BrownianNoise
from wanflow.sampling.schedule import MOVE_FIRST_SIGMA, Schedule
from wanflow.sampling.solvers import get_schedule, get_solver

CASES = json.loads((Path(__file__).parent / "comfy_sde.json").read_text())["cases"]


def _denoiser(x, sigma):
    return (1 - sigma) * torch.tanh(1.5 * x) + sigma * 0.25 * torch.sin(x)


def _field(x, sigma):
    return (x - _denoiser(x, sigma)) / sigma


def _run(name, schedule, seed, split=None, seed_low=None, solver=None):
    """The solver over ``schedule`` from the oracle's noise, started afresh at ``split`` with ``seed_low`` (the
    loop's two sampler calls)."""
    return _drive(solver or get_solver(name), schedule, seed, split, seed_low)[0]


def _drive(solver, schedule, seed, split=None, seed_low=None, shift=None):
    """``_run``'s steps, each step's further model calls where the solver asks them (``state.pending``), as the loop
    drives it (``shift``: the model's, for the solvers that read it); (the sample, the sigmas the model was called
    at)."""
    x = torch.randn(1, 2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    x = x * (1.0 if schedule.first_moved else schedule.sigmas[0])  # (KSampler's noise scaling: sigma noise)
    state, seen = solver.init(schedule, seed, stop=split, shift=shift), []
    for k in range(schedule.num_steps):
        if k == split:
            state = solver.init(schedule, seed_low, shift=shift)
        if solver.calls_model(state, k):  # (as the loop: a step may need no model output)
            seen.append(float(schedule.sigmas[k]))
            x, state = solver.step(state, _field(x, schedule.sigmas[k]), x, k)
        else:
            x, state = solver.step(state, torch.zeros_like(x), x, k)
        while state.pending is not None:
            x_2, sigma = state.pending
            seen.append(float(sigma))
            x, state = solver.step(state, _field(x_2, sigma), x, k)
    return x, seen


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['sampler']}-{c['scheduler']}-{c.get('split', 'whole')}")
def test_comfyuis_sde_samplers(case):
    """ComfyUI's ``dpmpp_2m_sde``, ``dpmpp_2m_sde_heun``, ``dpmpp_3m_sde`` and ``er_sde`` on a toy denoiser over its
    schedulers' sigmas, their noise (Brownian; er_sde's fresh draws) seeded with each call's seed, in one call or two
    (comfy_sde.json): the model is called at their sigmas (the first moved off 1 as theirs is), and the samples are
    theirs (bit for bit in one call, to 1e-6 split); the noise's tree spans up to 1, not to the moved sigma; another
    seed, another sample."""
    name = case["sampler"]
    schedule = comfy_schedule(case["scheduler"], case["steps"], case["shift"], sampler=name)
    assert torch.equal(schedule.sigmas[:-1], torch.tensor(case["model_sigmas"]))
    assert schedule.first_moved == (case["scheduler"] != "ddim_uniform")  # (ddim_uniform starts below 1)
    final = _run(name, schedule, case["seed"], case.get("split"), case.get("seed_low"))
    other_seed = _run(name, schedule, case["seed"] + 1, case.get("split"), case.get("seed_low"))
    assert (other_seed - final).abs().max() > 1e-2
    if "split" in case:  # (the sample scaled out of the first call and back into the second: a last-digit rounding)
        assert (final.flatten() - torch.tensor(case["x"])).abs().max() <= 1e-6
    else:
        assert torch.equal(final.flatten(), torch.tensor(case["x"]))
    if name == "er_sde":  # (fresh noise a step, as lcm's: no tree)
        return
    gpu = _run(name + "_gpu", schedule, case["seed"], case.get("split"), case.get("seed_low"))
    assert torch.equal(gpu, final)  # (the _gpu variants' tree on the run's device: here the CPU as well)
    if schedule.first_moved:  # (the first call's noise spans up to 1, not to the moved sigma)
        unmarked = Schedule(schedule.sigmas, schedule.timesteps)
        assert (_run(name, unmarked, case["seed"], case.get("split"), case.get("seed_low")) - final).abs().max() > 1e-3


def test_the_first_sigma_moves_off_one_on_every_grid():
    """ComfyUI moves a first sigma of 1 to the sigma at timestep percent 1e-4, shift(0.9999), for these samplers, the
    DiT fed it too; a grid that starts below 1 (video to video) is left as it is."""
    for name in MOVE_FIRST_SIGMA:
        schedule = get_schedule(name, 4, 5.0, float_timesteps=True)
        euler = get_schedule("euler", 4, 5.0, float_timesteps=True)
        moved = 5.0 * 0.9999 / (1 + 4.0 * 0.9999)
        assert schedule.first_moved and schedule.sigmas[0] == torch.tensor(moved, dtype=torch.float32)
        assert schedule.timesteps[0] == schedule.sigmas[0] * 1000
        assert torch.equal(schedule.sigmas[1:], euler.sigmas[1:]) and torch.equal(
            schedule.timesteps[1:], euler.timesteps[1:]
        )
    assert not comfy_schedule("simple", 4, 5.0).first_moved  # (the other samplers walk sigma 1)
    integer = get_schedule("dpmpp_2m_sde", 4, 5.0)
    assert integer.timesteps.dtype == torch.int64 and integer.timesteps[0] == 999


def test_the_noise_is_a_brownian_motions_unit_increments():
    """Each step's noise is the tree's increment over the step over its standard deviation: increments over two
    adjacent steps add up to the one over both, disjoint ones are independent, and each is N(0, 1)."""
    like = torch.zeros(1, 4, 8, 32, 32)
    tree = BrownianNoise(like, torch.tensor(0.05), torch.tensor(1.0), seed=3, cpu=True)
    a, b, c = (torch.tensor(s) for s in (0.9, 0.6, 0.2))
    ab, bc, ac = tree(a, b), tree(b, c), tree(a, c)
    assert torch.allclose(ab * (a - b).sqrt() + bc * (b - c).sqrt(), ac * (a - c).sqrt(), atol=1e-5)
    for w in (ab, bc):
        assert w.shape == like.shape and abs(float(w.mean())) < 0.02 and abs(float(w.std()) - 1) < 0.02
    assert abs(float((ab * bc).mean())) < 0.02  # (independent increments)
    again = BrownianNoise(like, torch.tensor(0.05), torch.tensor(1.0), seed=3, cpu=True)
    assert torch.equal(again(a, b), ab)  # (the seed gives the tree)


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "er_sde"])
def test_the_sde_samplers_need_the_seed(name):
    schedule = get_schedule(name, 4, 5.0)
    solver = get_solver(name)
    x = torch.randn(1, 2, 2, 3, 3)
    with pytest.raises(ValueError, match="run's seed"):
        solver.step(solver.init(schedule), x, x, 0)
    assert solver.restarts_at_switch and solver.noised


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_the_cpu_trees_noise_follows_the_latents_to_their_device(name):
    """The schedule's sigmas and the Brownian tree live on the CPU; each step's noise goes to the latents' device
    (the meta device stands in for a GPU here: no GPU on this machine)."""
    schedule, solver = comfy_schedule("simple", 4, 8.0, sampler=name), get_solver(name)
    state, x = solver.init(schedule, 3), torch.randn(1, 2, 2, 3, 3, device="meta")
    for k in range(schedule.num_steps):
        x, state = solver.step(state, torch.randn(1, 2, 2, 3, 3, device="meta"), x, k)
    assert x.device.type == "meta" and x.shape == (1, 2, 2, 3, 3)
