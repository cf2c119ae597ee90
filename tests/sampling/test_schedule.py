import numpy as np
import pytest
import torch

from wanflow.sampling.comfy_schedules import comfy_schedule
from wanflow.sampling.schedule import (
    MOVE_FIRST_SIGMA,
    UNIPC_SIGMA_MAX,
    Schedule,
    comfy_uni_pc_schedule,
    dpm_schedule,
    euler_schedule,
    moved_euler_schedule,
    shift_sigmas,
    unipc_schedule,
)
from wanflow.sampling.solvers import REFERENCE_SOLVERS, SOLVERS, get_schedule

# wan22.md §4: the official FlowUniPC defaults.
# fmt: off
T2V_TIMESTEPS = [999, 997, 995, 993, 990, 988, 985, 982, 979, 976, 972, 969, 965, 961, 956, 952, 947, 941, 936, 929,
                 922, 915, 907, 898, 888, 877, 865, 852, 837, 819, 799, 776, 749, 717, 678, 631, 571, 492, 386, 235]
I2V_TIMESTEPS = [999, 994, 989, 983, 978, 972, 965, 959, 952, 944, 937, 929, 920, 911, 902, 892, 882, 870, 859, 846,
                 833, 818, 803, 786, 768, 749, 728, 706, 681, 654, 624, 591, 555, 514, 468, 416, 356, 288, 208, 113]
# fmt: on


def test_default_unipc_timesteps_match_reference():
    assert unipc_schedule(40, 12.0).timesteps.tolist() == T2V_TIMESTEPS
    assert unipc_schedule(40, 5.0).timesteps.tolist() == I2V_TIMESTEPS
    assert unipc_schedule(40, 12).timesteps.tolist() == T2V_TIMESTEPS  # an int shift gives the same grid


def test_unipc_sigma_max_is_float32_0999():
    assert UNIPC_SIGMA_MAX == 0.9990000128746033
    assert unipc_schedule(10, 1.0).sigmas[0].item() == np.float32(0.999)


@pytest.mark.parametrize("make", [unipc_schedule, dpm_schedule, euler_schedule])
@pytest.mark.parametrize("steps", [1, 7, 40])
def test_schedule_shape_and_order(make, steps):
    s = make(steps, 5.0)
    assert s.num_steps == steps and s.sigmas.shape == (steps + 1,)
    assert s.sigmas.dtype == torch.float32 and s.timesteps.dtype == torch.int64
    assert s.sigmas[-1].item() == 0.0
    assert (s.sigmas[1:] < s.sigmas[:-1]).all()
    # the model sees trunc(sigma * 1000) of the float64 sigma, which float32 sigma * 1000 brackets to within 1
    assert ((s.sigmas[:-1].double() * 1000 - s.timesteps).abs() < 1).all()


def _python_dpm_timesteps(n: int, shift: float) -> list[int]:
    # get_sampling_sigmas in plain Python floats: linspace(1, 0, n+1)[:n] is 1 + i * (-1/n), then the shift.
    sigmas = [1.0 + i * (-1.0 / n) for i in range(n)]
    return [int(shift * s / (1 + (shift - 1) * s) * 1000) for s in sigmas]


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 12.0])
@pytest.mark.parametrize("n", [5, 10, 40, 50])
def test_dpm_grid_is_shifted_linspace_from_one(n, shift):
    s = dpm_schedule(n, shift)
    assert s.sigmas[0].item() == 1.0 and s.timesteps[0].item() == 1000
    assert s.timesteps.tolist() == _python_dpm_timesteps(n, shift)
    assert torch.equal(euler_schedule(n, shift).sigmas, s.sigmas)


@pytest.mark.parametrize("shift", [3.0, 5.0, 12.0])
def test_dpm_sigmas_match_diffusers_flow_match_custom_sigmas(shift):
    diffusers = pytest.importorskip("diffusers")
    n = 20
    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(sigmas=np.linspace(1, 0, n + 1)[:n])  # diffusers.md §6.3: a single shift on custom sigmas
    # diffusers shifts in float32, we in float64 (as the reference): they differ by float32 rounding only
    torch.testing.assert_close(dpm_schedule(n, shift).sigmas, ref.sigmas, atol=2e-7, rtol=0)


def test_shift_sigmas_closed_form():
    sigmas = np.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_array_equal(shift_sigmas(sigmas, 1.0), sigmas)
    np.testing.assert_allclose(shift_sigmas(sigmas, 5.0), [0.0, 1.25 / 2.0, 2.5 / 3.0, 1.0], rtol=1e-15)
    torch.testing.assert_close(shift_sigmas(torch.tensor([0.5]), 3.0), torch.tensor([0.75]))
    assert shift_sigmas(0.5, 3.0) == 0.75


def test_each_solver_has_its_grid():
    """The reference's solvers their grids; ComfyUI's samplers its simple scheduler's grid, the first sigma moved off
    1 for those stepping in log-SNR and one step more less the penultimate for its UniPC ones."""
    grids = {name: solver.grid for name, solver in SOLVERS.items()}
    assert (grids["unipc"], grids["dpm++"]) == (unipc_schedule, dpm_schedule)
    assert set(REFERENCE_SOLVERS) == {"unipc", "dpm++"}
    assert {name for name, grid in grids.items() if grid is moved_euler_schedule} == set(MOVE_FIRST_SIGMA)
    assert {name for name, grid in grids.items() if grid is comfy_uni_pc_schedule} == {"uni_pc", "uni_pc_bh2"}
    rest = set(SOLVERS) - set(MOVE_FIRST_SIGMA) - {"unipc", "dpm++", "uni_pc", "uni_pc_bh2"}
    assert rest and all(grids[name] is euler_schedule for name in rest)
    moved = get_schedule("dpmpp_sde", 8, 5.0)
    assert moved.first_moved and torch.equal(moved.sigmas[1:], euler_schedule(8, 5.0).sigmas[1:])


def test_registry_and_errors():
    assert torch.equal(get_schedule("unipc", 40, 12.0).timesteps, torch.tensor(T2V_TIMESTEPS))
    with pytest.raises(ValueError, match="choose one of"):
        get_schedule("ddim", 10, 5.0)
    with pytest.raises(ValueError, match="steps"):
        unipc_schedule(0, 5.0)
    with pytest.raises(ValueError, match="shift"):
        dpm_schedule(10, 0.0)
    with pytest.raises(ValueError):
        Schedule(torch.tensor([1.0, 0.5]), torch.tensor([1000]))  # no final 0


@pytest.mark.parametrize(("n", "shift"), [(4, 5.0), (9, 8.0), (19, 3.0)])
def test_the_uni_pc_grid_is_comfyuis_ksampler_layout(n, shift):
    # ComfyUI's KSampler asks its scheduler for n + 1 steps for uni_pc and drops the penultimate sigma; where n + 1
    # divides 1000 its simple scheduler is the euler grid of n + 1 steps (in float32 rather than float64)
    grid = get_schedule("uni_pc", n, shift, float_timesteps=True)
    comfy = comfy_schedule("simple", n, shift, sampler="uni_pc")
    assert grid.num_steps == comfy.num_steps == n
    torch.testing.assert_close(grid.sigmas, comfy.sigmas, atol=1e-6, rtol=0)
    full = euler_schedule(n + 1, shift, float_timesteps=True)
    assert torch.equal(grid.sigmas, torch.cat([full.sigmas[:-2], full.sigmas[-1:]]))
    assert torch.equal(grid.timesteps, full.timesteps[:-1])  # (the model never sees the dropped sigma)
    assert torch.equal(
        comfy_schedule("simple", n, shift, sampler="euler").sigmas, comfy_schedule("simple", n, shift).sigmas
    )
