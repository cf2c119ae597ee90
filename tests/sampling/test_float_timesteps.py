"""The step-distilled LoRAs' schedule: Euler on ``linspace(1, 0, N + 1)[:N]`` shifted, the DiT fed float timesteps;
against the closed form, LightX2V's ``denoising_step_list`` construction and the values the Lightning authors quote."""

import numpy as np
import pytest
import torch

from wanflow.sampling.experts import select_expert
from wanflow.sampling.schedule import shift_sigmas
from wanflow.sampling.solvers import get_schedule


def closed_form(n: int, shift: float) -> list[float]:
    sigmas = [1 - k / n for k in range(n)]
    return [1000 * shift * s / (1 + (shift - 1) * s) for s in sigmas]


@pytest.mark.parametrize(("n", "shift"), [(4, 5.0), (8, 5.0), (4, 3.0), (3, 3.0), (6, 12.0)])
def test_float_timesteps_and_sigmas_follow_the_closed_form(n, shift):
    schedule = get_schedule("euler", n, shift, float_timesteps=True)
    assert schedule.timesteps.dtype == torch.float32
    want = torch.tensor(closed_form(n, shift), dtype=torch.float64)
    torch.testing.assert_close(schedule.timesteps.double(), want, rtol=1e-7, atol=0)  # float32 rounding only
    torch.testing.assert_close(schedule.sigmas.double(), torch.cat([want / 1000, torch.zeros(1, dtype=want.dtype)]))


def test_four_steps_at_shift_5_are_the_lightning_timesteps():
    schedule = get_schedule("euler", 4, 5.0, float_timesteps=True)
    assert schedule.timesteps.tolist() == [1000.0, 937.5, np.float32(2500 / 3).item(), 625.0]
    assert schedule.sigmas.tolist() == [1.0, 0.9375, np.float32(2.5 / 3).item(), 0.625, 0.0]
    # LightX2V: sigmas = shift(linspace(1, 0, 1001)[:-1]), indexed at 1000 - [1000, 750, 500, 250]
    grid = shift_sigmas(np.linspace(1, 0, 1001)[:-1], 5.0)
    lightx2v = torch.tensor([grid[1000 - t] * 1000 for t in (1000, 750, 500, 250)], dtype=torch.float32)
    assert torch.equal(schedule.timesteps, lightx2v)
    # The Lightning author's 8-step list (ModelTC/LightX2V-Wan2.2-Lightning#3), quoted to one decimal
    eight = get_schedule("euler", 8, 5.0, float_timesteps=True).timesteps
    torch.testing.assert_close(
        eight, torch.tensor([1000, 972.2, 937.5, 892.9, 833.3, 750.0, 625.0, 416.7]), atol=0.05, rtol=0
    )


def test_the_reference_grids_keep_their_integers_and_sigmas():
    for solver in ("unipc", "dpm++", "euler"):
        ints, floats = get_schedule(solver, 10, 5.0), get_schedule(solver, 10, 5.0, float_timesteps=True)
        assert ints.timesteps.dtype == torch.int64 and torch.equal(ints.sigmas, floats.sigmas)
        assert torch.equal(ints.timesteps, floats.timesteps.double().trunc().long())
    assert get_schedule("euler", 4, 5.0).timesteps.tolist() == [1000, 937, 833, 625]


def test_the_usual_boundary_gives_two_high_and_two_low_noise_steps():
    for boundary in (875.0, 900.0):  # T2V, I2V
        steps = get_schedule("euler", 4, 5.0, float_timesteps=True).timesteps.tolist()
        assert [select_expert(t, boundary) for t in steps] == ["high", "high", "low", "low"]
    assert select_expert(875.5, 875.25) == "high" and select_expert(875.2, 875.25) == "low"  # compared as floats
