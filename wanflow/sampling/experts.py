"""Which expert and which guidance scale a denoising step uses: pure functions of the timestep (wan22.md §4).

The A14B models switch from the high-noise to the low-noise expert once the integer timestep drops below
``boundary * 1000`` (T2V 875, I2V 900). A dense model (TI2V-5B) has no boundary and one expert. Device placement
of the experts is someone else's job; this module only decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from wanflow.configs import DENSE, HIGH, LOW


def boundary_timestep(boundary: float | None, num_train_timesteps: int = 1000) -> float | None:
    """The timestep at which the experts switch; ``None`` for a dense model."""
    if boundary is None:
        return None
    if not 0 <= boundary <= 1:
        raise ValueError(f"boundary is a fraction of the training timesteps in [0, 1], got {boundary!r}")
    return boundary * num_train_timesteps


def step_boundary(timesteps: Sequence[int | float], switch_step: int) -> float:
    """The boundary timestep that gives the high-noise expert the first ``switch_step`` steps and the low-noise one
    the rest (ComfyUI's two KSamplerAdvanced nodes, ``end_at_step`` / ``start_at_step``): the timestep of the last
    high-noise step, since an expert runs while ``t >= boundary`` and the timesteps decrease."""
    n = len(timesteps)
    if isinstance(switch_step, bool) or not isinstance(switch_step, int) or not 0 <= switch_step <= n:
        raise ValueError(
            f"switch_step is a step index in 0..{n} (the steps of the high-noise expert), got {switch_step!r}"
        )
    if switch_step in (0, n):
        return math.inf if switch_step == 0 else -math.inf
    boundary = float(timesteps[switch_step - 1])
    if timesteps[switch_step] >= boundary:
        raise ValueError(
            f"steps {switch_step - 1} and {switch_step} share the timestep {boundary:g}: no switch between"
        )
    return boundary


def select_expert(t: int | float, boundary_t: float | None) -> str:
    """``"high"`` while ``t >= boundary_t``, then ``"low"``; ``"dense"`` when there is no boundary. A float timestep
    (``float_timesteps``) is compared as it is, as Wan2.2-Lightning does."""
    if boundary_t is None:
        return DENSE
    return HIGH if (t if isinstance(t, float) else int(t)) >= boundary_t else LOW


def guidance_for(t: int | float, boundary_t: float | None, guide_scale: tuple[float, float] | float) -> float:
    """The classifier-free guidance scale at timestep ``t``.

    ``guide_scale`` is one float, or a ``(low_noise, high_noise)`` pair (the reference config order) picked by the
    same comparison that picks the expert.
    """
    if isinstance(guide_scale, (int, float)):
        return float(guide_scale)
    if len(guide_scale) != 2:
        raise ValueError(f"guide_scale is a float or a (low_noise, high_noise) pair, got {guide_scale!r}")
    low, high = guide_scale
    if boundary_t is None:
        if low != high:
            raise ValueError(f"a dense model takes one guide_scale, got the pair {guide_scale!r}")
        return float(low)
    return float(high if select_expert(t, boundary_t) == HIGH else low)
