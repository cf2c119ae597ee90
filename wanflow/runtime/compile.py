"""Regional compilation: ``compile_blocks(model)`` compiles each transformer block, never the whole model.

Every block has the same code and the same input shapes, so dynamo traces one block and reuses its graph for the
others (and for the second expert): compile time is that of one block, not of 40. The embeddings, the head and the
loop stay eager, so a new resolution or step count recompiles only the block. ``Module.compile`` works in place: the
state-dict keys, hooks and parameters are those of the plain model (no ``_orig_mod.`` wrapper), so checkpoints,
offload policies and FSDP see the same modules.

The attention backend folds into the graph as a constant (``models.attention.default_backend``). The block has no
graph breaks (``tests/runtime/test_compile.py``); hooks added by offload or FSDP run inside the compiled region and
may add some.
"""

from __future__ import annotations

from torch import nn


def compile_blocks(model: nn.Module, **options) -> nn.Module:
    """Compile each block of a ``WanDiT`` in place; ``options`` go to ``torch.compile``
    (``mode="max-autotune-no-cudagraphs"``, ``backend="aot_eager"``, ...). Returns ``model``."""
    if not isinstance(getattr(model, "blocks", None), nn.ModuleList):
        raise ValueError(f"compile_blocks needs a WanDiT (a model with .blocks), got {type(model).__name__}")
    for block in model.blocks:
        block.compile(**options)
    return model
