"""The prompt-extension stage of a generation: before the text encoder, the request's prompt is rewritten by the
pipeline's extender, once, on rank 0, and the result is broadcast, so every rank encodes the same text. A failed
extension keeps the original prompt (``prompts.extend.extend_prompt``)."""

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
    answer = None
    if is_rank0():
        answer = extend_prompt(extender, request.prompt, request.image, ext.lang, ext.seed)
    text, ok = broadcast_object(answer)
    if ok:
        log.info("extended prompt (%s): %s", extender.name, text)
        progress.note(f"extended prompt ({extender.name}): {text}")
    timings["extend"] = time.perf_counter() - t0
    done = dataclasses.replace(ext, original=request.prompt, extender=extender.name, extended=ok)
    return dataclasses.replace(request, prompt=text, extension=done)


__all__ = ["extend_prompts"]
