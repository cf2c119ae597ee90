"""Building a umT5-style tokenizer from a text corpus (for training a small text encoder from scratch).

A sentencepiece unigram model with the id layout of ``google/umt5-xxl`` (pad 0, eos 1, unk 2, no bos; ``</s>`` is
appended to every sequence), wrapped as transformers' ``T5Tokenizer`` and saved with ``save_pretrained``, so that
``AutoTokenizer.from_pretrained(path)`` and ``TextEncoder`` use it like the real one. Training is deterministic:
one thread and a fixed seed give the same vocabulary for the same corpus.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5Tokenizer

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def train_pieces(
    corpus: list[str], vocab_size: int, seed: int = 0, model_type: str = "unigram"
) -> list[tuple[str, float]]:
    """``(piece, log-probability score)`` for every id of a sentencepiece model (``model_type``: "unigram", "word",
    "bpe" or "char") trained on ``corpus``.

    ``vocab_size`` is an upper bound: a small corpus yields fewer pieces (``hard_vocab_limit=False``).
    """
    spm.set_random_generator_seed(seed)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=proto,
        model_type=model_type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def build_tokenizer(
    corpus: Iterable[str],
    path: str | os.PathLike,
    vocab_size: int = 8000,
    seed: int = 0,
    model_type: str = "unigram",
) -> PreTrainedTokenizerBase:
    """Train on ``corpus``, save into the folder ``path`` and return it reloaded with ``AutoTokenizer``.

    ``model_type="word"`` gives one piece per corpus word (a closed vocabulary, as the built-in models' prompts are);
    on a small corpus the default unigram model falls back to near-character pieces, which a tiny text encoder must
    then learn to compose into words."""
    corpus = [line for line in corpus if line.strip()]
    if not corpus:
        raise ValueError("build_tokenizer needs a corpus with at least one non-empty line")
    if vocab_size < 4:
        raise ValueError(f"vocab_size must leave room beyond pad/eos/unk, got {vocab_size}")
    tokenizer = T5Tokenizer(vocab=train_pieces(corpus, vocab_size, seed, model_type), extra_ids=0)
    tokenizer.save_pretrained(Path(path))
    return AutoTokenizer.from_pretrained(Path(path))
