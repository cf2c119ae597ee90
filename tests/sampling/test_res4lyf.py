"""RES4LYF's ``res_2s``, ``res_3s``, ``res_2m`` and their ``_ode`` forms (``sampling.res4lyf``): against RES4LYF's own
samplers run as an oracle (res4lyf_res.json), driven as the loop drives them, and what their noise, their last step
and their bongmath are."""

import json
from pathlib import Path

import pytest
import torch

from tests.sampling.test_comfy_sde import _drive, _field
from wanflow.sampling import res4lyf
from wanflow.sampling.comfy_schedules import comfy_schedule, flow_table, given_schedule
from wanflow.sampling.solvers import get_solver

CASES = json.loads((Path(__file__).parent / "res4lyf_res.json").read_text())["cases"]


def _schedule(case):
    if "sigmas" in case:
        return given_schedule(case["sigmas"])
    return comfy_schedule(case["scheduler"], case["steps"], case["shift"], sampler=case["sampler"])


def _run(name, schedule, shift, seed, split=None):
    return _drive(get_solver(name), schedule, seed, split, seed, shift)


def _ids(case):
    return f"{case['sampler']}-{case.get('scheduler', 'sigmas')}-{case.get('split', 'whole')}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_res4lyfs_samplers(case):
    """On a toy flow model over ComfyUI's schedulers' sigmas (RES4LYF's bong_tangent too) and given sigmas, in one
    call or two (the chain's calls all seeded from the first KSampler's seed, as ComfyUI seeds torch): the model is
    called at RES4LYF's sigmas (each stage of each step; res_2m's multistep steps once) and the samples are its own,
    bit for bit in one call, to 1e-6 split; where the last sigma is sigma_min already, the last step makes no call
    (RES4LYF makes none there: ``needs_model``)."""
    name, shift = case["sampler"], case["shift"]
    schedule = _schedule(case)
    final, seen = _run(name, schedule, shift, case["seed"], case.get("split"))
    assert seen == case["model_sigmas"]
    if "split" in case:  # (the sample scaled out of the first call and back into the second: a last-digit rounding)
        assert (final.flatten() - torch.tensor(case["x"])).abs().max() <= 1e-6
    else:
        assert torch.equal(final.flatten(), torch.tensor(case["x"]))
    other = _run(name, schedule, shift, case["seed"] + 1, case.get("split"))[0]
    assert torch.equal(final, other) == name.endswith("_ode")  # (no noise: no seed)


def test_no_model_call_where_the_last_sigma_is_the_smallest():
    """karras ends at the model's smallest sigma: the last step is RES4LYF's denoise alone, so it asks for no model
    output there (whatever it would get, the sample is the same); simple's last step, to a sigma_min put in, does."""
    for scheduler, last_call in (("karras", False), ("simple", True)):
        schedule, solver = comfy_schedule(scheduler, 6, 8.0), get_solver("res_2s")
        last_is_min = bool(schedule.sigmas[-2] <= flow_table(8.0)[0] + res4lyf.MIN_GAP)
        assert last_is_min != last_call
        x = torch.randn(1, 2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
        outs = []
        for garbage in (False, True):
            y, state = x.clone(), solver.init(schedule, 3, shift=8.0)
            for k in range(schedule.num_steps):
                assert solver.calls_model(state, k) == (k < schedule.num_steps - 1 or last_call)
                last = k == schedule.num_steps - 1
                v = torch.full_like(y, 1e3) if garbage and last else _field(y, schedule.sigmas[k])
                y, state = solver.step(state, v, y, k)
                while state.pending is not None:
                    y, state = solver.step(state, _field(state.pending[0], state.pending[1]), y, k)
            outs.append(y)
        assert torch.equal(*outs) != last_call


def test_ode_split_is_one_call_and_bongmath_matters(monkeypatch):
    """res_2s_ode carries nothing from step to step: two calls give one call's sample bit for bit. Bongmath moves the
    step's start to the noised midpoint's path: without it (its rounds at 0) res_2s's sample moves, res_2s_ode's
    (no noise: the midpoint is on the path) only in its last digits."""
    schedule = comfy_schedule("bong_tangent", 10, 8.0)
    ode, sde = (_run(name, schedule, 8.0, 1)[0] for name in ("res_2s_ode", "res_2s"))
    assert torch.equal(_run("res_2s_ode", schedule, 8.0, 1, split=5)[0], ode)
    monkeypatch.setattr(res4lyf, "BONG_ROUNDS", 0)
    assert (_run("res_2s", schedule, 8.0, 1)[0] - sde).abs().max() > 1e-2
    assert (_run("res_2s_ode", schedule, 8.0, 1)[0] - ode).abs().max() < 1e-5


def test_it_needs_the_seed_and_the_shift():
    schedule, solver = comfy_schedule("simple", 4, 5.0), get_solver("res_2s")
    x = torch.ones(1, 2, 1, 2, 2)
    for state in (solver.init(schedule, 1), solver.init(schedule, shift=5.0)):
        with pytest.raises(ValueError, match="init\\(schedule, seed, shift=\\)"):
            solver.step(state, _field(x, schedule.sigmas[0]), x, 0)
