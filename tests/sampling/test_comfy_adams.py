"""ComfyUI's ``ipndm``, ``ipndm_v`` and ``gradient_estimation`` (``sampling.comfy_adams``): against ComfyUI's own
functions run as an oracle, and their accuracy on an exact flow."""

import json
from pathlib import Path

import pytest
import torch

from tests.sampling.test_comfy_sde import _run
from wanflow.sampling.comfy_schedules import comfy_schedule
from wanflow.sampling.schedule import Schedule
from wanflow.sampling.solvers import get_solver

CASES = json.loads((Path(__file__).parent / "comfy_adams.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['sampler']}-{c['scheduler']}-{c.get('split', 'whole')}")
def test_comfyuis_ipndm_samplers(case):
    """ComfyUI's ``ipndm``, ``ipndm_v`` and ``gradient_estimation`` on a toy flow model over its schedulers' sigmas,
    in one call or two (comfy_adams.json): the samples are theirs, bit for bit in one call (to 1e-6 split), and
    neither Euler's nor, where split, one call's."""
    name = case["sampler"]
    schedule = comfy_schedule(case["scheduler"], case["steps"], case["shift"], sampler=name)
    assert torch.equal(schedule.sigmas[:-1], torch.tensor(case["model_sigmas"]))
    final = _run(name, schedule, None, case.get("split"))
    if "split" in case:  # (the sample scaled out of the first call and back into the second: a last-digit rounding)
        assert (final.flatten() - torch.tensor(case["x"])).abs().max() <= 1e-6
    else:
        assert torch.equal(final.flatten(), torch.tensor(case["x"]))
    assert (final - _run("euler", schedule, None, case.get("split"))).abs().max() > 1e-3
    if "split" in case:
        assert (final - _run(name, schedule, None)).abs().max() > 1e-5
    assert get_solver(name).restarts_at_switch


def _error(name: str, steps: int, stop: float = 0.2) -> float:
    """The error of ``name`` integrating the exact flow of N(m, s^2) data from sigma 1 to ``stop`` in equal steps
    (in 1D the flow keeps ``(x - mean) / std`` of the noised data: x(stop) = mean(stop) + std(stop) x(1))."""
    m, s = 0.7, 0.5

    def velocity(x, sigma):  # E[eps - x0 | x_sigma] = (x - E[x0 | x_sigma]) / sigma
        var = (1 - sigma) ** 2 * s**2 + sigma**2
        return (x - (m + (1 - sigma) * s**2 / var * (x - (1 - sigma) * m))) / sigma

    sigmas = torch.linspace(1.0, stop, steps + 1, dtype=torch.float64)
    x = torch.tensor([1.3], dtype=torch.float64)
    exact = (1 - stop) * m + ((1 - stop) ** 2 * s**2 + stop**2) ** 0.5 * x
    schedule = Schedule(torch.cat([sigmas.float(), torch.zeros(1)]), (sigmas * 1000).float())  # (a last step left)
    solver = get_solver(name)
    state = solver.init(schedule)
    for k in range(steps):
        x, state = solver.step(state, velocity(x, schedule.sigmas[k].double()), x, k)
    return float((x - exact).abs().max())


@pytest.mark.parametrize("name", ["ipndm", "ipndm_v"])
def test_their_accuracy_on_an_exact_flow(name):
    """On a Gaussian's exact flow both are far more accurate than Euler at the same steps (a hundredth of its error
    at 32 steps), and their error falls faster than Euler's halving as the steps double (their Euler first step bounds
    them at second order overall)."""
    assert _error(name, 32) < _error("euler", 32) / 100
    assert _error(name, 64) < _error(name, 32) / 3
