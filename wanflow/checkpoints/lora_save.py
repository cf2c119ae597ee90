"""Writing a LoRA in the Wan key format, the one ComfyUI, diffusers' ``load_lora_weights``, musubi-tuner and wanflow's
own loader (``checkpoints/lora.py``) all read: per module ``diffusion_model.<official module>.lora_down.weight``
(r, in), ``.lora_up.weight`` (out, r) and ``.alpha`` (a 0-dim float32 tensor; the scale is alpha / r).

The file is written under a temporary name beside its path and renamed over it, so an interrupted write never
leaves a partial LoRA behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

WAN_PREFIX = "diffusion_model."


def wan_lora_state(
    pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]], alpha: float, dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """``{module: (down (r, in), up (out, r))}`` -> the Wan key format, factors in ``dtype``."""
    state = {}
    for module, (down, up) in pairs.items():
        key = WAN_PREFIX + module
        state[f"{key}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
        state[f"{key}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
        state[f"{key}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return state


def save_lora(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]) -> Path:
    """``state`` with its string ``metadata`` to ``path`` (safetensors), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(dict(state), tmp, metadata={str(k): str(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
