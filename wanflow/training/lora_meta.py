"""What a trained LoRA file says about itself in its safetensors header: the run's settings, the task, and the trigger
words of its captions, under keys kohya / musubi-tuner readers also know (``ss_network_dim`` / ``ss_network_alpha``).
"""

from __future__ import annotations

import json
import re
from collections import Counter

from wanflow.tasks import Task
from wanflow.training.lora_settings import LoraSettings

# Words too common to be a trigger, whatever share of the captions holds them.
STOP_WORDS = frozenset(
    "a an the of in on at to and or with from by for is are its it this that as into onto over under moving".split()
)


WORD_CHAR = r"[\w'-]"  # what a caption's words are made of (``caption_words``, ``lora_preserve.swap_word``)


def caption_words(caption: str) -> list[str]:
    return re.findall(WORD_CHAR + "+", caption.lower())


def trigger_words(captions: list[str], share: float = 0.5) -> list[str]:
    """Words in at least ``share`` of the captions (each counted once per caption), stop words left out, most
    frequent first: the words the captions teach, such as a new name repeated in every caption."""
    counts = Counter(word for caption in captions for word in dict.fromkeys(caption_words(caption)))  # ties: in order
    need = max(1, share * len(captions))
    common = [w for w, n in counts.most_common() if n >= need and w not in STOP_WORDS and not w.isdigit()]
    return common


def lora_metadata(settings: LoraSettings, task: Task, captions: list[str]) -> dict[str, str]:
    """String metadata of every file a run writes (the caller adds the expert and the step)."""
    counts = Counter(word for caption in captions for word in caption_words(caption))
    return {
        "wanflow_task": task.name,
        "wanflow_settings": json.dumps(settings.record(), sort_keys=True),
        "wanflow_trigger_words": ", ".join(trigger_words(captions)),
        "wanflow_caption_words": json.dumps(dict(counts.most_common(200))),
        "wanflow_clips": str(len(captions)),
        "ss_network_dim": str(settings.rank),
        "ss_network_alpha": str(settings.lora_alpha),
        "ss_base_model_version": f"wan2.2_{task.name}",
    }
