"""The prompt-extension stage of a generation: before the text encoder, each distinct prompt of the request (one per
window of a longer video) is rewritten by the pipeline's extender, once, on rank 0, and the result is broadcast, so
every rank encodes the same text. A failed extension keeps the original prompt (``prompts.extend.extend_prompt``)."""

from __future__ import annotations

import dataclasses
import logging
import time

from wanflow.pipelines.progress import Progress
from wanflow.pipelines.request import Request
from wanflow.prompts.extend import PromptExtender, extend_prompt
from wanflow.runtime.distributed import broadcast_object, is_rank0

log = logging.getLogger(__name__)


def extend_prompts(
    request: Request, extender: PromptExtender | None, progress: Progress, timings: dict[str, float]
) -> Request:
    """``request`` with its prompt extended when it asks (``request.extension``), else as it is; ``progress`` shows
    the extended prompt, ``timings`` gets the seconds spent ("extend")."""
    ext = request.extension
    if ext is None:
        return request
    if extender is None:
        raise ValueError(
            "extend_prompt needs a prompt extender: pipe.set_prompt_extender(make_extender('local', MODEL)) "
            "(CLI: --use_prompt_extend --prompt_extend_model MODEL)"
        )
    t0 = time.perf_counter()
    prompts = list(request.windows.prompts) if request.windows is not None else [request.prompt]
    distinct = list(dict.fromkeys(prompts))
    answers = None
    if is_rank0():
        answers = [extend_prompt(extender, p, request.image, ext.lang, ext.seed) for p in distinct]
    answers = dict(zip(distinct, broadcast_object(answers), strict=True))
    for text, ok in answers.values():
        if ok:
            log.info("extended prompt (%s): %s", extender.name, text)
            progress.note(f"extended prompt ({extender.name}): {text}")
    extended = [answers[p][0] for p in prompts]
    windows = request.windows
    if windows is not None:
        windows = dataclasses.replace(windows, prompts=tuple(extended))
    timings["extend"] = time.perf_counter() - t0
    ok = all(ok for _, ok in answers.values())
    done = dataclasses.replace(ext, original=request.prompt, extender=extender.name, extended=ok)
    prompt = " | ".join(extended) if windows is not None else extended[0]
    return dataclasses.replace(request, prompt=prompt, windows=windows, extension=done)


__all__ = ["extend_prompts"]
