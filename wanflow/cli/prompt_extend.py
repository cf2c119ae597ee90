"""The prompt-extension flags of ``wanflow generate`` (the reference's names) and the extender they ask for, loaded
before the video models so that a model that cannot be loaded is a one-line error before minutes of loading."""

from __future__ import annotations

import argparse

from wanflow.prompts.extend import METHODS, make_extender
from wanflow.prompts.system import LANGUAGES

# ``GenerateOptions`` fields, by flag (``cli.generate.OPTION_FLAGS`` takes them in)
EXTEND_FLAGS = {
    "use_prompt_extend": "extend_prompt",
    "prompt_extend_target_lang": "prompt_extend_lang",
    "prompt_extend_seed": "prompt_extend_seed",
}


def add_prompt_extend_arguments(p: argparse.ArgumentParser, flag) -> None:
    """``flag``: ``cli.parsers.add_flag`` (each name also with hyphens)."""
    flag(p, "use_prompt_extend", action="store_true", default=None, help="rewrite the prompt with a language model")
    flag(
        p,
        "prompt_extend_method",
        default="local",
        choices=[*METHODS, "local_qwen"],
        help="local: a chat model run here; dashscope: Alibaba Cloud's API (DASH_API_KEY) (default local)",
    )
    flag(
        p,
        "prompt_extend_model",
        help="a folder or Hugging Face repo id of a chat model (a vision-language one for image tasks); "
        "default: the reference's Qwen2.5 models",
    )
    flag(p, "prompt_extend_target_lang", choices=LANGUAGES, help="language of the extended prompt (default zh)")
    flag(p, "prompt_extend_seed", type=int, help="the extension's sampling seed (default: --base_seed's)")


def cli_extender(args: argparse.Namespace, with_image: bool, is_rank0: bool):
    """The extender ``--use_prompt_extend`` asks for (None without it), loaded on rank 0: a ``ValueError`` when it
    cannot be."""
    if not args.use_prompt_extend:
        if args.prompt_extend_model is not None:
            raise ValueError("--prompt_extend_model is used with --use_prompt_extend: add it, or leave the model out")
        return None
    from wanflow.runtime.distributed import broadcast_object

    extender = make_extender(args.prompt_extend_method, args.prompt_extend_model, with_image)
    error = None
    if is_rank0 and hasattr(extender, "load"):
        try:
            extender.load()
        except ValueError as e:
            error = str(e)
    error = broadcast_object(error)  # every rank stops when rank 0 cannot load it
    if error:
        raise ValueError(error)
    return extender


__all__ = ["EXTEND_FLAGS", "add_prompt_extend_arguments", "cli_extender"]
