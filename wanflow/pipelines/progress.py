"""Progress reporting for the pipeline stages (text, denoise, decode); the base class reports nothing. The denoising
loop reports through step hooks (``DenoiseProgress``, ``Callback``). A pipeline call without ``progress=`` gets
``default_progress()``: bars in a terminal, silence in logs, pipes and tests."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ClassVar

import torch

from wanflow.sampling.hooks import Step, StepHook


class Progress:
    """Silent reporter; subclasses show bars, stream events to a server, etc."""

    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, **info: object) -> None:
        pass

    def end(self, stage: str) -> None:
        pass

    def note(self, text: str) -> None:
        """A line worth showing (the extended prompt)."""


class TqdmProgress(Progress):
    """One tqdm bar with ETA per stage; the denoise bar shows which expert is active."""

    LABELS: ClassVar[dict[str, str]] = {"text": "text encoding", "denoise": "denoising", "decode": "decoding"}
    UNITS: ClassVar[dict[str, str]] = {"denoise": "step", "videos": "video"}

    def __init__(self, file=None, **tqdm_options: object):
        """``tqdm_options``: more of tqdm's arguments for every bar (diffusers' ``set_progress_bar_config``), over
        the ones chosen here."""
        self.file = file or sys.stderr
        self.options = tqdm_options
        self.bars: dict[str, object] = {}

    def start(self, stage: str, total: int) -> None:
        from tqdm import tqdm

        options = {
            "desc": self.LABELS.get(stage, stage),
            "leave": True,
            "dynamic_ncols": True,
            "unit": self.UNITS.get(stage, "it"),
            **self.options,
        }
        self.bars[stage] = tqdm(total=total, file=self.file, **options)

    def advance(self, stage: str, **info: object) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            return
        if info:
            bar.set_postfix(info, refresh=False)
        bar.update(1)

    def end(self, stage: str) -> None:
        bar = self.bars.pop(stage, None)
        if bar is not None:
            bar.close()

    def note(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=self.file)


_QUIET: ContextVar[bool] = ContextVar("wanflow_quiet_progress", default=False)


def default_progress(config: dict[str, object] | None = None) -> Progress:
    """tqdm bars on stderr when it is a terminal (someone is watching), else nothing (read when called, so a
    redirected stderr counts); nothing inside ``quiet_calls``. ``config``: diffusers' ``set_progress_bar_config``
    keywords, tqdm's: ``disable=True`` silences, other keywords draw bars with them wherever stderr goes (as
    diffusers does)."""
    if _QUIET.get():
        return Progress()
    if config:
        options = dict(config)
        if options.pop("disable", False):
            return Progress()
        return TqdmProgress(options.pop("file", None), **options)
    isatty = getattr(sys.stderr, "isatty", None)
    return TqdmProgress(sys.stderr) if isatty is not None and isatty() else Progress()


@contextmanager
def quiet_calls() -> Iterator[None]:
    """Pipeline calls in this block draw no bars by default: an outer bar reports them (``wanflow evaluate``)."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


class DenoiseProgress(StepHook):
    """The loop's steps as the "denoise" stage of a ``Progress``, with the active expert."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def begin(self, steps: Sequence[Step]) -> None:
        self.progress.start("denoise", len(steps))

    def after(self, step: Step, latents: torch.Tensor) -> None:
        self.progress.advance("denoise", expert=step.expert)

    def end(self) -> None:
        self.progress.end("denoise")


class Callback(StepHook):
    """Calls ``fn(step)`` after every step; raising from it stops the run (the server's cancel)."""

    def __init__(self, fn: Callable[[Step], None]):
        self.fn = fn

    def after(self, step: Step, latents: torch.Tensor) -> None:
        self.fn(step)
