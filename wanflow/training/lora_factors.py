"""Trainable LoRA factors beside a frozen DiT, and their export in the Wan key format.

The factors live in their own module (``LoraFactors``), outside the DiT; a forward hook on each targeted linear adds
``(alpha / r) * (x A^T) B^T`` to its output, after the base matmul, whatever stores the frozen weight (float32,
bfloat16, or FP8 values and scales, ``runtime.fp8``). This is the mechanism of the unmerged inference LoRA
(``runtime.lora``), with parameters instead of buffers, and for the same reasons: the DiT's forward and state-dict
keys stay those of the plain model, and the hooks run again when an activation checkpoint recomputes a block. Keeping
the factors out of the DiT (rather than as children of its linears, as inference does) is what training needs: the
optimiser and the checkpoints see only them, and block streaming (``runtime.block_stream``, ``train-lora --offload
block``), which points a block's tensors back at their host copies after it runs, never touches a parameter that is
being trained.

The factors are float32 (the optimiser's master copy) and are cast to the activations' dtype inside the hook, as the
inference loader stores them in the compute dtype. B starts at zero (PEFT's initialisation), so an untrained LoRA
changes nothing; A is uniform in +-1/sqrt(in) (PEFT's kaiming-uniform with a = sqrt(5)).

``switched_off(factors)`` makes the hooks add nothing for a while, so the same expert also serves as the frozen base
(``base_velocity``: the teacher of ``train-lora --prior_target base``) without a second copy of its weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from wanflow.checkpoints.lora_save import wan_lora_state

# The linears of a block a LoRA trains by default: both attentions and the FFN (musubi-tuner's and diffusers'
# choice for Wan; 98% of a block's weights). Official module names under ``blocks.{i}``.
BLOCK_TARGETS = (
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.0",
    "ffn.2",
)


def target_shapes(model: nn.Module, targets: Sequence[str] = BLOCK_TARGETS) -> dict[str, tuple[int, int]]:
    """Official module name -> (out, in) of every block linear named in ``targets``, block by block."""
    shapes = {}
    for i in range(len(model.blocks)):
        for target in targets:
            name = f"blocks.{i}.{target}"
            linear = model.get_submodule(name)
            if not isinstance(linear, nn.Linear):
                raise ValueError(f"{name} is a {type(linear).__name__}, not a linear layer: LoRA targets linears")
            shapes[name] = (linear.out_features, linear.in_features)
    return shapes


class LoraFactors(nn.Module):
    """Down (r, in) and up (out, r) factors per module name, with the scale ``alpha / r``."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]], rank: int, alpha: float, seed: int = 0):
        super().__init__()
        if rank < 1 or not alpha > 0:
            raise ValueError(f"a LoRA needs rank >= 1 and alpha > 0, got rank {rank} and alpha {alpha}")
        self.names = list(shapes)
        self.rank, self.alpha = rank, float(alpha)
        generator = torch.Generator().manual_seed(seed)
        downs, ups = [], []
        for out_features, in_features in shapes.values():
            bound = in_features**-0.5
            downs.append(nn.Parameter((torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound))
            ups.append(nn.Parameter(torch.zeros(out_features, rank)))
        self.down, self.up = nn.ParameterList(downs), nn.ParameterList(ups)
        self.active = True  # off: the hooked linears compute the frozen base alone (``switched_off``)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def term(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """What module ``index`` adds to its linear's output for input ``x``, in x's dtype."""
        h = F.linear(x, self.down[index].to(x.dtype)) * self.scale
        return F.linear(h, self.up[index].to(x.dtype))

    def pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Module name -> (down, up), detached."""
        return {name: (d.detach(), u.detach()) for name, d, u in zip(self.names, self.down, self.up, strict=True)}

    def export(self, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
        """The Wan / ComfyUI key format (``diffusion_model.<module>.lora_down.weight`` ... ``.alpha``)."""
        return wan_lora_state(self.pairs(), self.alpha, dtype)


def _add_term(factors: LoraFactors, index: int, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out + factors.term(index, args[0]) if factors.active else out


@contextmanager
def switched_off(factors: LoraFactors) -> Iterator[None]:
    """Within the block the model that ``factors`` are attached to is the frozen base alone."""
    factors.active = False
    try:
        yield
    finally:
        factors.active = True


def base_velocity(model: nn.Module, factors: LoraFactors):
    """``model`` without its LoRA, as a velocity function (the teacher of output preservation)."""

    def velocity(*args, **kwargs) -> torch.Tensor:
        with switched_off(factors):
            return model(*args, **kwargs)

    return velocity


def attach(model: nn.Module, factors: LoraFactors) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook ``factors`` onto ``model``'s linears (by official name); remove the returned handles to take them off."""
    handles = []
    for index, name in enumerate(factors.names):
        linear = model.get_submodule(name)
        handles.append(linear.register_forward_hook(partial(_add_term, factors, index)))
    return handles
