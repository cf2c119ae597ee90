"""How a pipeline runs its models, whatever the request: ``RuntimeOptions`` (device, dtypes, memory policy, FP8,
compilation, VAE tiling) and the device checks. Apart from ``pipelines.pipeline`` so that the command line can build
its flags without importing the models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from wanflow.runtime.offload import POLICIES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class RuntimeOptions:
    """How a pipeline runs its models, whatever the request."""

    device: torch.device | str | None = None  # default: cuda when available
    dtype: torch.dtype | str | None = None  # every component in this dtype; default: bf16 DiT and T5 on a GPU
    convert_model_dtype: bool = False  # the reference's flag: DiT parameters in bf16 (a GPU's default already)
    offload: str | None = None  # a memory policy of ``runtime.offload.POLICIES``; default per device
    t5_cpu: bool = False  # the text encoder on the CPU
    fp8: bool = False  # the experts' block linears stored as e4m3 + per-channel scales (``runtime.fp8``)
    compile: bool = False  # torch.compile each DiT block (``runtime.compile``); traced at the first step
    vae_tile: int = 0  # decode in spatial tiles of this many latent pixels (``runtime.vae_tiling``); 0 = whole
    vae_dtype: torch.dtype | str | None = None  # the VAE's own dtype; default: ``dtype``, else float32

    def __post_init__(self) -> None:
        if self.vae_tile < 0:
            raise ValueError(f"vae_tile is a tile size in latent pixels (0 = no tiling), got {self.vae_tile}")
        if self.offload is not None and self.offload not in POLICIES:
            raise ValueError(f"unknown offload policy {self.offload!r}; choose one of {POLICIES}")
        for name in ("dtype", "vae_dtype"):
            value = getattr(self, name)
            if isinstance(value, str) and value not in DTYPES:
                raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(DTYPES)}")

    @classmethod
    def from_keywords(cls, **options) -> RuntimeOptions:
        """Options from keyword arguments; diffusers' ``torch_dtype`` is ``dtype`` (every component in it)."""
        if "torch_dtype" in options:
            if options.get("dtype") is not None:
                raise ValueError("dtype is given twice, as dtype and as torch_dtype: pass one of them")
            options["dtype"] = options.pop("torch_dtype")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown runtime options {unknown}; the options are {sorted(names)} (or torch_dtype)")
        return cls(**options)

    def resolved_device(self) -> torch.device:
        return check_device(self.device) if self.device is not None else default_device()

    def torch_dtype(self) -> torch.dtype | None:
        return DTYPES[self.dtype] if isinstance(self.dtype, str) else self.dtype

    def vae_torch_dtype(self) -> torch.dtype:
        if self.vae_dtype is not None:
            return DTYPES[self.vae_dtype] if isinstance(self.vae_dtype, str) else self.vae_dtype
        return self.torch_dtype() or torch.float32

    def dit_dtype(self, device: torch.device) -> torch.dtype:
        """bf16 on a GPU or when converted (the reference's islands kept float32), float32 on the CPU."""
        if self.convert_model_dtype:
            return torch.bfloat16
        return self.torch_dtype() or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch device, when this machine has it; a one-line ValueError that says what to use when not."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N (CLI: --device)") from None
    backend = getattr(torch, device.type, None) if device.type != "cpu" else None
    if backend is not None and hasattr(backend, "is_available") and not backend.is_available():
        no_cuda = device.type == "cuda" and torch.version.cuda is None and torch.version.hip is None
        why = "was built without CUDA" if no_cuda else f"finds no {device.type} device here"
        raise ValueError(f"device {device} is not available: torch {torch.__version__} {why}; use cpu (--device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {device} is not available: this machine has {torch.cuda.device_count()} CUDA GPUs")
    return device


def device_and_dtype(args: tuple, kwargs: dict) -> tuple[torch.device | str | None, torch.dtype | None]:
    """The (device, dtype) of a ``to(...)`` call in diffusers' forms: positional (a device, a dtype, or both) or the
    keywords ``torch_device`` / ``device`` and ``torch_dtype`` / ``dtype``."""
    unknown = sorted(set(kwargs) - {"torch_device", "device", "torch_dtype", "dtype"})
    if unknown or len(args) > 2:
        raise TypeError(f"to() takes a device and a dtype, got {len(args)} arguments and keywords {unknown}")
    device = kwargs.get("torch_device", kwargs.get("device"))
    dtype = kwargs.get("torch_dtype", kwargs.get("dtype"))
    for arg in args:
        if isinstance(arg, torch.dtype):
            dtype = arg
        else:
            device = arg
    return device, dtype
