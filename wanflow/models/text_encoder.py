"""The umT5 text encoder (transformers' ``UMT5EncoderModel``) and its tokenizer, as the DiT consumes them. No IO.

A prompt is cleaned, tokenized to exactly ``text_len`` ids (EOS appended, pad id 0), encoded with the padding keys
masked, and trimmed to its true length (tokens + EOS). The DiT pads the trimmed context back with zeros
(``pad_context``), so the encoder states of padding positions are never used.
"""

from __future__ import annotations

import html
import re

import ftfy
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

from wanflow.checkpoints.maps.t5 import t5_config_to_hf
from wanflow.configs import T5Config

_WHITESPACE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """The reference's 'whitespace' cleaning: fix mojibake, unescape HTML twice, collapse whitespace runs."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


def build_umt5(cfg: T5Config) -> UMT5EncoderModel:
    """The encoder without weights (random init; under ``torch.device('meta')`` no memory at all)."""
    return UMT5EncoderModel(t5_config_to_hf(cfg)).eval()


def pad_context(contexts: list[torch.Tensor], text_len: int) -> torch.Tensor:
    """Trimmed contexts ``[L_i, dim]`` -> ``[B, text_len, dim]``, zero rows after each prompt's tokens."""
    if not contexts:
        raise ValueError("pad_context needs at least one context")
    too_long = [c.shape[0] for c in contexts if c.shape[0] > text_len]
    if too_long:
        raise ValueError(f"contexts of {too_long} tokens do not fit text_len={text_len}")
    # Out of place, so that gradients reach the encoder when it is trained.
    return torch.stack([F.pad(c, (0, 0, 0, text_len - c.shape[0])) for c in contexts])


class TextEncoder(nn.Module):
    """Tokenizer + ``UMT5EncoderModel``: prompts -> one context ``[L_i, dim]`` per prompt.

    A module so that device moves and offload policies treat it like the other models; the tokenizer is data.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, model: UMT5EncoderModel, text_len: int = 512) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        self.text_len = text_len

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts (cleaned here) -> ``(ids, mask)``, both ``[B, text_len]`` int64 on the model's device."""
        if isinstance(prompts, str):
            raise ValueError("encode takes a list of prompts, not a single string")
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """One ``[L_i, dim]`` tensor per prompt (L_i = tokens + EOS), in the dtype of the model's weights."""
        ids, mask = self.tokenize(prompts)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, text_len, dim)
        lengths = mask.sum(dim=1).tolist()
        return [h[:n] for h, n in zip(hidden, lengths, strict=True)]

    def forward(self, prompts: list[str]) -> list[torch.Tensor]:
        return self.encode(prompts)
