"""An offline umT5-compatible tokenizer: a tiny sentencepiece unigram model wrapped as transformers' T5 tokenizer.

Same id layout as ``google/umt5-xxl``: pad 0, eos 1, unk 2, no bos; ``</s>`` is appended to every sequence.
"""

from __future__ import annotations

import os

from transformers import PreTrainedTokenizerBase

from wanflow.training.tokenizer import build_tokenizer

# Simple English prompts of the kind the tiny pipelines are run with.
CORPUS = (
    "a red circle moving right on a black background",
    "a blue square moving left on a white background",
    "a green triangle spinning slowly in the center",
    "two cats fighting on a bright stage under a spotlight",
    "a white cat wearing sunglasses sits on a surfboard at the beach",
    "the camera pans slowly over a quiet city at night",
    "a small yellow ball bouncing up and down on the floor",
    "waves rolling onto a sandy beach at sunset, with clouds in the sky",
    "a purple star rotating quickly against a dark blue sky",
    "an orange fish swimming through clear water near the rocks",
    "a person walking a brown dog along a green park path in the morning",
    "snow falling gently on a wooden house in the mountains",
    "a vintage car driving down an empty desert road, dust in the air",
    "close up of a hand pouring hot coffee into a cup, steam rising",
    "a pink balloon floating higher and higher into the sky",
    "old robots playing jazz music in a smoky club",
)
VOCAB_SIZE = 120


def build_tiny_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Train on ``CORPUS``, save into ``path`` (a tokenizer folder) and reload it with ``AutoTokenizer``."""
    return build_tokenizer(CORPUS, path, vocab_size=VOCAB_SIZE)
