"""Differential output preservation (``train-lora --preserve_word TRIGGER=CLASS``): the prior samples are the training
clips themselves under their captions with the trigger word swapped for a class word ("a zorb on a beach" -> "a dog
on a beach"), trained towards the frozen base model's prediction (``prior_target`` "base"). What the LoRA learns is
then tied to the trigger: on the same clips and noise, the class word must keep giving what the base gives, so no
folder of prior clips is needed. (ai-toolkit's option of that name works the same way.)
"""

from __future__ import annotations

import re
from pathlib import Path

from wanflow.training.lora_cache import Encoders, text_states
from wanflow.training.lora_data import DataError, Item
from wanflow.training.lora_meta import WORD_CHAR


def swap_word(caption: str, trigger: str, replacement: str) -> str | None:
    """``caption`` with every whole-word ``trigger`` (any case) replaced, or None if it has none."""
    pattern = rf"(?<!{WORD_CHAR}){re.escape(trigger)}(?!{WORD_CHAR})"
    swapped, count = re.subn(pattern, replacement, caption, flags=re.IGNORECASE)
    return swapped if count else None


def swapped_samples(folder: Path, items: list[Item], groups: list[list], words: tuple[str, str], encoders: Encoders):
    """The samples of ``groups`` (one list of windows per item) whose caption holds the trigger, each with the text
    states of its swapped caption (the latents are the same tensors); an error if no caption holds it."""
    trigger, replacement = words
    out = []
    for item, samples in zip(items, groups, strict=True):
        caption = swap_word(item.caption, trigger, replacement)
        if caption is not None:
            context = text_states(folder, caption, encoders).to(samples[0].context.device)
            out += [s._replace(context=context) for s in samples]
    if not out:
        raise DataError(
            f"{folder}: no caption holds the word {trigger!r} that --preserve_word swaps for {replacement!r}"
        )
    return out
