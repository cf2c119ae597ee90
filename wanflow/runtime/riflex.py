"""RIFLEx for one run: the DiT's frame frequency ``k`` lowered for the video's length (``models.rope``), so that a video
longer than the model's training length does not repeat its motion.

The community runs it as KJNodes' "Apply RifleXRoPE WanVideo" node (k 6 by default), Kijai's WanVideoWrapper's
``riflex_freq_index`` and Wan2GP's RIFLEx setting; each lowers the frequency for the latent frames the DiT sees, as
here. Wan 2.2 was trained on 81 frames (21 latent frames): the authors' method is for longer videos; on shorter ones
it only moves the video away from the model's own.

``Riflex(k)`` is a step hook: from its first step, each expert's ``riflex`` is ``k``; the run's end puts theirs back.
"""

from __future__ import annotations

from torch import nn

from wanflow.models.dit import WanDiT
from wanflow.sampling.hooks import Step, StepHook


class Riflex(StepHook):
    def __init__(self, k: int):
        self.k = k
        self._set: list[tuple[WanDiT, int]] = []  # (an expert's DiT, the riflex it had)
        self._models: set[int] = set()  # the experts already set this run

    def before(self, step: Step, model: nn.Module) -> None:
        if id(model) in self._models:
            return
        self._models.add(id(model))
        for dit in model.modules():  # (through any wrapper: compiled, sharded)
            if isinstance(dit, WanDiT) and dit.riflex != self.k:
                self._set.append((dit, dit.riflex))
                dit.riflex = self.k

    def end(self) -> None:
        for dit, previous in reversed(self._set):
            dit.riflex = previous
        self._set.clear()
        self._models.clear()
