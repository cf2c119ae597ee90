"""Process groups for multi-GPU / multi-machine inference, from the environment ``torchrun`` sets.

Every rank runs the whole sampling loop with the same seed (identical noise, as the reference); the parallel
transforms (``sequence_parallel``, ``cfg_parallel``, ``fsdp``, ``vae_parallel``) split the work inside a step, and
``pipelines.parallel`` applies them to a pipeline.
Only rank 0 writes files. Collectives carry a timeout so that a lost rank fails the run instead of hanging it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from wanflow.sampling.noise import as_int64, draw_seed, from_int64

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600.0


@dataclass
class DistContext:
    """Where this process stands: its rank, the world, its device, and the mesh of the parallel dimensions."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when running single-process (no process group)
    seed: int | None = None  # the seed broadcast from rank 0
    _meshes: dict[tuple, DeviceMesh] = field(default_factory=dict, repr=False)

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def mesh(self, cfg_size: int = 1, ulysses_size: int | None = None) -> DeviceMesh:
        """A ("cfg", "ulysses") mesh over the world; ``ulysses_size`` defaults to ``world_size // cfg_size``."""
        ulysses_size = self.world_size // cfg_size if ulysses_size is None else ulysses_size
        check_layout(self.world_size, ulysses_size=ulysses_size, cfg_size=cfg_size)
        return self._mesh((cfg_size, ulysses_size), ("cfg", "ulysses"))

    def flat_mesh(self) -> DeviceMesh:
        """A 1-D mesh over every rank (FSDP shards over it; batch-split VAE decode uses it)."""
        return self._mesh((self.world_size,), ("world",))

    def _mesh(self, shape: tuple[int, ...], names: tuple[str, ...]) -> DeviceMesh:
        """Meshes are built once per layout (each build creates process groups, a collective on every rank)."""
        if (shape, names) not in self._meshes:
            self._meshes[(shape, names)] = init_device_mesh(self.device.type, shape, mesh_dim_names=names)
        return self._meshes[(shape, names)]


def check_layout(world_size: int, ulysses_size: int = 1, cfg_size: int = 1) -> None:
    """The parallel sizes must tile the world. Any head count fits any ``ulysses_size``: the heads split over
    gcd(heads, ulysses_size) ranks and a ring covers the rest (``ring_attention``); a video needs at least one token
    per sequence-parallel rank, which ``SequenceParallelDiT`` checks when it sees one."""
    if ulysses_size < 1 or cfg_size < 1:
        raise ValueError(f"ulysses_size and cfg_size must be >= 1, got {ulysses_size} and {cfg_size}")
    if cfg_size not in (1, 2):
        raise ValueError(f"cfg_size must be 1 or 2 (the conditional and the unconditional pass), got {cfg_size}")
    if ulysses_size * cfg_size != world_size:
        raise ValueError(
            f"ulysses_size ({ulysses_size}) x cfg_size ({cfg_size}) must equal the number of processes "
            f"(WORLD_SIZE={world_size}); launch with torchrun --nproc_per_node {ulysses_size * cfg_size} "
            f"or change --ulysses_size"
        )


def init_from_env(
    timeout_s: float = DEFAULT_TIMEOUT_S, seed: int | None = None, backend: str | None = None
) -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    nccl on CUDA, gloo on CPU (``backend`` overrides). Without WORLD_SIZE (or with 1) nothing is initialised and a
    single-process context comes back. ``seed`` is taken from rank 0 on every rank.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world_size <= 1:
        return DistContext(0, 1, 0, torch.device("cuda") if cuda else device, None, seed)
    # A negative seed means "draw one" (the reference's rule); each rank would draw another, so rank 0's wins.
    if cuda:
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if cuda else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if backend == "nccl" else None,
        )
    ctx = DistContext(rank, world_size, local_rank, device, backend)
    ctx.seed = broadcast_seed(draw_seed(seed), device) if seed is not None else None
    return ctx


def broadcast_seed(seed: int, device: torch.device | str = "cpu", group: dist.ProcessGroup | None = None) -> int:
    """Rank 0's seed (of ``group``) on every rank."""
    if not dist.is_initialized():
        return seed
    value = torch.tensor([as_int64(seed)], dtype=torch.int64, device=device)  # (seeds go up to 2**64 - 1)
    dist.broadcast(value, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return from_int64(int(value.item()))


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` (anything picklable) on every rank; ``obj`` itself outside a process group."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def on_rank0(fn: Callable[..., T], *args, **kwargs) -> T | None:
    """Run ``fn`` on rank 0 only (writing files, logging results); other ranks get None. No collective here."""
    return fn(*args, **kwargs) if is_rank0() else None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def as_group(group: dist.ProcessGroup | DeviceMesh | None) -> dist.ProcessGroup:
    """A process group from a group, a 1-D mesh, or None (the whole world)."""
    if isinstance(group, DeviceMesh):
        if group.ndim != 1:
            raise ValueError(f"expected a 1-D device mesh, got {group.ndim} dims; pass mesh['<dim name>']")
        return group.get_group()
    return group if group is not None else dist.group.WORLD
