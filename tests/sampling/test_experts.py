import pytest

from wanflow.sampling.experts import boundary_timestep, guidance_for, select_expert, step_boundary
from wanflow.sampling.schedule import dpm_schedule, unipc_schedule


def test_boundary_timestep():
    assert boundary_timestep(0.875) == 875.0
    assert boundary_timestep(0.9) == 900.0
    assert boundary_timestep(0.5, num_train_timesteps=2000) == 1000.0
    assert boundary_timestep(None) is None
    with pytest.raises(ValueError, match="boundary"):
        boundary_timestep(875)


def test_select_expert_compares_with_greater_equal():
    assert select_expert(875, 875.0) == "high"
    assert select_expert(874, 875.0) == "low"
    assert select_expert(999, 900.0) == "high"
    assert select_expert(0, None) == "dense"
    assert select_expert(1000, None) == "dense"


@pytest.mark.parametrize("make", [unipc_schedule, dpm_schedule])
@pytest.mark.parametrize(("shift", "boundary", "high_steps"), [(12.0, 0.875, 26), (5.0, 0.9, 15)])
def test_expert_switch_points_of_the_defaults(make, shift, boundary, high_steps):
    # wan22.md §4: T2V switches after 26 of 40 steps, I2V after 15, for both solvers' grids.
    boundary_t = boundary_timestep(boundary)
    experts = [select_expert(t, boundary_t) for t in make(40, shift).timesteps]
    assert experts == ["high"] * high_steps + ["low"] * (40 - high_steps)


def test_guidance_follows_the_expert():
    # reference tuples are (low_noise, high_noise): T2V (3.0, 4.0)
    assert guidance_for(999, 875.0, (3.0, 4.0)) == 4.0
    assert guidance_for(875, 875.0, (3.0, 4.0)) == 4.0
    assert guidance_for(874, 875.0, (3.0, 4.0)) == 3.0
    assert guidance_for(500, 875.0, 5.0) == 5.0
    assert guidance_for(500, None, 5.0) == 5.0
    assert guidance_for(500, None, (3.5, 3.5)) == 3.5
    with pytest.raises(ValueError, match="dense"):
        guidance_for(500, None, (3.0, 4.0))
    with pytest.raises(ValueError, match="pair"):
        guidance_for(500, 875.0, (1.0, 2.0, 3.0))


def test_guidance_schedule_of_t2v_defaults():
    scales = [guidance_for(t, 875.0, (3.0, 4.0)) for t in unipc_schedule(40, 12.0).timesteps]
    assert scales == [4.0] * 26 + [3.0] * 14


def test_step_boundary_gives_the_high_noise_expert_the_first_k_steps():
    timesteps = unipc_schedule(6, 12.0).timesteps.tolist()  # (999, 983, 959, 922, 856, 705): 4 high, 2 low at 875
    for k in range(7):
        experts = [select_expert(t, step_boundary(timesteps, k)) for t in timesteps]
        assert experts == ["high"] * k + ["low"] * (6 - k)
    assert [select_expert(t, boundary_timestep(0.875)) for t in timesteps] == ["high"] * 4 + ["low"] * 2
    floats = [1000.0, 937.5, 833.33, 625.0]  # the Lightning grid's float timesteps
    assert [select_expert(t, step_boundary(floats, 1)) for t in floats] == ["high", "low", "low", "low"]
    with pytest.raises(ValueError, match=r"switch_step is a step index in 0..6"):
        step_boundary(timesteps, 7)
    with pytest.raises(ValueError, match="share the timestep 5: no switch between"):
        step_boundary([9, 5, 5, 1], 2)
