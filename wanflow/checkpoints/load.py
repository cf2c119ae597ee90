"""Build each component on the meta device and load its weights strictly, from either layout.

The DiT architecture comes from its ``config.json``; the T5 and VAE dimensions are inferred from tensor shapes, so
smaller models stored in the same layout load through the same code as the published ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from wanflow.checkpoints.io import CheckpointError, load_strict, load_umt5_strict, read_folder, read_weights
from wanflow.checkpoints.layouts import Layout, detect_layout
from wanflow.checkpoints.load_file import load_dit_file, load_t5_file, load_vae_file, stored_state
from wanflow.checkpoints.maps.dit import DIT_KEYMAP, TEXT_LEN_KEY, dit_config_from_diffusers, strip_prefixes
from wanflow.checkpoints.tokenizer import load_tokenizer
from wanflow.configs import LOW, DiTConfig, diffusers_components
from wanflow.models.dit import FP32_MODULES, WanDiT
from wanflow.runtime import ggml
from wanflow.runtime.precision import cast_model
from wanflow.runtime.quantized import QuantTensor

if TYPE_CHECKING:  # the VAE and text-encoder stacks are imported when first loaded (transformers is slow to import)
    from wanflow.models.text_encoder import TextEncoder
    from wanflow.models.vae import WanVAE


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"config not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object of config fields, got {type(data).__name__}")
    return data


def dit_config(folder: str | os.PathLike, kind: str) -> DiTConfig:
    data = read_json(Path(folder) / "config.json")
    try:
        return DiTConfig.from_json(data) if kind == "official" else dit_config_from_diffusers(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}/config.json: {e}") from None


def load_dit(folder: str | os.PathLike, kind: str = "official", dtype: torch.dtype | None = torch.float32) -> WanDiT:
    """One DiT (an expert or the dense TI2V model) from its folder; ``dtype=None`` keeps the stored dtype."""
    cfg = dit_config(folder, kind)
    state = read_folder(folder)
    state = strip_prefixes(state) if kind == "official" else _convert(DIT_KEYMAP.reverse, state, folder)
    with torch.device("meta"):
        model = WanDiT(cfg)
    load_strict(model, state, f"DiT in {folder}")
    if dtype is not None:
        cast_model(model, dtype, keep_fp32=FP32_MODULES)
    return model.eval().requires_grad_(False)


def load_vae(path: str | os.PathLike, kind: str = "official") -> WanVAE:
    """The VAE from an official weights file or a diffusers ``vae/`` folder, in float32 as the reference."""
    from wanflow.checkpoints.maps.vae import vae_config_from_diffusers, vae_config_from_state_dict, vae_keymap
    from wanflow.models.vae import WanVAE

    path = Path(path)
    if kind == "official":
        state = read_weights(path)
        cfg = _infer(vae_config_from_state_dict, state, path)
    else:
        cfg = _infer(vae_config_from_diffusers, read_json(path / "config.json"), path)
        state = _convert(vae_keymap(cfg).reverse, read_folder(path), path)
    with torch.device("meta"):
        model = WanVAE(cfg)
    load_strict(model, state, f"VAE in {path}")
    return cast_model(model, torch.float32).eval().requires_grad_(False)


def vae_from_module(module: nn.Module) -> WanVAE:
    """A VAE given as a module: wanflow's ``WanVAE`` as it is, or diffusers' ``AutoencoderKLWan`` (its config and
    weights, converted by the diffusers key map: exact), in the module's dtype."""
    from wanflow.checkpoints.maps.vae import vae_config_from_diffusers, vae_keymap
    from wanflow.models.vae import WanVAE

    if isinstance(module, WanVAE):
        return module.eval().requires_grad_(False)
    config, source = _module_config(module, "vae", "z_dim", "diffusers' AutoencoderKLWan or wanflow's WanVAE")
    cfg = _infer(vae_config_from_diffusers, config, source)
    state = _convert(vae_keymap(cfg).reverse, module.state_dict(), source)
    dtype = next(module.parameters()).dtype
    with torch.device("meta"):
        model = WanVAE(cfg)
    load_strict(model, state, source)
    return cast_model(model, dtype).eval().requires_grad_(False)


def dit_from_module(module: nn.Module, name: str, text_len: int | None = None) -> WanDiT:
    """A DiT given as a module: wanflow's ``WanDiT`` as it is, or diffusers' ``WanTransformer3DModel`` (its config
    and weights, converted by the diffusers key map: exact), GGUF-quantised layers included (diffusers'
    ``from_single_file(..., quantization_config=GGUFQuantizationConfig(...))``), which stay quantised as wanflow
    keeps a GGUF file's. ``name``: what the caller called it (``transformer``); ``text_len``: the context length
    when the module's config does not state it (diffusers' does not: the checkpoint's is used)."""
    if isinstance(module, WanDiT):
        return module.eval().requires_grad_(False)
    expected = "diffusers' WanTransformer3DModel or wanflow's WanDiT"
    config, source = _module_config(module, name, "num_attention_heads", expected)
    if text_len is not None and TEXT_LEN_KEY not in config:
        config[TEXT_LEN_KEY] = text_len
    cfg = _infer(dit_config_from_diffusers, config, source)
    state = {key: _module_tensor(value, key, source) for key, value in module.state_dict().items()}
    state = _convert(DIT_KEYMAP.reverse, state, source)
    with torch.device("meta"):
        model = WanDiT(cfg)
    load_strict(model, stored_state(model, state, torch.float32), source)
    cast_model(model, torch.float32, keep_fp32=FP32_MODULES)  # (the pipeline casts to its own dtype next)
    return model.eval().requires_grad_(False)


def _module_config(module: nn.Module, name: str, key: str, expected: str) -> tuple[dict, str]:
    """The config of a diffusers module given as ``name`` (one whose config holds ``key``), and how errors name it."""
    config = getattr(module, "config", None)
    if not isinstance(module, nn.Module) or config is None or key not in config:
        raise TypeError(f"{name} must be {expected}, got {type(module).__name__}")
    return dict(config), f"the {type(module).__name__} given as {name}"


def _module_tensor(value: torch.Tensor, key: str, source: str) -> torch.Tensor | QuantTensor:
    """A tensor of a diffusers module's state dict; a GGUF-quantised one (diffusers' ``GGUFParameter``: uint8 rows of
    blocks with a ``quant_type``) as the ``QuantTensor`` wanflow reads from a GGUF file."""
    quant_type = getattr(value, "quant_type", None)
    if quant_type is None:
        return value.detach()
    qtype = getattr(quant_type, "name", None) or _ggml_name(int(quant_type))
    if qtype not in ggml.FORMATS:
        raise CheckpointError(f"{source}: {key} is stored as {qtype}, a type wanflow does not read")
    fmt = ggml.FORMATS[qtype]
    data = value.detach().as_subclass(torch.Tensor).view(torch.uint8)
    shape = (*data.shape[:-1], data.shape[-1] // fmt.size * fmt.block)
    return QuantTensor(tuple(shape), qtype, data)


def _ggml_name(number: int) -> str:
    import gguf

    return gguf.GGMLQuantizationType(number).name


def load_text_encoder(
    path: str | os.PathLike,
    tokenizer: str | os.PathLike,
    kind: str = "official",
    dtype: torch.dtype | None = None,
    text_len: int | None = None,
) -> TextEncoder:
    """umT5 encoder and tokenizer; ``dtype=None`` keeps the stored dtype (bf16 for the published file). Prompts are
    truncated to ``text_len`` tokens (default: the config's; give the DiT's, which reads that many)."""
    from wanflow.checkpoints.maps.t5 import T5_KEYMAP, t5_config_from_state_dict
    from wanflow.models.text_encoder import TextEncoder, build_umt5

    path = Path(path)
    if kind == "official":
        official = read_weights(path)
        cfg = _infer(t5_config_from_state_dict, official, path)
        state = T5_KEYMAP.forward(official)
    else:
        cfg = _hf_t5_config(path)
        state = read_folder(path, stem="model")
    with torch.device("meta"):
        model = build_umt5(cfg)
    load_umt5_strict(model, state, f"text encoder in {path}")
    if dtype is not None:
        model.to(dtype)
    return TextEncoder(load_tokenizer(tokenizer), model.eval().requires_grad_(False), text_len=text_len or cfg.text_len)


def load_experts(
    layout: Layout, dtype: torch.dtype | None = torch.float32, given: Mapping[str, WanDiT] | None = None
) -> dict[str, WanDiT]:
    """All DiTs of a checkpoint: ``{HIGH: ..., LOW: ...}`` or ``{DENSE: ...}`` (``configs``' expert names); those
    ``given`` (by expert name) are used instead of reading theirs."""
    given = given or {}
    return {
        name: given[name] if name in given else load_dit(folder, layout.kind, dtype)
        for name, folder in layout.experts.items()
    }


def _infer(fn, data, path):
    try:
        return fn(data)
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise CheckpointError(f"cannot infer the architecture of {path}: {e}") from None


def _hf_t5_config(path: Path):
    """The text encoder's ``config.json`` (diffusers layout), read by transformers and checked; errors name it."""
    from transformers import UMT5Config

    from wanflow.checkpoints.maps.t5 import t5_config_from_hf

    config = path / "config.json"
    read_json(config)  # present, and a JSON object
    try:
        return t5_config_from_hf(UMT5Config.from_pretrained(path))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{config}: {e}") from None


def _convert(fn, state, path):
    try:
        return fn(state)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


@dataclass
class Components:
    """Everything a pipeline needs from one checkpoint folder."""

    layout: Layout
    experts: dict[str, WanDiT]  # {HIGH, LOW} for A14B, {DENSE} for TI2V-5B
    vae: WanVAE
    text_encoder: TextEncoder


def load_components(
    ckpt: str | os.PathLike | Layout,
    dit_dtype: torch.dtype | None = torch.float32,
    t5_dtype: torch.dtype | None = None,
    vae: WanVAE | None = None,
    transformers: dict[str, nn.Module] | None = None,
    text_encoder: nn.Module | None = None,
    tokenizer: object | None = None,
) -> Components:
    """Load the DiT(s), VAE and text encoder of a checkpoint folder in any layout (or of its ``Layout``); ``vae``: one
    to use instead of the checkpoint's (whose VAE is then not read); ``transformers``: DiT modules by diffusers'
    component name (``transformer``, ``transformer_2``) to use instead of those experts (``dit_from_module``);
    ``text_encoder`` / ``tokenizer``: transformers' ``UMT5EncoderModel`` and tokenizer to use as they are."""
    layout = ckpt if isinstance(ckpt, Layout) else detect_layout(ckpt)
    if layout.kind == "files":
        if vae is not None or transformers or text_encoder is not None or tokenizer is not None:
            raise ValueError("modules replace a checkpoint folder's components; with single files, give the files")
        return load_file_components(layout, dit_dtype, t5_dtype)
    experts = load_experts(layout, dit_dtype, given_experts(layout, transformers or {}))
    text_len = min(model.cfg.text_len for model in experts.values())
    return Components(
        layout=layout,
        experts=experts,
        vae=vae if vae is not None else load_vae(layout.require("vae"), layout.kind),
        text_encoder=_text_encoder(layout, t5_dtype, text_len, text_encoder, tokenizer, experts),
    )


def _text_encoder(layout: Layout, t5_dtype, text_len: int, model, tokenizer, experts) -> TextEncoder:
    """The checkpoint's umT5 encoder and tokenizer, or the modules given in their place (used as they are)."""
    from wanflow.models.text_encoder import TextEncoder

    if model is None:
        encoder = load_text_encoder(
            layout.require("text_encoder"), layout.require("tokenizer"), layout.kind, t5_dtype, text_len
        )
        return encoder if tokenizer is None else TextEncoder(tokenizer, encoder.model, text_len)
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not type(model).__name__.endswith("T5EncoderModel") or config is None:
        raise TypeError(f"text_encoder must be transformers' UMT5EncoderModel, got {type(model).__name__}")
    dim = next(iter(experts.values())).cfg.text_dim
    if config.d_model != dim:
        raise CheckpointError(f"the text_encoder given is {config.d_model} wide; this checkpoint's DiT reads {dim}")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(layout.require("tokenizer"))
    return TextEncoder(tokenizer, model.eval().requires_grad_(False), text_len)


def given_experts(layout: Layout, transformers: dict[str, nn.Module]) -> dict[str, WanDiT]:
    """DiT modules given by diffusers' component name, converted (``dit_from_module``) and checked against the
    experts of the checkpoint they replace (the same model type and sizes)."""
    components = diffusers_components(layout.is_moe)
    unknown = sorted(set(transformers) - set(components))
    if unknown:
        raise ValueError(f"this checkpoint has no {unknown}: its DiT components are {list(components)}")
    wanted = expert_configs(layout)
    experts = {}
    for component, module in transformers.items():
        name = components[component]
        model = dit_from_module(module, component, wanted[name].text_len)
        if model.cfg != wanted[name]:
            raise CheckpointError(
                f"the {component} given is {_describe(model.cfg)}, but the checkpoint's {name}-noise expert it "
                f"replaces is {_describe(wanted[name])}"
            )
        experts[name] = model
    return experts


def _describe(cfg: DiTConfig) -> str:
    return f"a {cfg.model_type} DiT of dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads"


def load_file_components(layout: Layout, dit_dtype: torch.dtype | None, t5_dtype: torch.dtype | None) -> Components:
    """Components given one by one: each a single file, or a folder of the checkpoint they complete."""
    experts = {name: _load_expert(path, name, dit_dtype) for name, path in layout.experts.items()}
    text_len = min(model.cfg.text_len for model in experts.values())
    vae, t5, tokenizer = (layout.require(c) for c in ("vae", "text_encoder", "tokenizer"))
    return Components(
        layout=layout,
        experts=experts,
        vae=load_vae(vae, "diffusers") if vae.is_dir() else load_vae_file(vae),  # a folder is diffusers' vae/
        text_encoder=(
            load_text_encoder(t5, tokenizer, "diffusers", t5_dtype, text_len)
            if t5.is_dir()
            else load_t5_file(t5, tokenizer, text_len, dtype=t5_dtype)
        ),
    )


def _load_expert(path: Path, name: str, dtype: torch.dtype | None) -> WanDiT:
    if path.is_dir():  # an expert folder of the checkpoint the files complete
        return load_dit(path, _folder_kind(path), dtype)
    return load_dit_file(path, "--dit_low" if name == LOW else "--dit", dtype or torch.float32)


def _folder_kind(folder: Path) -> str:
    return "official" if read_json(folder / "config.json").get("_class_name") == "WanModel" else "diffusers"


def expert_configs(layout: Layout) -> dict[str, DiTConfig]:
    """Each expert's architecture, read without its weights (a folder's config.json, a single file's header)."""
    from wanflow.checkpoints.single_file import dit_config_from_file, peek_shapes

    configs = {}
    for name, path in layout.experts.items():
        if layout.kind != "files":
            configs[name] = dit_config(path, layout.kind)
        elif path.is_dir():
            configs[name] = dit_config(path, _folder_kind(path))
        else:
            configs[name] = dit_config_from_file(peek_shapes(path))
    return configs
