"""Key and config maps between wanflow's modules and the official / diffusers checkpoint layouts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def init_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ``config.json`` without its private keys (``_class_name``, ``_diffusers_version``): the keyword
    arguments of the model class's constructor."""
    return {k: v for k, v in config.items() if not k.startswith("_")}
