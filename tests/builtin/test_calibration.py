"""The built-in models ship their own step-cache curve and preview map (``wanflow calibrate-cache --preview``), and the
default threshold skips, on their own 20-step schedules, what the README's figures were measured with."""

import pytest

from wanflow.builtin import FOLDERS, builtin_checkpoint
from wanflow.checkpoints.layouts import detect_layout
from wanflow.configs import VAE_CONFIGS
from wanflow.pipelines.core import Sampler
from wanflow.pipelines.pipeline import checkpoint_task
from wanflow.runtime.cache_curve import CURVE_FILE, load_curve
from wanflow.runtime.preview import PREVIEW_FILE, load_preview_map
from wanflow.runtime.step_cache import CacheSettings, plan
from wanflow.sampling.experts import boundary_timestep
from wanflow.sampling.solvers import get_schedule, get_solver
from wanflow.tasks import get_task

# Block-stack runs of 20 steps at the default threshold ('.' runs, 's' reuses), as in README "Step cache".
DEFAULT_PLANS = {
    "t2v-A14B": ".s.ss...s.s.s.s.....",
    "i2v-A14B": ".ss.s...ss.s.s.s....",
    "ti2v-5B": "....ss.ss.s.s.s.s.s.",
}


def builtin(task: str):
    layout = detect_layout(builtin_checkpoint(task))
    return layout, checkpoint_task(layout, get_task(task))


@pytest.mark.parametrize("task", list(FOLDERS))
def test_builtins_ship_their_curve_and_preview_map(task):
    layout, spec = builtin(task)
    curve = load_curve(layout.root, task)
    assert curve.source == str(layout.root / CURVE_FILE) and curve.steps == spec.steps
    assert curve.ratios[0] == (1.0, 1.0) and all(0.5 < r < 2.0 for pair in curve.ratios for r in pair)
    vae = VAE_CONFIGS[spec.vae]
    assert load_preview_map(layout.root, vae.version, vae.z_dim).source == str(layout.root / PREVIEW_FILE)


@pytest.mark.parametrize("task", list(DEFAULT_PLANS))
def test_the_default_threshold_on_the_builtin_schedules(task):
    layout, spec = builtin(task)
    sampler = Sampler(
        get_schedule("unipc", spec.steps, spec.shift),
        get_solver("unipc"),
        boundary_timestep(spec.boundary),
        spec.guide_scale,
    )
    skips = plan(load_curve(layout.root, task), sampler.steps(), CacheSettings())
    assert "".join("s" if s else "." for s in skips) == DEFAULT_PLANS[task]
