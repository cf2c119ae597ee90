"""LoRA as a transform of a plain DiT: merged into its weights, or applied beside them. Several at once, each under a
name with its strength.

Merged: each touched parameter becomes ``(W.float() + sum_k s_k delta_k).to(W.dtype)`` (FP8 block linears,
``runtime.fp8``: dequantised, summed in float32, quantised again from float32: one rounding), written into the
parameter's own storage. The originals are kept, so unloading or changing a strength rebuilds the parameter from them:
unloading restores it bit for bit. ``keep_originals=False`` saves that memory (a one-shot run) and then forbids both.

Unmerged (beside the weights), the model's forward untouched and never run twice:

- a linear's weight delta: a forward hook adds ``s * (alpha / r) * (x A^T) B^T`` (low rank) or ``s * x D^T`` (dense:
  LoHa, LoKr, ``diff``) to the layer's output, after the base matmul, whatever stores the weight: with FP8 weights
  ``y = x W8^T s8 + s (alpha / r) (x A^T) B^T``. The factors are non-persistent buffers of a child ``lora`` of the
  layer: the state-dict keys stay those of the plain model, and the offload policies move them with their expert.
  The strength ``s`` is one 0-dim tensor per LoRA and expert on the compute device, changed in place: a new strength
  needs no reload and no recompile under ``compile_blocks``;
- any other delta (a bias, a modulation table, a norm, the patch embedding; all small) is rebuilt into the parameter
  from its kept original at every strength change, as a merged one is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from wanflow.checkpoints.lora import Delta, LoraFile, LowRank, check_fits
from wanflow.runtime.fp8 import FP8Weight, dequantize, quantize
from wanflow.runtime.quantized import GGMLWeight
from wanflow.sampling.hooks import Step, StepHook


@dataclass
class Applied:
    """One LoRA on one model."""

    name: str
    strength: float
    merged: bool
    params: list[str]  # every parameter it changes
    deltas: dict[str, list[Delta]]  # those rebuilt into the parameters (merged: all; unmerged: all but linear weights)
    key: str = ""  # unmerged: the buffer-name stem of its terms
    scale: torch.Tensor | None = None  # unmerged: the 0-dim strength tensor its terms read


@dataclass
class LoraState:
    """What a model carries about its LoRAs (its attribute ``wanflow_loras``)."""

    applied: dict[str, Applied] = field(default_factory=dict)
    originals: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # rebuilt parameters before any LoRA
    keep_originals: bool = True
    counter: int = 0
    baked: dict[str, float] = field(default_factory=dict)  # name -> strength of the LoRAs in the weights for good


def lora_state(model: nn.Module) -> LoraState:
    state = getattr(model, "wanflow_loras", None)
    if state is None:
        state = model.wanflow_loras = LoraState()
    return state


def loaded_loras(model: nn.Module) -> list[Applied]:
    return list(getattr(model, "wanflow_loras", LoraState()).applied.values())


def param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Official parameter name -> shape, for plain and FP8 parameters alike."""
    shapes = {}
    for prefix, module in model.named_modules():
        if ".parametrizations" in f".{prefix}" or isinstance(module, LinearLora):
            continue
        names = [*module._parameters, *(module.parametrizations.keys() if parametrize.is_parametrized(module) else ())]
        for leaf in names:
            shape = _shape(module, leaf)
            if shape is not None:
                shapes[f"{prefix}.{leaf}" if prefix else leaf] = shape
    return shapes


def _shape(module: nn.Module, leaf: str) -> tuple[int, ...] | None:
    """The shape of parameter ``leaf`` as the model uses it (a GGUF layer's blocks have another)."""
    if parametrize.is_parametrized(module, leaf) and isinstance(module.parametrizations[leaf][0], GGMLWeight):
        return module.parametrizations[leaf][0].shape
    stored = _storage(module, leaf)
    return tuple(stored[0].shape) if stored else None


def apply_lora(
    model: nn.Module,
    lora: LoraFile,
    name: str,
    strength: float = 1.0,
    merge: bool = False,
    device: torch.device | str | None = None,
    keep_originals: bool = True,
) -> nn.Module:
    """Add ``lora`` to ``model`` under ``name``, merged or beside the weights. ``device``: where the strength tensor
    lives, the compute device (default: the device of the model's first parameter). Returns ``model``."""
    state = lora_state(model)
    if name in state.applied:
        raise ValueError(f"a LoRA named {name!r} is already loaded; unload it first or pick another name")
    check_fits(lora, param_shapes(model), len(model.blocks))
    if merge:
        _check_mergeable(model, lora)
    applied = Applied(name, float(strength), merge, sorted(lora.deltas), dict(lora.deltas))
    state.applied[name] = applied
    if merge:
        state.keep_originals = state.keep_originals and keep_originals  # once dropped, the originals are gone
        _rebuild(model, state, applied.params)
        if not state.keep_originals:  # in the weights for good, and in the originals kept for unmerged LoRAs
            _fold(state, applied)
        return model
    device = torch.device(device) if device is not None else next(model.parameters()).device
    with torch.inference_mode(False):  # a normal tensor: it may change later, in or out of inference mode
        applied.scale = torch.tensor(float(strength), device=device)
    applied.key, state.counter = f"lora{state.counter}", state.counter + 1
    for pname in applied.params:
        module, leaf = _owner(model, pname)
        if _beside(module, leaf):
            _attach(module, applied.deltas.pop(pname), applied)
    _rebuild(model, state, list(applied.deltas))
    return model


def remove_lora(model: nn.Module, name: str) -> nn.Module:
    """Take LoRA ``name`` off ``model``: its terms dropped, the parameters it changed rebuilt from the originals."""
    state = lora_state(model)
    applied = _get(state, name, undo=True)
    del state.applied[name]
    for pname in applied.params:
        module, leaf = _owner(model, pname)
        if not applied.merged and _beside(module, leaf):
            _detach(module, applied.key)
    _rebuild(model, state, applied.params if applied.merged else list(applied.deltas))
    return model


def reapply_lora(
    model: nn.Module, name: str, lora: LoraFile, strength: float, merge: bool, device: torch.device | str | None = None
) -> nn.Module:
    """LoRA ``name`` taken off and put on again, merged or beside the weights, in its place among the model's LoRAs
    (their order is the order their deltas are summed in, and the order they are listed in)."""
    state = lora_state(model)
    order = list(state.applied)
    _get(state, name, undo=True)
    if merge:
        _check_mergeable(model, lora)  # (before it is taken off: a GGUF layer refuses a merge)
    remove_lora(model, name)
    apply_lora(model, lora, name, strength, merge, device)
    state.applied = {key: state.applied[key] for key in order}
    return model


def bake_lora(model: nn.Module, name: str) -> nn.Module:
    """Keep merged LoRA ``name`` in the weights for good and forget it (diffusers' ``fuse_lora`` then
    ``unload_lora_weights``): the parameters it changed keep its delta, also when the other LoRAs are unloaded."""
    state = lora_state(model)
    applied = _get(state, name)
    if not applied.merged:
        raise ValueError(f"LoRA {name!r} runs beside the weights, not merged into them: nothing to keep")
    if applied.deltas:
        _fold(state, applied)
    del state.applied[name]
    state.baked[name] = applied.strength  # (what the weights hold, for the output's metadata)
    _rebuild(model, state, applied.params)
    return model


def baked_loras(model: nn.Module) -> dict[str, float]:
    """The LoRAs ``bake_lora`` put in the weights for good: name -> strength."""
    return dict(getattr(model, "wanflow_loras", LoraState()).baked)


def set_strength(model: nn.Module, name: str, strength: float) -> None:
    """A new strength for LoRA ``name``: its strength tensor changed in place, its rebuilt parameters rebuilt."""
    state = lora_state(model)
    applied = _get(state, name, undo=True)
    applied.strength = float(strength)
    if applied.scale is not None:
        applied.scale.fill_(applied.strength)
    _rebuild(model, state, list(applied.deltas))


def _fold(state: LoraState, applied: Applied) -> None:
    """A LoRA merged for good: its deltas join the originals still kept (of parameters an unmerged LoRA rebuilds)."""
    for pname in applied.params:
        base = state.originals.get(pname)
        if base is not None:
            value = dequantize(*base) if len(base) == 2 else base[0]
            deltas = [applied.strength * d.delta(tuple(value.shape), value.device) for d in applied.deltas[pname]]
            total = value.float() + sum(deltas)
            state.originals[pname] = list(quantize(total, value.dtype)) if len(base) == 2 else [total.to(value.dtype)]
    applied.deltas = {}


def _get(state: LoraState, name: str, undo: bool = False) -> Applied:
    if name not in state.applied:
        raise ValueError(f"no LoRA named {name!r} is loaded; loaded: {sorted(state.applied)}")
    applied = state.applied[name]
    if undo and applied.merged and not state.keep_originals:
        raise ValueError(f"LoRA {name!r} was merged without keeping the original weights: reload the model")
    return applied


def _owner(model: nn.Module, pname: str) -> tuple[nn.Module, str]:
    path, _, leaf = pname.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def _check_mergeable(model: nn.Module, lora: LoraFile) -> None:
    """GGUF blocks cannot take a merged delta (wanflow writes no GGML type): such a LoRA goes beside the weights."""
    for pname in lora.deltas:
        module, leaf = _owner(model, pname)
        if parametrize.is_parametrized(module, leaf) and isinstance(module.parametrizations[leaf][0], GGMLWeight):
            qtype = module.parametrizations[leaf][0].qtype
            raise ValueError(
                f"{pname}: a {qtype} layer cannot take new float weights; load the LoRA unmerged (beside the weights)"
            )


def _beside(module: nn.Module, leaf: str) -> bool:
    """Whether an unmerged delta of this parameter runs beside it (a linear's weight) rather than rebuilt into it."""
    return isinstance(module, nn.Linear) and leaf == "weight"


def _storage(module: nn.Module, leaf: str) -> list[torch.Tensor]:
    """The tensors that store parameter ``leaf``: FP8 values and scales, GGUF blocks, or the parameter itself."""
    if parametrize.is_parametrized(module, leaf):
        plist = module.parametrizations[leaf]
        if isinstance(plist[0], GGMLWeight):
            return [plist.original0]
        return [plist.original0, plist.original1] if isinstance(plist[0], FP8Weight) else [plist.original]
    param = module._parameters.get(leaf)
    return [] if param is None else [param]


def _rebuild(model: nn.Module, state: LoraState, params: Sequence[str]) -> None:
    """Each parameter of ``params`` = its original + the deltas every LoRA rebuilds into it at its strength, summed in
    float32 and written into the parameter's storage in place (so whatever holds the storage sees it: a pinned host
    copy, an offload policy's device copy)."""
    for pname in params:
        stored = _storage(*_owner(model, pname))
        todo = [(a.strength, d) for a in state.applied.values() for d in a.deltas.get(pname, ())]
        base = state.originals.get(pname)
        if not todo:
            for t, original in zip(stored, base or [], strict=False):
                t.data.copy_(original)
            state.originals.pop(pname, None)
            continue
        if base is None:
            keep = state.keep_originals or any(not a.merged and pname in a.deltas for a in state.applied.values())
            base = [t.data.clone() for t in stored] if keep else [t.data for t in stored]
            if keep:
                state.originals[pname] = base
        device = stored[0].device
        value = dequantize(*(b.to(device) for b in base)) if len(base) == 2 else base[0].to(device)
        total = value.float()
        for strength, delta in todo:
            total = total + strength * delta.delta(tuple(value.shape), device)
        new = quantize(total, value.dtype) if len(base) == 2 else (total.to(value.dtype),)  # (fp8: rounded once)
        for t, data in zip(stored, new, strict=True):
            t.data.copy_(data)


@dataclass(eq=False)
class _Term:
    scale: torch.Tensor  # the LoRA's 0-dim strength tensor (shared by its terms)
    alpha: float  # alpha / rank for a low-rank term; 1 for a dense one
    low_rank: bool


class LinearLora(nn.Module):
    """The unmerged LoRA terms of one ``nn.Linear``, its child ``lora``: ``forward(x)`` is what they add to the layer's
    output (its forward hook calls it)."""

    def __init__(self):
        super().__init__()
        self.terms: dict[str, _Term] = {}
        self.handle = None

    def add(self, key: str, delta: Delta, scale: torch.Tensor, shape: tuple[int, int], like: torch.Tensor) -> None:
        """A term of the LoRA whose buffers start with ``key``, stored on ``like``'s device in its dtype."""
        key = f"{key}_{sum(k.rsplit('_', 1)[0] == key for k in self.terms)}"
        to = {"device": like.device, "dtype": like.dtype}
        if isinstance(delta, LowRank):
            self.register_buffer(key + "_down", delta.down.flatten(1).to(**to), persistent=False)
            self.register_buffer(key + "_up", delta.up.flatten(1).to(**to), persistent=False)
            self.terms[key] = _Term(scale, delta.scale, True)
        else:
            self.register_buffer(key + "_full", delta.delta(shape, like.device).to(**to), persistent=False)
            self.terms[key] = _Term(scale, 1.0, False)

    def drop(self, key: str) -> None:
        for k in [k for k in self.terms if k.rsplit("_", 1)[0] == key]:
            del self.terms[k]
            for suffix in ("_down", "_up", "_full"):
                self._buffers.pop(k + suffix, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for key, term in self.terms.items():
            if term.low_rank:  # scale the (tokens, rank) product, the smallest tensor on the path
                h = F.linear(x, getattr(self, key + "_down")) * (term.scale * term.alpha)
                y = F.linear(h, getattr(self, key + "_up"))
            else:
                y = F.linear(x, getattr(self, key + "_full")) * term.scale
            out = y if out is None else out + y
        return out


def _add_lora_output(module: nn.Linear, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out + module.lora(args[0])


def _attach(module: nn.Linear, deltas: list[Delta], applied: Applied) -> None:
    side = getattr(module, "lora", None)
    if side is None:
        side = module.lora = LinearLora()
        side.handle = module.register_forward_hook(_add_lora_output)
    like = _compute_like(module)
    for delta in deltas:
        side.add(applied.key, delta, applied.scale, (module.out_features, module.in_features), like)


def _compute_like(module: nn.Linear) -> torch.Tensor:
    """A tensor on the layer's device in its compute dtype: the weight, FP8's scales, or a GGUF layer's dtype."""
    stored = _storage(module, "weight")
    if parametrize.is_parametrized(module, "weight") and isinstance(module.parametrizations.weight[0], GGMLWeight):
        return torch.empty(0, dtype=module.parametrizations.weight[0].compute_dtype, device=stored[0].device)
    return stored[-1]  # FP8: the scales hold the compute dtype


def _detach(module: nn.Linear, key: str) -> None:
    side = module.lora
    side.drop(key)
    if not side.terms:
        side.handle.remove()
        del module.lora


class RunStrengths(StepHook):
    """Strengths for the length of one run: ``set`` keeps the strength a LoRA had before its first change, and
    ``end`` puts every changed one back (the base of ``LoraSchedule`` and ``LoraScale``)."""

    def __init__(self) -> None:
        self.loaded: dict[tuple[int, str], tuple[nn.Module, float]] = {}

    def set(self, model: nn.Module, applied: Applied, strength: float) -> None:
        self.loaded.setdefault((id(model), applied.name), (model, applied.strength))
        set_strength(model, applied.name, strength)

    def changed(self, model: nn.Module, name: str) -> bool:
        return (id(model), name) in self.loaded

    def end(self) -> None:
        for (_, name), (model, strength) in self.loaded.items():
            set_strength(model, name, strength)
        self.loaded.clear()


class LoraSchedule(RunStrengths):
    """Per-step strengths for LoRAs loaded beside the weights: ``{name: [s_0, s_1, ...] or fn(step) -> s}`` (a list
    shorter than the run keeps its last value). The strengths they were loaded with come back at the end."""

    def __init__(self, strengths: Mapping[str, Sequence[float] | Callable[[Step], float]]):
        super().__init__()
        self.strengths = dict(strengths)

    def before(self, step: Step, model: nn.Module) -> None:
        state = lora_state(model)
        for name, plan in self.strengths.items():
            applied = state.applied.get(name)
            if applied is None:  # not on this expert
                continue
            if applied.merged:
                raise ValueError(f"per-step strengths need LoRA {name!r} loaded beside the weights, not merged")
            self.set(model, applied, plan(step) if callable(plan) else plan[min(step.index, len(plan) - 1)])


class LoraScale(RunStrengths):
    """Every LoRA beside the weights at ``scale`` times its strength for one run (diffusers' ``attention_kwargs=
    {"scale": s}``); merged ones are in the weights and stay as they are. The strengths come back at the end."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def before(self, step: Step, model: nn.Module) -> None:
        for applied in lora_state(model).applied.values():
            if not applied.merged and not self.changed(model, applied.name):
                self.set(model, applied, applied.strength * self.scale)
