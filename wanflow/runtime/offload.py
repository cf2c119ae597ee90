"""Where the experts live during sampling: policies applied by the pipeline, never code inside the models.

- ``resident``: every expert on the device for the whole run (fastest; needs memory for all of them).
- ``model``: only the active expert on the device; the others wait in pinned host memory. On CUDA the next expert
  is copied in on a side stream during the step before the switch (``prefetch``), when the device has room for
  both, so the switch itself does not wait for the copy. The host copies are kept, so putting an expert back
  costs nothing: its device copy is dropped. This is what the reference does on one GPU, minus the stalls.
- ``block``: the expert stays in host memory and each transformer block is copied to the device just before it
  runs, the next one on a side stream meanwhile (``runtime.block_stream``); only the small embeddings and head stay
  resident.

Buffers travel with the parameters (an unmerged LoRA keeps its factors as buffers of the layers it changes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from wanflow.runtime.block_stream import BlockStream
from wanflow.runtime.host import HOST, module_tensors, pin
from wanflow.sampling.hooks import Step, StepHook

log = logging.getLogger(__name__)

POLICIES = ("resident", "model", "block")


def choose_policy(policy: str | None, device: torch.device, distributed: bool = False) -> str:
    """The placement policy of a run: the one asked for, else ``model`` on a GPU (as the reference on one GPU) and
    ``resident`` elsewhere; a distributed run keeps its shards resident (the reference never offloads there)."""
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"unknown offload policy {policy!r}; choose one of {POLICIES}")
    if distributed:
        if policy not in (None, "resident"):
            log.warning("a distributed run keeps every expert resident (offload %r is ignored)", policy)
        return "resident"
    return policy or ("model" if torch.device(device).type == "cuda" else "resident")


def _to(module: nn.Module, device: torch.device, stream: torch.cuda.Stream | None = None) -> None:
    """Move the parameters and buffers of ``module`` to ``device``; with ``stream``, the copies run on that side
    stream."""
    for p in module_tensors(module):
        if p.device == device:
            continue
        if stream is None:
            p.data = p.data.to(device, non_blocking=True)
            continue
        data = torch.empty_like(p.data, device=device)  # allocated for the compute stream, which uses and frees it
        with torch.cuda.stream(stream):
            data.copy_(p.data, non_blocking=True)
        p.data = data


def _room_for(module: nn.Module, device: torch.device) -> bool:
    """Whether ``module`` fits on the CUDA ``device`` next to what is there now, keeping the headroom this process
    has needed so far (its peak allocation minus the current one: the activations of a step)."""
    free, _ = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    cached = torch.cuda.memory_reserved(device) - allocated
    headroom = torch.cuda.max_memory_allocated(device) - allocated
    need = sum(p.numel() * p.element_size() for p in module_tensors(module))
    return free + cached >= need + headroom


def stream_blocks(model: nn.Module, device: torch.device) -> list[torch.utils.hooks.RemovableHandle]:
    """Keep ``model.blocks`` in host memory and bring each block to ``device`` only while it runs
    (``runtime.block_stream``); the rest of the model moves to ``device``. Applied again (the pipeline re-applies its
    policy after a transform), it replaces its stream instead of adding a second one. Returns the hooks' handles."""
    device = torch.device(device)
    for name, child in model.named_children():
        if name != "blocks":
            _to(child, device)
    for p in module_tensors(model, recurse=False):
        p.data = p.data.to(device)
    stop_streaming(model)
    model.block_stream = BlockStream(model.blocks, device)
    return model.block_stream.handles


def stop_streaming(model: nn.Module) -> None:
    """Undo ``stream_blocks``: every block back in host memory (where the next policy puts it), the hooks off."""
    stream = getattr(model, "block_stream", None)
    if stream is not None:
        stream.remove()
        del model.block_stream


class ExpertPlacement(StepHook):
    """Callable ``placement(name) -> expert ready on the device`` implementing one of ``POLICIES``; as a step hook of
    the denoising loop it prefetches the next expert one step before the switch and releases the device at the end."""

    def __init__(self, experts: Mapping[str, nn.Module], device: torch.device | str, policy: str = "model"):
        if policy not in POLICIES:
            raise ValueError(f"unknown offload policy {policy!r}; choose one of {POLICIES}")
        self.experts, self.device, self.policy = dict(experts), torch.device(device), policy
        self.active: str | None = None
        self.prefetched: str | None = None  # copied (or being copied) to the device ahead of its first step
        self.stream: torch.cuda.Stream | None = None  # the side stream of the prefetches (CUDA only)
        if policy != "block":
            for model in self.experts.values():
                stop_streaming(model)  # a policy that streamed the blocks before this one
        if policy == "resident":
            for model in self.experts.values():
                _to(model, self.device)
        elif policy == "block":
            for model in self.experts.values():
                stream_blocks(model, self.device)
        else:
            for model in self.experts.values():
                _to(model, HOST)
                pin(model)
            # (parameter, host tensor) pairs: inference never changes the weights, so the host copies stay valid.
            self.host = {name: [(p, p.data) for p in module_tensors(model)] for name, model in self.experts.items()}

    def __call__(self, name: str) -> nn.Module:
        if self.policy == "model" and name != self.active:
            if name == self.prefetched:
                self._join()
                self.prefetched = None
            else:
                self._cancel()
                _to(self.experts[name], self.device)
            if self.active is not None:
                self._drop(self.active)
            log.debug("expert %s on %s", name, self.device)
            self.active = name
        return self.experts[name]

    def before(self, step: Step, model: nn.Module) -> None:
        if step.next_expert is not None and step.next_expert != step.expert:
            self.prefetch(step.next_expert)  # its host->device copy overlaps this step

    def end(self) -> None:
        self.release()

    def prefetch(self, name: str) -> None:
        """Under ``model`` offload, start copying expert ``name`` to the device, to be used from a later call.

        On CUDA the copy runs on a side stream and overlaps the compute queued until the switch; it is skipped (the
        switch then copies, as without prefetch) when the device has no room for two experts. On other devices it
        is a plain copy, which on the CPU moves nothing.
        """
        if self.policy != "model" or name in (self.active, self.prefetched):
            return
        self._cancel()
        model = self.experts[name]
        if self.device.type == "cuda":
            if not _room_for(model, self.device):
                log.info("no room to prefetch expert %s; it is copied at the switch", name)
                return
            self.stream = self.stream or torch.cuda.Stream(self.device)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # memory reused in the compute stream
        _to(model, self.device, self.stream)
        self.prefetched = name

    def release(self) -> None:
        """After sampling: under ``model`` offload no expert stays on the device, under ``block`` no block."""
        if self.policy == "block":
            for model in self.experts.values():
                model.block_stream.release()
        if self.policy != "model":
            return
        self._cancel()
        if self.active is not None:
            self._drop(self.active)
        self.active = None

    def _cancel(self) -> None:
        """Give back the device copy of a prefetched expert that was not switched to."""
        if self.prefetched is not None:
            self._join()
            self._drop(self.prefetched)
            self.prefetched = None

    def _join(self) -> None:
        """The compute stream waits for the prefetch copies (nothing to wait for without a side stream)."""
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def _drop(self, name: str) -> None:
        """Point the expert's parameters back at their host copies; the device copies are freed in stream order."""
        for p, host in self.host[name]:
            p.data = host
