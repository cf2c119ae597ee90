"""ComfyUI's schedulers on the flow sigma table: every name gives ComfyUI's own sigmas bit for bit (its
``calculate_sigmas`` run on ``ModelSamplingDiscreteFlow(shift)``, saved in comfy_sigmas.json with the commits read;
the two RES4LYF adds to its list, bong_tangent and beta57, through the same function with RES4LYF's handlers, in
res4lyf_sigmas.json), and given sigmas are checked and kept as they are."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wanflow.sampling.comfy_schedules import (
    SCHEDULERS,
    comfy_schedule,
    comfy_sigmas,
    flow_table,
    given_schedule,
    parse_sigmas,
)
from wanflow.sampling.schedule import euler_schedule

COMFY_CASES = json.loads((Path(__file__).parent / "comfy_sigmas.json").read_text())["cases"]
RES4LYF_CASES = json.loads((Path(__file__).parent / "res4lyf_sigmas.json").read_text())["cases"]
CASES = COMFY_CASES + [c for c in RES4LYF_CASES if "error" not in c]


def test_every_scheduler_is_in_the_saved_cases():
    assert {c["scheduler"] for c in CASES} == set(SCHEDULERS)
    assert {c["shift"] for c in CASES} == {1.0, 5.0, 8.0} and {c["steps"] for c in COMFY_CASES} == {1, 3, 4, 7, 30}
    assert {c["steps"] for c in RES4LYF_CASES} == {1, 2, 3, 4, 7, 8, 20, 30}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['scheduler']}-{c['shift']:g}-{c['steps']}")
def test_comfyuis_sigmas_bit_for_bit(case):
    ours = comfy_sigmas(case["scheduler"], case["steps"], case["shift"])
    assert ours.dtype == torch.float32
    assert torch.equal(ours, torch.tensor(case["sigmas"], dtype=torch.float32))


def test_the_table_is_the_shifted_grid_of_a_thousand():
    t = np.arange(1, 1001) / 1000
    assert np.allclose(flow_table(8.0).numpy(), 8 * t / (1 + 7 * t), rtol=0, atol=1e-6)
    assert flow_table(8.0)[-1] == 1.0 and torch.equal(flow_table(1.0), torch.arange(1, 1001) / 1000)


@pytest.mark.parametrize(("steps", "shift"), [(4, 5.0), (8, 8.0), (20, 3.0)])
def test_simple_is_the_lightning_grid_where_the_steps_divide_a_thousand(steps, shift):
    """ComfyUI's ``simple`` picks shift(1 - k / steps) from the table: the Euler grid of the step-distilled LoRAs, to
    float32 rounding (the table is computed in float32, the Euler grid in float64)."""
    ours = comfy_schedule("simple", steps, shift)
    grid = euler_schedule(steps, shift, float_timesteps=True)
    assert torch.allclose(ours.sigmas, grid.sigmas, rtol=0, atol=2e-7)
    assert torch.allclose(ours.timesteps, grid.timesteps, rtol=0, atol=2e-4)


def test_beta_drops_repeated_entries():
    """Beta(0.6, 0.6) quantiles collide near the ends for many steps, and ComfyUI drops the repeats: fewer steps run
    than asked."""
    assert comfy_schedule("beta", 30, 5.0).num_steps == 30
    many = comfy_schedule("beta", 400, 5.0)
    assert many.num_steps < 400 and bool((many.sigmas[1:] < many.sigmas[:-1]).all())


def test_timesteps_are_float_unless_asked_otherwise():
    s = comfy_schedule("karras", 6, 8.0)
    assert s.timesteps.dtype == torch.float32 and torch.equal(s.timesteps, s.sigmas[:-1] * 1000)
    t = comfy_schedule("karras", 6, 8.0, float_timesteps=False)
    assert t.timesteps.dtype == torch.int64 and t.timesteps.tolist() == [int(v) for v in (s.sigmas[:-1] * 1000)]


def test_given_sigmas_are_kept_and_end_at_zero():
    s = given_schedule(parse_sigmas("1, 0.9375,0.8333 0.625"))
    assert s.sigmas.tolist() == [1.0, np.float32(0.9375), np.float32(0.8333), np.float32(0.625), 0.0]
    assert s.num_steps == 4 and s.timesteps.dtype == torch.float32
    assert torch.equal(given_schedule([0.5, 0.0]).sigmas, torch.tensor([0.5, 0.0]))
    assert parse_sigmas(torch.tensor([1.0, 0.5])) == (1.0, 0.5) and parse_sigmas((1, 0.5)) == (1.0, 0.5)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1,0.8,0.8", "fall strictly"),
        ("0.5,0.7", "fall strictly"),
        ("1.2,0.5", r"in \[0, 1\]"),
        ("1,-0.1", r"in \[0, 1\]"),
        ("1,nan", r"in \[0, 1\]"),
        ("", r"in \[0, 1\]"),
        ("0", "fall strictly"),
        ("1,a", "separated by commas"),
        ([1, True], "a list of numbers"),
        ({"a": 1}, "a list of numbers"),
    ],
)
def test_given_sigmas_refused(value, message):
    with pytest.raises(ValueError, match=message):
        given_schedule(parse_sigmas(value))


def test_refusals():
    with pytest.raises(ValueError, match="unknown scheduler 'karas'"):
        comfy_sigmas("karas", 4, 5.0)
    with pytest.raises(ValueError, match="kl_optimal scheduler needs 2 steps"):
        comfy_sigmas("kl_optimal", 1, 5.0)
    failed = [c for c in RES4LYF_CASES if "error" in c]  # (RES4LYF's own function divides by zero there)
    assert [(c["scheduler"], c["steps"]) for c in failed] == [("bong_tangent", 1)] * 3
    with pytest.raises(ValueError, match="bong_tangent scheduler needs 2 steps"):
        comfy_sigmas("bong_tangent", 1, 5.0)


def test_bong_tangent_meets_half_at_sixty_percent_and_ignores_the_shift():
    """Its two ramps meet at sigma 0.5, point ``int(0.6 (steps + 2)) - 1``; the shift does not move it."""
    for steps in (2, 5, 8, 20):
        sigmas = comfy_sigmas("bong_tangent", steps, 5.0)
        assert sigmas[int(0.6 * (steps + 2)) - 1] == 0.5 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
        assert torch.equal(sigmas, comfy_sigmas("bong_tangent", steps, 1.0))
