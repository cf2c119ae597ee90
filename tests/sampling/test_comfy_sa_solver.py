"""ComfyUI's ``sa_solver`` and ``sa_solver_pece`` (``sampling.comfy_sa_solver``): against ComfyUI's own functions run
as an oracle (comfy_sa_solver.json), driven as the loop drives them, and what their noise interval and their hand-off
between sampler calls are."""

import json
from pathlib import Path

import pytest
import torch

from tests.sampling.test_comfy_sde import _drive, _field
from wanflow.sampling.comfy_schedules import comfy_schedule
from wanflow.sampling.schedule import percent_to_sigma
from wanflow.sampling.solvers import get_solver

CASES = json.loads((Path(__file__).parent / "comfy_sa_solver.json").read_text())["cases"]


def _run(name, schedule, shift, split=None, seed=None, seed_low=None):
    return _drive(get_solver(name), schedule, seed, split, seed_low, shift)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['sampler']}-{c['scheduler']}-{c.get('split', 'whole')}")
def test_comfyuis_sa_solvers(case):
    """On a toy flow model over ComfyUI's schedulers' sigmas, in one call or two (each call's noise from its seed):
    the model is called where ComfyUI calls it (sa_solver_pece: again at each corrected sample but the first) and the
    samples are theirs, bit for bit in one call (to 1e-6 split); another seed, another sample where a step ends in the
    noise interval; the shift (the interval) matters."""
    name, shift = case["sampler"], case["shift"]
    schedule = comfy_schedule(case["scheduler"], case["steps"], shift, sampler=name)
    final, seen = _run(name, schedule, shift, case.get("split"), case["seed"], case.get("seed_low"))
    assert torch.tensor(seen).equal(torch.tensor(case["model_sigmas"]))
    if "split" in case:  # (the sample scaled out of the first call and back into the second: a last-digit rounding)
        assert (final.flatten() - torch.tensor(case["x"])).abs().max() <= 1e-6
    else:
        assert torch.equal(final.flatten(), torch.tensor(case["x"]))
    other = _run(name, schedule, shift, case.get("split"), case["seed"] + 1, case.get("seed_low"))[0]
    assert ((final - other).abs().max() > 1e-3) == bool(_noised(schedule, shift))  # (karras at 8 skips the interval)
    moved = _run(name, schedule, shift / 4, case.get("split"), case["seed"], case.get("seed_low"))[0]
    assert (final - moved).any() == (_noised(schedule, shift / 4) != _noised(schedule, shift))


def _noised(schedule, shift):
    """The steps whose next sigma lies in the noise interval at ``shift`` (ComfyUI's 20% to 80% of the timesteps)."""
    top, bottom = percent_to_sigma(0.2, shift), percent_to_sigma(0.8, shift)
    return {k for k, s in enumerate(schedule.sigmas[1:].tolist()) if top >= s >= bottom}


def test_noise_only_inside_the_interval():
    """tau is 1 at the sigmas between the model's 20% and 80% points, 0 elsewhere: a schedule all below the interval
    takes no noise (any seed, one sample), one inside it does."""
    shift = 5.0
    low = percent_to_sigma(0.8, shift)
    schedule = comfy_schedule("simple", 12, shift, sampler="sa_solver")
    below = [k for k in range(schedule.num_steps) if 0 < schedule.sigmas[k + 1] < low]
    assert below and below[0] < schedule.num_steps - 1
    from wanflow.sampling.schedule import Schedule

    tail = Schedule(schedule.sigmas[below[0] :], schedule.timesteps[below[0] :])
    seeds = [_run("sa_solver", tail, shift, seed=s)[0] for s in (1, 2)]
    assert torch.equal(seeds[0], seeds[1])
    assert not torch.equal(_run("sa_solver", schedule, shift, seed=1)[0], _run("sa_solver", schedule, shift, seed=2)[0])


def test_a_call_that_ends_above_zero_hands_on_its_corrected_sample():
    """As ComfyUI's function returns it: the last step of a call before the switch returns the sample it corrected
    at its own start (the model's prediction point of the step), not the prediction at the call's end."""
    shift, solver = 5.0, get_solver("sa_solver")
    schedule = comfy_schedule("simple", 6, shift, sampler="sa_solver")
    x = torch.randn(1, 2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    state = solver.init(schedule, 3, stop=3, shift=shift)
    for k in range(3):
        before = state
        x, state = solver.step(state, _field(x, schedule.sigmas[k]), x, k)
    assert torch.equal(x, state.last_sample) and before.last_sample is not None
    whole = solver.init(schedule, 3, shift=shift)
    y = torch.randn(1, 2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    for k in range(3):
        y, whole = solver.step(whole, _field(y, schedule.sigmas[k]), y, k)
    assert torch.equal(whole.last_sample, state.last_sample) and not torch.equal(y, x)


def test_it_needs_the_shift():
    schedule = comfy_schedule("simple", 4, 5.0, sampler="sa_solver")
    x = torch.ones(1, 2, 1, 2, 2)
    solver = get_solver("sa_solver")
    with pytest.raises(ValueError, match="model's shift"):
        solver.step(solver.init(schedule, 1), _field(x, schedule.sigmas[0]), x, 0)
