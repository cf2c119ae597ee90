"""ComfyUI's ``deis`` (``sampling.comfy_deis``) and ``res_multistep_ancestral`` (``sampling.comfy_solvers``): against
ComfyUI's own functions run as an oracle (comfy_deis.json), and DEIS's weights against their closed form."""

import json
from pathlib import Path

import pytest
import torch

from tests.sampling.test_comfy_sde import _run
from wanflow.sampling.comfy_deis import coefficients, vp_times
from wanflow.sampling.comfy_schedules import comfy_schedule
from wanflow.sampling.solvers import get_solver

CASES = json.loads((Path(__file__).parent / "comfy_deis.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['sampler']}-{c['scheduler']}-{c.get('split', 'whole')}")
def test_comfyuis_deis_and_res_multistep_ancestral(case):
    """On a toy flow model over ComfyUI's schedulers' sigmas, in one call or two (each call's noise from its seed):
    the samples are theirs, bit for bit in one call (to 1e-6 split), and neither Euler's nor one call's where split;
    another seed, another sample (res_multistep_ancestral)."""
    name = case["sampler"]
    schedule = comfy_schedule(case["scheduler"], case["steps"], case["shift"], sampler=name)
    assert torch.equal(schedule.sigmas[:-1], torch.tensor(case["model_sigmas"]))
    final = _run(name, schedule, case["seed"], case.get("split"), case.get("seed_low"))
    if "split" in case:  # (the sample scaled out of the first call and back into the second: a last-digit rounding)
        assert (final.flatten() - torch.tensor(case["x"])).abs().max() <= 1e-6
        assert (final - _run(name, schedule, case["seed"])).abs().max() > 1e-5
    else:
        assert torch.equal(final.flatten(), torch.tensor(case["x"]))
    assert (final - _run("euler", schedule, None, case.get("split"))).abs().max() > 1e-3
    noised = get_solver(name).noised
    assert noised == (name == "res_multistep_ancestral") and get_solver(name).restarts_at_switch
    if noised:
        assert (
            final - _run(name, schedule, case["seed"] + 1, case.get("split"), case.get("seed_low"))
        ).abs().max() > 1e-3


def test_deis_weights_are_integrals_of_lagrange_polynomials():
    """Each step's weights are the integrals over the step of DEIS's integrand times the Lagrange polynomials through
    the step's VP times: in float64 in closed form with a fine quadrature, the float32 10000-point sums agree to 1e-4
    relative; the weights of a polynomial basis reproduce the integral of the integrand (they sum to it)."""
    sigmas = comfy_schedule("simple", 8, 5.0).sigmas
    t, b0, b1 = (v.double() for v in vp_times(sigmas))
    for i in (1, 2, 5):
        got = torch.stack(coefficients(sigmas, i)).double()
        taus = torch.linspace(float(t[i]), float(t[i + 1]), 200001, dtype=torch.float64)
        alpha = torch.exp(-0.5 * taus**2 * (b1 - b0) - taus * b0)
        integrand = -0.5 * (-taus * (b1 - b0) - b0) / torch.sqrt(alpha * (1 - alpha))
        nodes = [t[i - k] for k in range(min(i + 1, 3))]
        want = []
        for j, node in enumerate(nodes):
            poly = torch.ones_like(taus)
            for k, other in enumerate(nodes):
                if k != j:
                    poly = poly * (taus - other) / (node - other)
            want.append(torch.trapezoid(integrand * poly, taus))
        want = torch.stack(want)
        assert torch.allclose(got, want, rtol=1e-4, atol=0), (i, got, want)
        assert torch.allclose(got.sum(), torch.trapezoid(integrand, taus), rtol=1e-4)
