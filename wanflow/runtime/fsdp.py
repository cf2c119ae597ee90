"""FSDP2 (``fully_shard``) for the DiT and the umT5 encoder, as the reference shards them: one unit per block, the
rest (embeddings, head) in the root unit. Parameters live sharded over the mesh and are all-gathered per block.

On CUDA the default policy computes with bfloat16 parameters and reduces in float32 (the reference's
``MixedPrecision(param_dtype=bf16, reduce_dtype=fp32)``); the DiT's float32 islands (time MLP, time projection,
head) get their own float32 units. The block modulation tables are gathered in bfloat16 like every other block
parameter, as in the reference. On CPU everything stays float32. Every rank must hold the same weights before
sharding (each keeps its own slice; nothing is broadcast).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from wanflow.models.dit import FP32_MODULES, WanDiT


def default_policy(device_type: str) -> MixedPrecisionPolicy:
    """bf16 compute with fp32 reductions on GPUs, plain float32 elsewhere; inputs are never cast (the residual
    stream and the time embeddings stay float32 as in the plain model)."""
    if device_type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
    return MixedPrecisionPolicy(cast_forward_inputs=False)


def shard_dit(model: WanDiT, mesh: DeviceMesh, policy: MixedPrecisionPolicy | None = None) -> WanDiT:
    """Shard a DiT (plain, or sequence-parallel already) per block, then at the root; in place."""
    policy = policy or default_policy(mesh.device_type)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    if policy.param_dtype not in (None, torch.float32):
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
        for name in fp32_units(model):
            fully_shard(getattr(model, name), mesh=mesh, mp_policy=fp32)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def fp32_units(model: WanDiT) -> list[str]:
    """The float32 islands that are whole child modules of the DiT (time MLP, time projection, head); the block
    modulation tables are gathered with their block, in bfloat16, as in the reference."""
    return [name for name in FP32_MODULES if isinstance(getattr(model, name, None), nn.Module)]


def shard_text_encoder(encoder: nn.Module, mesh: DeviceMesh, policy: MixedPrecisionPolicy | None = None) -> nn.Module:
    """Shard umT5 (a ``TextEncoder`` or a ``UMT5EncoderModel``) per block, then at the root; in place."""
    policy = policy or default_policy(mesh.device_type)
    umt5 = getattr(encoder, "model", encoder)
    for block in umt5.encoder.block:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(umt5, mesh=mesh, mp_policy=policy)
    return encoder
