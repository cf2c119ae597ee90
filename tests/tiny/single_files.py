"""Single files made from tiny official-layout weights, as people download them: safetensors in a float dtype,
ComfyUI's FP8 layouts, and GGUF (types the ``gguf`` package writes, and K-type blocks of fixture bytes)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType, quants
from safetensors.torch import save_file

from wanflow.configs import DiTConfig
from wanflow.runtime import ggml

# A DiT whose linear layers hold whole blocks of 256 weights per row (the K types' super-blocks).
SMALL_T2V = DiTConfig(
    model_type="t2v", in_dim=16, out_dim=16, dim=256, ffn_dim=512, text_dim=32, num_heads=2, num_layers=2, text_len=32
)


def config_metadata(cfg: DiTConfig) -> dict[str, str]:
    """What wanflow reads from a file it cannot infer from shapes (the head count, the text length)."""
    return {"wanflow.config": json.dumps({"num_heads": cfg.num_heads, "text_len": cfg.text_len})}


def block_linear(name: str, tensor: torch.Tensor) -> bool:
    """The weights a quantised file stores quantised: 2-D weights of the blocks (as city96's files do)."""
    return name.startswith("blocks.") and name.endswith(".weight") and tensor.ndim == 2 and "modulation" not in name


def write_safetensors(state: dict, path: Path, cfg: DiTConfig | None = None, dtype=None, prefix: str = "") -> Path:
    out = {prefix + k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in state.items()}
    save_file(out, path, metadata=config_metadata(cfg) if cfg else None)
    return path


def fp8_values(weight: torch.Tensor, fp8: torch.dtype, scaled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ComfyUI's FP8: one scale per layer (the absolute maximum over the format's largest value), or none."""
    scale = weight.abs().max() / torch.finfo(fp8).max if scaled else None
    values = (weight / scale if scaled else weight).clamp(torch.finfo(fp8).min, torch.finfo(fp8).max).to(fp8)
    return values, scale


def write_fp8(state: dict, path: Path, cfg: DiTConfig, layout: str, fp8=torch.float8_e4m3fn) -> Path:
    """``layout``: "legacy" (``scale_weight`` + a ``scaled_fp8`` marker), "new" (``weight_scale`` and
    ``_quantization_metadata``), or "plain" (float8 values, no scale)."""
    out, layers = {}, {}
    for name, value in state.items():
        if not block_linear(name, value):
            out[name] = value.to(torch.bfloat16)
            continue
        values, scale = fp8_values(value, fp8, layout != "plain")
        out[name] = values
        base = name.removesuffix(".weight")
        if layout == "legacy":
            out[f"{base}.scale_weight"] = scale.reshape(1).float()
        elif layout == "new":
            out[f"{base}.weight_scale"] = scale.float()
            layers[base] = {"format": "float8_e4m3fn"}
    metadata = config_metadata(cfg)
    if layout == "legacy":
        out["scaled_fp8"] = torch.empty(0, dtype=fp8)
    if layout == "new":
        metadata["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in out.items()}, path, metadata=metadata)
    return path


def random_k_blocks(qtype: str, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Fixture bytes of a K type (which ``gguf`` cannot write): random packed values, small float16 scales."""
    fmt = ggml.FORMATS[qtype]
    rows = shape[0] * shape[1] // fmt.block
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (rows, fmt.size), dtype=np.uint8)
    scales = {"Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[qtype]
    for at in scales:  # weights of about 0.05: d and dmin around 1e-3
        blocks[:, at : at + 2] = rng.uniform(2e-4, 2e-3, (rows, 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(shape[0], -1)


def write_gguf(state: dict, path: Path, cfg: DiTConfig, qtype: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A GGUF DiT (architecture "wan", official names) with the block linears in ``qtype`` and the rest in F32 (F16
    for the 5-D patch embedding); returns the float weights the file decodes to, by the ``gguf`` package."""
    writer = gguf.GGUFWriter(path, arch="wan")
    writer.add_string("wanflow.config", config_metadata(cfg)["wanflow.config"])
    decoded = {}
    for i, (name, value) in enumerate(state.items()):
        x = value.float().numpy()
        if block_linear(name, value) and qtype.endswith("_K"):
            stored = random_k_blocks(qtype, x.shape, seed + i)
        elif block_linear(name, value):
            stored = quants.quantize(x, GGMLQuantizationType[qtype])
        else:
            stored = x.astype(np.float16 if x.ndim == 5 else np.float32)
        kind = GGMLQuantizationType[qtype] if block_linear(name, value) else None
        writer.add_tensor(name, stored, raw_dtype=kind)
        back = quants.dequantize(stored, kind) if kind is not None else stored.astype(np.float32)
        decoded[name] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32)).reshape(value.shape)
    close_gguf(writer)
    return decoded


def close_gguf(writer: gguf.GGUFWriter) -> None:
    """Header, metadata and tensors to the file, in the order GGUF keeps them."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
