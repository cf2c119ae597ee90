"""What a ``wanflow train-lora`` run is: its settings, checked once, and the checkpoint and task they name."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from wanflow.checkpoints.layouts import Layout, detect_layout
from wanflow.configs import DENSE, HIGH, LOW
from wanflow.tasks import Task, get_task
from wanflow.training.lora_factors import BLOCK_TARGETS

EXPERT_CHOICES = ("high", "low", "both")  # --expert; a dense model (TI2V-5B) has one, whatever is asked
# The frozen base: (stored dtype, e4m3 block linears). FP8 computes in bfloat16 (``runtime.fp8``).
BASES = {"float32": (torch.float32, False), "bfloat16": (torch.bfloat16, False), "fp8": (torch.bfloat16, True)}
# Where the frozen blocks live: all on the device, or in host memory, each brought in around its forward and again
# for its recomputation in the backward pass (``runtime.block_stream``; needs the activation checkpoint).
OFFLOADS = ("resident", "block")
# The prior clips' target: their own flow-matching velocity ``eps - x0`` (DreamBooth's prior preservation), or the
# frozen base model's prediction on the same noisy input (output preservation: a deterministic target, the base's
# own behaviour on those prompts rather than one sample of it).
PRIOR_TARGETS = ("flow", "base")


@dataclass(frozen=True)
class LoraSettings:
    """One LoRA training run. ``None`` sizes take the checkpoint's defaults (its ``wanflow.json``, else the task's)."""

    data: str | os.PathLike  # folder of name.mp4 / name.png ... beside name.txt
    out: str  # PREFIX: PREFIX_high_noise.safetensors ... (A14B) or PREFIX.safetensors, and PREFIX.ckpt
    task: str = "t2v-A14B"
    ckpt_dir: str | os.PathLike | None = None  # None: the task's built-in model
    steps: int = 1000
    rank: int = 16
    alpha: float | None = None  # None: the rank (scale 1)
    lr: float = 1e-4
    expert: str = "both"  # A14B: which experts to train, each on its own timestep range
    batch_size: int = 1
    size: tuple[int, int] | None = None  # (width, height) of the training samples
    frames: int | None = None  # frames per sample, 4n + 1
    windows: int = 1  # samples per clip, evenly spaced over it
    checkpoint_every: int = 100  # steps between checkpoints (and LoRA files); 0: only at the end
    sample_prompt: str | None = None  # a sample video every checkpoint_every steps with this prompt
    base: str = "auto"  # float32 | bfloat16 | fp8; auto: bfloat16 on a GPU, float32 on the CPU
    targets: tuple[str, ...] = BLOCK_TARGETS  # the block linears that get factors (official names under blocks.N)
    gradient_checkpointing: bool = True  # recompute each block's activations in the backward pass
    offload: str = "resident"  # OFFLOADS: "block" streams the frozen blocks from host memory
    seed: int = 0
    device: str = "auto"
    resume: bool = False  # continue PREFIX.ckpt; without it an existing checkpoint is an error
    # DreamBooth's prior preservation: a second folder (same layout) of clips of what the model should keep drawing,
    # typically its own generations for prompts without the new word; each step adds prior_weight times the loss on
    # a batch of batch_size of them.
    prior_data: str | os.PathLike | None = None
    prior_weight: float = 1.0
    prior_target: str | None = None  # PRIOR_TARGETS; None: "flow" for prior_data, "base" for preserve_word
    # Differential output preservation (``lora_preserve``): (trigger, class word); the prior samples are then the
    # data's clips with the trigger swapped for the class word in their captions, trained towards the base model.
    preserve_word: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        get_task(self.task)
        if self.expert not in EXPERT_CHOICES:
            raise ValueError(f"--expert must be one of {EXPERT_CHOICES}, got {self.expert!r}")
        if self.base not in (*BASES, "auto"):
            raise ValueError(f"the base must be one of {[*BASES, 'auto']}, got {self.base!r}")
        if self.steps < 1 or self.rank < 1 or self.batch_size < 1 or self.lr <= 0 or self.checkpoint_every < 0:
            raise ValueError("need steps, rank and batch size >= 1, lr > 0 and checkpoint_every >= 0")
        if self.offload not in OFFLOADS:
            raise ValueError(f"--offload must be one of {OFFLOADS}, got {self.offload!r}")
        if self.offload == "block" and not self.gradient_checkpointing:
            raise ValueError(
                "--offload block needs gradient checkpointing (the backward pass brings each block in again for its "
                "recomputation); drop --no_gradient_checkpointing"
            )
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        unknown = sorted(set(self.targets) - set(BLOCK_TARGETS))
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets are among {BLOCK_TARGETS}, got {unknown or 'none'}")
        if not (self.prior_weight >= 0 and math.isfinite(self.prior_weight)):
            raise ValueError(f"the prior weight must be a number >= 0, got {self.prior_weight}")
        if self.prior_target is not None and self.prior_target not in PRIOR_TARGETS:
            raise ValueError(f"the prior target must be one of {PRIOR_TARGETS}, got {self.prior_target!r}")
        if self.prior_target is not None and self.prior_data is None and self.preserve_word is None:
            raise ValueError("--prior_target is the target of the clips of --prior_data: pass that folder too")
        if self.preserve_word is not None:
            self._check_preserve_word()
        if not self.out or Path(self.out).name in ("", ".", ".."):
            raise ValueError(f"--out is a path prefix such as loras/my_style, got {self.out!r}")

    def _check_preserve_word(self) -> None:
        words = tuple(self.preserve_word)
        if len(words) != 2 or not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(f"--preserve_word is TRIGGER=CLASS, two words (e.g. zorb=dog), got {self.preserve_word!r}")
        if words[0].strip().lower() == words[1].strip().lower():
            raise ValueError(f"--preserve_word swaps the trigger for another word, got {words[0]!r} twice")
        if self.prior_data is not None:
            raise ValueError("--preserve_word makes the prior samples from the data folder: drop --prior_data")
        if self.prior_target == "flow":
            raise ValueError("--preserve_word trains towards the base model's prediction: drop --prior_target flow")

    @property
    def target(self) -> str:
        """What the prior samples are trained towards: as given, else the base for ``preserve_word``, else flow."""
        return self.prior_target or ("base" if self.preserve_word is not None else "flow")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    @property
    def checkpoint_path(self) -> Path:
        return Path(f"{self.out}.ckpt")

    def base_dtype(self, device: torch.device) -> tuple[torch.dtype, bool]:
        """The frozen weights' dtype and whether its block linears are stored in FP8."""
        base = self.base if self.base != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
        return BASES[base]

    def record(self) -> dict:
        """The settings as written into the LoRA file's metadata (paths as given)."""
        return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in asdict(self).items()}


def resolve_checkpoint(settings: LoraSettings) -> tuple[Layout, Task]:
    """The checkpoint to fine-tune (the built-in one without ``ckpt_dir``) and its task with the stored defaults."""
    from wanflow.builtin import builtin_checkpoint
    from wanflow.pipelines.pipeline import checkpoint_task

    task = get_task(settings.task)
    folder = settings.ckpt_dir if settings.ckpt_dir is not None else builtin_checkpoint(settings.task)
    layout = detect_layout(folder)
    if layout.kind == "files":
        raise ValueError(f"{folder}: train-lora takes a checkpoint folder (official or diffusers layout)")
    if task.is_moe != layout.is_moe:
        raise ValueError(f"task {task.name} and the checkpoint {folder} disagree on the number of experts")
    return layout, checkpoint_task(layout, task)


def chosen_experts(task: Task, expert: str) -> list[str]:
    """The experts a run trains: ``high`` / ``low`` / both for A14B; the one dense model otherwise."""
    if not task.is_moe:
        return [DENSE]
    return {"high": [HIGH], "low": [LOW], "both": [HIGH, LOW]}[expert]


def output_paths(out: str, task: Task, experts: list[str]) -> dict[str, Path]:
    """Expert -> the LoRA file it is written to: ``PREFIX_high_noise`` / ``PREFIX_low_noise``, or ``PREFIX``."""
    if not task.is_moe:
        return {DENSE: Path(f"{out}.safetensors")}
    return {name: Path(f"{out}_{name}_noise.safetensors") for name in experts}
