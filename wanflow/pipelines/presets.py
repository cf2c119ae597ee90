"""Named sampling presets: values for the ``GenerateOptions`` a user left out, applied before the task's defaults.

``lightning`` is how the step-distilled LoRAs (Wan2.2-Lightning "Seko" files, LightX2V's StepDistill-CfgDistill and
Wan2.2-Distill-Loras) were trained and are run by their authors: 4 Euler steps on the shifted grid
``linspace(1, 0, 5)[:4]`` with shift 5 and the DiT fed float timesteps (1000, 937.5, 833.33, 625), the experts
switched at the task's usual boundary (2 high-noise + 2 low-noise steps for both A14B tasks), and guidance 1, so no
unconditional pass runs at all. Each value can still be overridden (``--sample_steps 8`` keeps the rest).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

PRESETS: dict[str, dict[str, Any]] = {
    "lightning": {"steps": 4, "shift": 5.0, "solver": "euler", "float_timesteps": True, "guide_scale": 1.0},
}


def apply_preset(options: T, name: str | None) -> T:
    """``options`` (a dataclass) with the fields it leaves None taken from preset ``name``."""
    if name is None:
        return options
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    values = {k: v for k, v in PRESETS[name].items() if getattr(options, k) is None}
    return dataclasses.replace(options, **values)
