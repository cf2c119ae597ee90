"""Reading diffusers' schedulers: the grid is the scheduler's own ``set_timesteps`` (the object left as it was), the
family picks the solver, and the reference's config, given to diffusers' UniPC on the reference's grid, is wanflow's
default schedule bit for bit."""

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from tests.pipelines.test_parity import ReferenceUniPC
from wanflow.configs import DiffusersConfig
from wanflow.sampling.diffusers_schedulers import (
    reference_config,
    scheduler_family,
    scheduler_grid,
)
from wanflow.sampling.schedule import unipc_schedule

FLOW = dict(prediction_type="flow_prediction", use_flow_sigmas=True)


@pytest.mark.parametrize(
    ("make", "solver"),
    [
        (lambda: UniPCMultistepScheduler(**FLOW, flow_shift=5.0), "unipc"),
        (lambda: DPMSolverMultistepScheduler(**FLOW, flow_shift=3.0), "dpm++"),
        (lambda: FlowMatchEulerDiscreteScheduler(shift=5.0), "euler"),
    ],
)
@pytest.mark.parametrize("steps", [4, 13])
def test_the_grid_is_the_schedulers_own(make, solver, steps):
    scheduler = make()
    before = scheduler.timesteps.clone()
    grid = scheduler_grid(scheduler, steps)
    assert grid.solver == solver and grid.name == type(scheduler).__name__
    assert torch.equal(scheduler.timesteps, before)  # a copy was asked: the object is as it was
    scheduler.set_timesteps(steps)
    assert torch.equal(grid.schedule.sigmas, scheduler.sigmas.float())
    assert torch.equal(grid.schedule.timesteps, scheduler.timesteps)
    assert grid.schedule.timesteps.dtype == (torch.float32 if solver == "euler" else torch.int64)
    assert grid.shift == (3.0 if solver == "dpm++" else 5.0)


@pytest.mark.parametrize("steps", [2, 8, 40])
@pytest.mark.parametrize("shift", [1.0, 5.0, 12.0])
def test_the_reference_config_on_the_reference_grid_is_the_default_schedule(steps, shift):
    grid = scheduler_grid(ReferenceUniPC.from_config(reference_config(shift)), steps).schedule
    ours = unipc_schedule(steps, shift)
    assert torch.equal(grid.sigmas, ours.sigmas) and torch.equal(grid.timesteps, ours.timesteps)


def test_diffusers_own_unipc_grid_starts_at_one():
    """What ``UniPCMultistepScheduler.from_config(pipe.scheduler.config)`` walks: diffusers' flow grid, from sigma
    1 - 1e-6 (linspace(1, 1/1000) shifted), not the reference's 0.999."""
    grid = scheduler_grid(UniPCMultistepScheduler.from_config(reference_config(5.0)), 4).schedule
    s = np.linspace(1, 1 / 1000, 5)[:-1]
    s = 5.0 * s / (1 + 4.0 * s)
    s[0] -= 1e-6
    assert np.allclose(grid.sigmas[:-1].numpy(), s, rtol=0, atol=1e-7) and grid.sigmas[-1] == 0


def test_a_config_reads_by_attribute_and_key():
    config = DiffusersConfig(reference_config(3.0))
    assert config.flow_shift == config["flow_shift"] == 3.0
    with pytest.raises(AttributeError):
        _ = config.no_such_setting


def test_a_class_outside_the_families_is_refused_by_name():
    class Sampler:
        def __init__(self):
            self.config = {}

        def set_timesteps(self, steps, device=None):
            pass

    with pytest.raises(ValueError, match="got Sampler"):
        scheduler_family(Sampler())
    with pytest.raises(ValueError, match="final_sigmas_type"):
        scheduler_family(UniPCMultistepScheduler(**FLOW, final_sigmas_type="sigma_min"))
