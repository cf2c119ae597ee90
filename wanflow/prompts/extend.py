"""Prompt extension: a language model rewrites a terse prompt into the rich description the Wan models were trained
on (the reference's ``--use_prompt_extend``).

An extender is a callable ``(system, prompt, image, seed) -> text``: ``LocalExtender`` runs any chat model that
``transformers`` loads (a vision-language model also sees the image of an image task), ``DashScopeExtender`` calls
Alibaba Cloud's DashScope API with the key in ``DASH_API_KEY``. ``extend_prompt`` picks the system prompt
(``prompts.system``), runs the extender and, on any failure, keeps the original prompt with a warning. Sampling is
seeded, so one seed gives one extension.

torch and transformers are imported when a model is loaded, not with this module.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import urllib.request
from typing import Protocol

from PIL import Image

from wanflow.prompts.system import prompt_kind, system_prompt

log = logging.getLogger(__name__)

METHODS = ("local", "dashscope")  # ``local_qwen``, the reference's name, is taken for ``local``
MAX_NEW_TOKENS = 512  # as the reference
MAX_IMAGE_PIXELS = 512 * 512  # an image is scaled down to this area before a model sees it (as the reference's API)

# The reference's short names for its default models (``local_qwen``); any other name is a folder or a repo id.
MODEL_ALIASES = {
    "Qwen2.5_3B": "Qwen/Qwen2.5-3B-Instruct",
    "Qwen2.5_7B": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen2.5_14B": "Qwen/Qwen2.5-14B-Instruct",
    "QwenVL2.5_3B": "Qwen/Qwen2.5-VL-3B-Instruct",
    "QwenVL2.5_7B": "Qwen/Qwen2.5-VL-7B-Instruct",
}
DEFAULT_LOCAL = ("Qwen2.5_14B", "QwenVL2.5_7B")  # (text, image tasks): the reference's defaults
DEFAULT_DASHSCOPE = ("qwen-plus", "qwen-vl-max")


class PromptExtender(Protocol):
    name: str  # how the metadata names it: "local:Qwen/Qwen2.5-7B-Instruct"

    def __call__(self, system: str, prompt: str, image: Image.Image | None, seed: int) -> str: ...


def extend_prompt(
    extender: PromptExtender, prompt: str, image: Image.Image | None, lang: str, seed: int
) -> tuple[str, bool]:
    """(the extended prompt, True), or (``prompt``, False) with a warning when the extender fails in any way or
    answers nothing."""
    system = system_prompt(prompt_kind(prompt, image is not None), lang)
    try:
        text = clean_answer(extender(system, prompt, image, seed))
        if not text:
            raise ValueError("the model answered nothing")
    except Exception as e:  # whatever went wrong, the video is still made from the user's prompt
        log.warning("prompt extension failed (%s: %s); using the original prompt", type(e).__name__, e)
        return prompt, False
    return text, True


def clean_answer(text: str) -> str:
    """The description alone: no surrounding whitespace or quotes, no leading label ("Prompt:", "Rewritten prompt:")."""
    text = re.sub(r"^\s*(rewritten |extended |enhanced )?prompt\s*[:：]\s*", "", text.strip(), flags=re.IGNORECASE)
    return text.strip().strip("\"'“”「」").strip()


def make_extender(method: str, model: str | None = None, with_image: bool = False, **options) -> PromptExtender:
    """The extender of ``method`` ("local", "local_qwen" or "dashscope") with ``model`` (default: the reference's
    for a text or an image task); ``options`` go to its constructor."""
    method = "local" if method == "local_qwen" else method
    if method == "local":
        return LocalExtender(model or DEFAULT_LOCAL[with_image], **options)
    if method == "dashscope":
        return DashScopeExtender(model or DEFAULT_DASHSCOPE[with_image], **options)
    raise ValueError(f"unknown prompt_extend_method {method!r}; choose one of {list(METHODS)}")


def scaled_image(image: Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    scale = (max_pixels / (image.width * image.height)) ** 0.5
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)


class LocalExtender:
    """A chat model loaded by ``transformers`` from a folder or a Hugging Face repo id: a causal language model with
    its tokenizer, or a vision-language model (image-text-to-text) with its processor. Kept on the CPU between calls
    and moved to ``device`` for each (as the reference), so it does not hold the accelerator's memory while the video
    is made. ``load`` reads it (once); any failure there is a one-line ``ValueError``."""

    def __init__(self, model: str, device: str | None = None, max_new_tokens: int = MAX_NEW_TOKENS, dtype=None):
        self.source = MODEL_ALIASES.get(model, model)
        self.name = f"local:{self.source}"
        self.device, self.max_new_tokens, self.dtype = device, max_new_tokens, dtype
        self.model = self.processor = None
        self.reads_images = False

    def load(self) -> LocalExtender:
        if self.model is not None:
            return self
        try:
            self.model, self.processor, self.reads_images = _load_chat_model(self.source, self.dtype)
        except Exception as e:  # a missing folder, a network error, a config transformers rejects ...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ValueError(
                f"cannot load the prompt extension model {self.source!r}: {first} (--prompt_extend_model takes a "
                "folder or a Hugging Face repo id of a chat model that transformers loads)"
            ) from None
        return self

    def __call__(self, system: str, prompt: str, image: Image.Image | None, seed: int) -> str:
        import torch

        self.load()
        if image is not None and not self.reads_images:
            log.warning("%s reads no images: the prompt is extended from its text alone", self.source)
            image = None
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        inputs = self._inputs(system, prompt, image).to(device)
        self.model.to(device)
        try:
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=True)
        finally:
            self.model.to("cpu")
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0]

    def _inputs(self, system: str, prompt: str, image: Image.Image | None):
        """The chat (system, user) through the model's own chat template, tokenised (with the image's pixels)."""
        if self.reads_images:
            user = [*([{"type": "image"}] if image is not None else []), {"type": "text", "text": prompt}]
            messages = [
                {"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": user},
            ]
        else:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if image is None:
            return self.processor(text=[text], return_tensors="pt")
        return self.processor(text=[text], images=[scaled_image(image)], return_tensors="pt")


def _load_chat_model(source: str, dtype):
    """(model, tokenizer or processor, reads images) of a chat model; refuses one without a chat template."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    config = AutoConfig.from_pretrained(source)
    vision = config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    processor = (AutoProcessor if vision else AutoTokenizer).from_pretrained(source)
    if getattr(processor, "chat_template", None) is None:
        raise ValueError("it has no chat template (a base model, not a chat / instruct one)")
    kind = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = kind.from_pretrained(source, dtype=dtype or "auto", device_map="cpu")
    return model.eval(), processor, vision


class DashScopeExtender:
    """Qwen models through Alibaba Cloud's DashScope API (``DASH_API_KEY``; ``DASH_API_URL`` for another region, e.g.
    https://dashscope-intl.aliyuncs.com/api/v1), as the reference calls them: the messages, ``seed``, the image as a
    data URL scaled to at most 512x512 pixels' area, a few attempts."""

    URL = "https://dashscope.aliyuncs.com/api/v1"
    ATTEMPTS = 4

    def __init__(self, model: str, api_key: str | None = None, url: str | None = None, timeout: float = 60.0):
        self.api_key = api_key or os.environ.get("DASH_API_KEY")
        if not self.api_key:
            raise ValueError("prompt extension with dashscope needs an API key: set DASH_API_KEY (or use local)")
        self.model, self.timeout = model, timeout
        self.url = (url or os.environ.get("DASH_API_URL") or self.URL).rstrip("/")
        self.name = f"dashscope:{model}"

    def __call__(self, system: str, prompt: str, image: Image.Image | None, seed: int) -> str:
        error = None
        for _ in range(self.ATTEMPTS):
            try:
                return self._call(system, prompt, image, seed)
            except (OSError, ValueError, KeyError, IndexError) as e:  # network, HTTP status, an answer without text
                error = e
        raise RuntimeError(f"DashScope failed {self.ATTEMPTS} times: {error}")

    def _call(self, system: str, prompt: str, image: Image.Image | None, seed: int) -> str:
        if image is None:
            service = "text-generation"
            messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        else:
            service = "multimodal-generation"
            user = [{"image": _data_url(scaled_image(image))}, {"text": prompt}]
            messages = [{"role": "system", "content": [{"text": system}]}, {"role": "user", "content": user}]
        body = {"model": self.model, "input": {"messages": messages}, "parameters": {"result_format": "message"}}
        body["parameters"]["seed"] = seed % 2**31  # (the API takes a 31-bit seed)
        request = urllib.request.Request(
            f"{self.url}/services/aigc/{service}/generation",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            answer = json.loads(response.read())
        content = answer["output"]["choices"][0]["message"]["content"]
        return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


__all__ = [
    "METHODS",
    "DashScopeExtender",
    "LocalExtender",
    "PromptExtender",
    "clean_answer",
    "extend_prompt",
    "make_extender",
]
