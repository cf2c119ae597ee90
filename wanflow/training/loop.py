"""A small, generic training loop: AdamW, linear warm-up + cosine decay, gradient clipping, optional EMA, and
atomic checkpoints that resume bit-identically.

The loop knows nothing about the models or the data: ``loss_fn(step, generator)`` builds its batch (on
``generator.device``, drawing all its randomness from ``generator``) and returns a scalar loss. A resumed run restores
the trainable weights, the optimiser, the scheduler, every RNG (torch, CUDA, Python, NumPy and the generator) and the
history, so ``steps`` straight and ``k`` steps + crash + resume give the same weights (exactly, on CPU).

The checkpoint holds the trainable parameters and the buffers (frozen weights come from wherever the model was
loaded); it is a plain ``torch.save`` dict readable with ``weights_only=True``, written to a temporary file and
renamed, so an interrupted save never leaves a partial checkpoint. Export the trained model in the official layout
with ``wanflow.checkpoints``; the EMA weights (``History.ema``) load with ``model.load_state_dict(ema, strict=False)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

LossFn = Callable[[int, torch.Generator], torch.Tensor]
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # compute dtype -> autocast dtype (None: no autocast)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimiser steps in total; a resumed run continues up to this
    batch_size: int = 1  # samples per step: read by the loss function's data code, not by the loop
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW moment decays
    warmup: int = 0  # steps of linear warm-up from lr / warmup to lr
    min_lr_ratio: float = 0.0  # the cosine decay ends at lr * min_lr_ratio
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    ema_decay: float | None = None  # keep an EMA of the trainable weights with this decay (e.g. 0.999); None: off
    seed: int = 0  # seeds the generator handed to loss_fn, and the global RNGs at the start of a fresh run
    checkpoint_every: int = 0  # save every N steps; 0: only at the end
    log_every: int = 10  # steps between log lines and progress-bar updates of the running loss
    device: str = "auto"  # "auto": cuda if available, else cpu; or any torch device string
    dtype: str = "float32"  # compute dtype: "float32", or "bfloat16" (autocast; the weights stay as they are)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}")
        if not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup must be in [0, steps={self.steps}], got {self.warmup}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and 0 <= min_lr_ratio <= 1")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.checkpoint_every < 0 or self.log_every < 1:
            raise ValueError("checkpoint_every must be >= 0 and log_every >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r} (float16 needs loss scaling)")


@dataclass
class History:
    """Per step, from step 0 (restored from the checkpoint on resume)."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # learning rate of each update
    grad_norms: list[float] = field(default_factory=list)  # global gradient norm before clipping
    ema: dict[str, torch.Tensor] | None = None  # EMA of the trainable weights (float32), when enabled


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: the current CUDA device if there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for the update of (0-based) ``step``: linear warm-up, then a half cosine."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def as_module(models: nn.Module | Iterable[nn.Module | nn.Parameter]) -> nn.Module:
    """One module holding everything to train: a module as is; several modules (and loose parameters) in a list."""
    if isinstance(models, nn.Module):
        return models
    items = list(models)
    params = [p for p in items if isinstance(p, nn.Parameter)]
    modules = [m for m in items if isinstance(m, nn.Module)]
    if not items or len(params) + len(modules) != len(items):
        raise ValueError("train() takes a module, or a non-empty list of modules and/or nn.Parameters")
    if params:
        modules.append(nn.ParameterList(params))
    return modules[0] if len(modules) == 1 else nn.ModuleList(modules)


def trainable_state(root: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (requires_grad) and the persistent buffers: what a checkpoint must restore."""
    keep = {n for n, p in root.named_parameters() if p.requires_grad} | {n for n, _ in root.named_buffers()}
    return {k: v for k, v in root.state_dict().items() if k in keep}


# ---- checkpoints ----------------------------------------------------------------------------------------------------


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by ``train`` (never unpickled: ``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"step", "model", "optimizer", "scheduler", "rng", "history"} - set(state)
    if missing:
        raise ValueError(f"{path} is not a training checkpoint (missing {sorted(missing)})")
    return state


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a step may draw from: the loss generator, torch (CPU and CUDA), Python and NumPy."""
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    state = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": (has_gauss, cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], *np_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int, generator: torch.Generator) -> None:
    generator.manual_seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


# ---- the loop -------------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything that changes during training and goes into the checkpoint."""

    root: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    history: History
    step: int = 0

    def state(self, cfg: TrainConfig) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": trainable_state(self.root),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.generator),
            "history": vars(self.history),  # not dataclasses.asdict: that deep-copies the EMA tensors
            "config": dataclasses.asdict(cfg),
        }

    def restore(self, state: dict[str, Any], cfg: TrainConfig) -> None:
        expected = trainable_state(self.root)
        if set(state["model"]) != set(expected):
            diff = sorted(set(state["model"]) ^ set(expected))[:8]
            raise ValueError(f"checkpoint does not match the trainable weights (differing keys: {diff})")
        self.root.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.generator)
        self.history = History(**state["history"])
        if self.history.ema is not None:
            self.history.ema = {k: v.to(_device_of(self.root)) for k, v in self.history.ema.items()}
        self.step = state["step"]
        if state.get("config") != dataclasses.asdict(cfg):
            logger.warning("resuming with a different TrainConfig than the checkpoint's: %s", state.get("config"))


def _device_of(root: nn.Module) -> torch.device:
    return next(root.parameters()).device


def _start(root: nn.Module, cfg: TrainConfig, device: torch.device) -> _Run:
    params = [p for p in root.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        return lr_factor(step, cfg)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator(device=device)
    _seed_everything(cfg.seed, generator)
    history = History()
    if cfg.ema_decay is not None:
        history.ema = {n: p.detach().float().clone() for n, p in root.named_parameters() if p.requires_grad}
    return _Run(root, optimizer, scheduler, generator, history)


def _update(run: _Run, loss_fn: LossFn, cfg: TrainConfig, autocast: contextlib.AbstractContextManager) -> None:
    """One optimiser step; appends loss, lr and gradient norm to the history."""
    with autocast:
        loss = loss_fn(run.step, run.generator)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at step {run.step}; lower the lr or check the data")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip is not None else math.inf)
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    if run.history.ema is not None:
        for name, p in run.root.named_parameters():
            if p.requires_grad:
                run.history.ema[name].lerp_(p.detach().float(), 1 - cfg.ema_decay)
    run.history.losses.append(value)
    run.history.lrs.append(lr)
    run.history.grad_norms.append(float(norm))
    run.step += 1


def train(
    models: nn.Module | Iterable[nn.Module | nn.Parameter],
    loss_fn: LossFn,
    cfg: TrainConfig,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
    on_step: Callable[[int, History], None] | None = None,
) -> History:
    """Train ``models`` (moved to ``cfg.device``, put in train mode) by minimising ``loss_fn(step, generator)``.

    Resumes from ``checkpoint_path`` when it exists; saves there every ``cfg.checkpoint_every`` steps and at the end.
    ``on_step(step, history)`` runs after each update (and its checkpoint), with the number of steps done: where a
    caller writes what it derives from the weights (a LoRA file) or samples. It must not draw from the global RNGs,
    or a resumed run differs. Returns the history of the whole run (earlier runs included when resumed).
    """
    device = resolve_device(cfg.device)
    root = as_module(models).to(device).train()
    run = _start(root, cfg, device)
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        run.restore(load_checkpoint(checkpoint_path), cfg)
        logger.info("resumed from %s at step %d", checkpoint_path, run.step)
    if run.step > cfg.steps:
        raise ValueError(f"the checkpoint is at step {run.step}, beyond cfg.steps={cfg.steps}")
    dtype = DTYPES[cfg.dtype]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    saved = run.step
    with tqdm(total=cfg.steps, initial=run.step, disable=not progress, desc="train") as bar:
        while run.step < cfg.steps:
            _update(run, loss_fn, cfg, autocast)
            bar.update(1)
            if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                _log(run, cfg, bar)
            if checkpoint_path is not None and cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0:
                save_checkpoint(run.state(cfg), checkpoint_path)
                saved = run.step
            if on_step is not None:
                on_step(run.step, run.history)
    if checkpoint_path is not None and saved != run.step:
        save_checkpoint(run.state(cfg), checkpoint_path)
    return run.history


def _log(run: _Run, cfg: TrainConfig, bar: tqdm) -> None:
    recent = run.history.losses[-cfg.log_every :]
    running = sum(recent) / len(recent)
    lr = run.history.lrs[-1]
    bar.set_postfix(loss=f"{running:.4g}", lr=f"{lr:.3g}")
    logger.info("step %d/%d loss %.5g lr %.3g", run.step, cfg.steps, running, lr)
