"""Block streaming: the transformer blocks of a DiT wait in host memory and each is copied to the device only around
its forward, for sampling (the ``block`` offload policy) and for training a LoRA beside a frozen expert larger than
the device (``train-lora --offload block``).

- The host copies are the weights. Bringing a block in copies it into fresh device tensors and points the block's
  parameters and buffers at them; sending it back points them at the host copies again. Nothing is copied back (the
  weights are frozen while they stream), and a device copy is freed once nothing uses it any more.
- At most two blocks are on the device: the one running and the next, whose copy runs on a side stream (CUDA) while
  this one computes. "Next" follows the direction of travel: up in a forward pass, down in the backward pass of
  training, where the activation checkpoint runs the blocks again from the last to the first.
- Training needs that activation checkpoint (``runtime.activation_checkpoint``). Without it autograd keeps the
  parameters themselves for the backward pass, and they point at host memory once their block is sent back; the
  checkpoint instead recomputes the block in the backward pass (bringing it in again: the hooks sit on the block
  inside the checkpoint's wrapper) and keeps its own references to those device copies until the block's backward
  is done.
"""

from __future__ import annotations

import torch
from torch import nn

from wanflow.runtime.activation_checkpoint import CheckpointedBlock
from wanflow.runtime.host import HOST, module_tensors, pin


def _unwrapped(block: nn.Module) -> nn.Module:
    """The block itself, inside an activation checkpoint's wrapper (whose recomputation must bring it in too)."""
    return block.block if isinstance(block, CheckpointedBlock) else block


class BlockStream:
    """Forward hooks that bring each of ``blocks`` to ``device`` just before it runs and send it back after; the
    blocks' tensors are moved to (pinned) host memory now. ``release()`` sends every block back; ``remove()`` also
    takes the hooks off."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device | str):
        self.device = torch.device(device)
        self.blocks = [_unwrapped(block) for block in blocks]
        for block in self.blocks:
            for t in module_tensors(block):
                t.data = t.data.to(HOST)
            pin(block)
        self.host = [[(t, t.data) for t in module_tensors(block)] for block in self.blocks]
        self.resident: set[int] = set()  # blocks whose tensors point at device copies
        self.prefetched: int | None = None  # brought in ahead of its forward (on the side stream with CUDA)
        self.last = 0  # the block brought in last: tells the direction of travel
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.handles = []
        for index, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_pre_hook(lambda m, args, i=index: self.bring(i)))
            self.handles.append(block.register_forward_hook(lambda m, args, out, i=index: self.send_back(i)))

    def bring(self, index: int) -> None:
        """Block ``index`` on the device for its forward; every other block sent back but the next one, started."""
        upward = index > self.last or index == 0  # a backward pass recomputes the blocks from the last one down
        self.last = index
        if index == self.prefetched:
            self._join()
            self.prefetched = None
        elif index not in self.resident:
            self._copy_in(index)
        for other in self.resident - {index}:
            self.send_back(other)
        following = index + 1 if upward else index - 1
        if 0 <= following < len(self.blocks):
            self._prefetch(following)

    def send_back(self, index: int) -> None:
        """Point block ``index`` at its host copies; its device copies are freed in the compute stream's order."""
        if index == self.prefetched:
            self._join()  # its copy may still be running on the side stream
            self.prefetched = None
        if index in self.resident:
            for t, host in self.host[index]:
                t.data = host
            self.resident.discard(index)

    def release(self) -> None:
        """No block stays on the device (after a run, and before anything changes the weights in host memory)."""
        for index in list(self.resident):
            self.send_back(index)

    def remove(self) -> None:
        self.release()
        for handle in self.handles:
            handle.remove()

    def _prefetch(self, index: int) -> None:
        if index in self.resident:
            return
        if self.stream is not None:  # the copy may reuse memory the compute queued so far still reads
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self._copy_in(index, self.stream)
        self.prefetched = index

    def _copy_in(self, index: int, stream: torch.cuda.Stream | None = None) -> None:
        """Fresh device copies of block ``index`` (always copies, on the CPU too: the host copies are never used for
        compute), written on ``stream`` if given."""
        for t, host in self.host[index]:
            data = torch.empty_like(host, device=self.device)  # allocated for the compute stream, which frees it
            if stream is None:
                data.copy_(host, non_blocking=True)
            else:
                with torch.cuda.stream(stream):
                    data.copy_(host, non_blocking=True)
            t.data = data
        self.resident.add(index)

    def _join(self) -> None:
        """The compute stream waits for the side stream's copies (nothing to wait for without one)."""
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
