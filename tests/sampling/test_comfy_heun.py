"""ComfyUI's ``heun``, ``dpm_2``, ``dpm_2_ancestral``, ``dpmpp_2s_ancestral`` and ``heunpp2``
(``sampling.comfy_heun``), ``dpmpp_sde`` (``sampling.comfy_sde``), ``seeds_2`` and ``seeds_3``
(``sampling.comfy_seeds``), samplers of two or three model calls a step: against ComfyUI's own functions run as an
oracle (comfy_heun.json), driven as the loop drives them (``state.pending``), and in the pipeline's loop."""

import json
from pathlib import Path

import pytest
import torch

from tests.sampling.test_comfy_sde import _drive, _field
from wanflow.sampling.comfy_schedules import comfy_schedule
from wanflow.sampling.solvers import get_solver

CASES = json.loads((Path(__file__).parent / "comfy_heun.json").read_text())["cases"]


def _run(name, schedule, split=None, seed=None, seed_low=None):
    """The solver over ``schedule`` from the oracle's noise as the loop drives it, started afresh at ``split``; (the
    sample, the sigmas the model was called at)."""
    return _drive(get_solver(name), schedule, seed, split, seed_low)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['sampler']}-{c['scheduler']}-{c.get('split', 'whole')}")
def test_comfyuis_samplers_of_more_calls_a_step(case):
    """On a toy flow model over ComfyUI's schedulers' sigmas, in one call or two (each call's noise from its seed):
    the model is called where ComfyUI calls it (two or three calls a step, one on the last; heunpp2: two on a call's
    second last step, one on its last), and the samples are theirs, bit for bit in one call (to 1e-6 split); not
    Euler's, nor another seed's."""
    name = case["sampler"]
    schedule = comfy_schedule(case["scheduler"], case["steps"], case["shift"], sampler=name)
    final, seen = _run(name, schedule, case.get("split"), case["seed"], case.get("seed_low"))
    assert torch.tensor(seen).equal(torch.tensor(case["model_sigmas"]))
    calls, n = get_solver(name).model_calls, schedule.num_steps
    if name == "heunpp2":  # (each sampler call's last step: one call, its second last: two)
        assert len(seen) == 3 * n - 3 * (1 if "split" not in case else 2)
    else:  # (the last step, to sigma 0: one call)
        assert len(seen) == calls * n - (calls - 1)
    if "split" in case:  # (the sample scaled out of the first call and back into the second: a last-digit rounding)
        assert (final.flatten() - torch.tensor(case["x"])).abs().max() <= 1e-6
    else:
        assert torch.equal(final.flatten(), torch.tensor(case["x"]))
    assert (final - _run("euler", schedule, case.get("split"))[0]).abs().max() > 1e-3
    if get_solver(name).noised:  # (another seed, another sample)
        other = _run(name, schedule, case.get("split"), case["seed"] + 1, case.get("seed_low"))[0]
        assert (final - other).abs().max() > 1e-3


def test_a_step_awaits_its_second_call():
    """Between a step's two calls the state takes that step's second velocity only."""
    solver, schedule = get_solver("heun"), comfy_schedule("simple", 4, 5.0)
    x = torch.ones(1, 2, 1, 2, 2)
    _, state = solver.step(solver.init(schedule), _field(x, schedule.sigmas[0]), x, 0)
    assert state.pending is not None
    with pytest.raises(ValueError, match="step 0 awaits its next model call, not step 1"):
        solver.step(state, x, x, 1)
