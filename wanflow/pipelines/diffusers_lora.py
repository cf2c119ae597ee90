"""diffusers' LoRA methods on ``WanPipeline`` (``WanLoraLoaderMixin``), over wanflow's LoRAs (``pipelines.lora``).

diffusers names the experts as components: ``transformer`` is the high-noise expert of an A14B model (or the one model
of TI2V), ``transformer_2`` the low-noise one; an adapter lives on one component, under a name unique there. What
follows diffusers (the tests run the same calls on diffusers' own pipeline and compare the frames):

- ``load_lora_weights`` puts a LoRA on ``transformer`` (``load_into_transformer_2=True``: on ``transformer_2``) and
  makes it the only active adapter of that component, at weight 1; its default name is ``default_<n>``;
- ``set_adapters(names, weights)``: on every component, the named adapters active at their weights (a number, or
  ``{"transformer": w, "transformer_2": w2}``; a component a dict leaves out, and ``None``, mean 1), the others off;
- ``disable_lora`` / ``enable_lora``: every adapter off (a fused one unfused first, as PEFT does), then back on;
- ``fuse_lora(components, lora_scale)`` merges the active adapters of the components into the weights (at weight x
  ``lora_scale``); ``unfuse_lora`` takes them out again; ``unload_lora_weights`` removes every adapter, and a fused
  one stays in the weights for good;
- ``delete_adapters``, ``get_list_adapters``, ``get_active_adapters``.

An inactive adapter runs at strength 0 (its terms add exact zeros). These methods and wanflow's own (``load_lora``,
``set_lora_strength``, ``unload_lora``, ``loras``) see the same LoRAs: one that ``load_lora`` put on is an active
adapter (on each expert it went on) at its strength, until ``set_adapters`` says otherwise; only those loaded here can
be fused.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wanflow.checkpoints.hub import fetching, is_hub_id
from wanflow.checkpoints.lora import LoraFile, parse_lora, read_lora_file
from wanflow.configs import diffusers_components
from wanflow.pipelines import lora
from wanflow.runtime.lora import bake_lora, loaded_loras, reapply_lora, remove_lora

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # the file diffusers looks for in a folder first
NOT_LORA_FILES = ("scheduler", "optimizer", "checkpoint")  # file names diffusers passes over when it guesses


@dataclass
class AdapterState:
    """What diffusers' methods add to the LoRAs on the experts, per (expert, name)."""

    files: dict[tuple[str, str], LoraFile] = field(default_factory=dict)  # loaded here: what fusing merges
    weights: dict[tuple[str, str], float] = field(default_factory=dict)  # set_adapters' weights (default 1)
    active: dict[str, list[str]] = field(default_factory=dict)  # per expert; absent: every adapter there
    fused: set[tuple[str, str]] = field(default_factory=set)
    enabled: bool = True

    def is_on(self, expert: str, name: str) -> bool:
        """Whether an unfused adapter runs at its weight now: enabled, and active on its expert."""
        active = self.active.get(expert)
        return self.enabled and (active is None or name in active)


def lora_source(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    weight_name: str | None = None,
    subfolder: str | None = None,
    **hub: Any,
) -> LoraFile:
    """diffusers' ``pretrained_model_name_or_path_or_dict``: a state dict, a ``.safetensors`` file, a folder or a Hub
    repository (with ``weight_name``, or its one LoRA file; ``hub``: revision, token, cache_dir, local_files_only)."""
    if isinstance(source, Mapping):
        return parse_lora(dict(source), "the LoRA state dict")
    text = os.fspath(source)
    if Path(text).expanduser().is_file():
        return read_lora_file(text)
    if is_hub_id(text):
        from huggingface_hub import hf_hub_download, list_repo_files

        if weight_name is None:
            if hub.get("local_files_only"):
                raise ValueError("offline (local_files_only): name the file with weight_name")
            with fetching(text):
                listed = list_repo_files(text, revision=hub.get("revision"), token=hub.get("token"))
            weight_name = guess_weight_name(listed, text, subfolder)
        with fetching(f"{text}/{subfolder + '/' if subfolder else ''}{weight_name}"):
            path = hf_hub_download(text, weight_name, subfolder=subfolder, **hub)
        return read_lora_file(path)
    folder = Path(text).expanduser() / (subfolder or "")
    if not folder.is_dir():
        raise ValueError(f"LoRA not found: {text} is no file, folder or Hugging Face Hub repository (org/name)")
    if weight_name is None:
        weight_name = guess_weight_name([p.name for p in folder.iterdir()], os.fspath(folder))
    return read_lora_file(folder / weight_name)


def guess_weight_name(files: Iterable[str], where: str, subfolder: str | None = None) -> str:
    """The one LoRA file among ``files`` (diffusers' guess: ``.safetensors``, not a scheduler, optimizer or
    checkpoint file, ``pytorch_lora_weights.safetensors`` first); several: an error that lists them (diffusers takes
    the first and warns)."""
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    names = [f.removeprefix(prefix) for f in files if f.startswith(prefix) and f.endswith(".safetensors")]
    names = [n for n in names if "/" not in n and not any(word in n for word in NOT_LORA_FILES)]
    if LORA_WEIGHT_NAME in names:
        return LORA_WEIGHT_NAME
    if len(names) != 1:
        found = f"several: {sorted(names)}" if names else "none"
        raise ValueError(f"{where}: which LoRA file? pass weight_name= ({found} .safetensors files)")
    return names[0]


class DiffusersLoraMethods:
    """The mixin: needs ``experts``, ``map_experts``, ``device`` and ``task`` of ``WanPipeline``."""

    _adapters: AdapterState | None = None

    # --- diffusers' names for the experts ---

    def _components(self) -> dict[str, str]:
        """diffusers' component -> wanflow's expert."""
        return diffusers_components(self.task.is_moe)  # type: ignore[attr-defined]

    def _expert_of(self, component: str) -> str:
        components = self._components()
        if component not in components:
            raise ValueError(
                f"this model has no {component} (its components: {list(components)}); Wan2.2-TI2V-5B "
                "has one transformer"
            )
        return components[component]

    def _state(self) -> AdapterState:
        """The adapter state, brought up to date with what wanflow's own methods did since: a LoRA ``unload_lora``
        took off is forgotten, one ``load_lora`` put on is active at its strength, and an active adapter's weight is
        its strength now (``set_lora_strength`` may have changed it)."""
        state = self._adapters = self._adapters or AdapterState()
        present = set()
        for expert, model in self.experts.items():  # type: ignore[attr-defined]
            active = state.active.get(expert)
            for applied in loaded_loras(model):
                key = (expert, applied.name)
                present.add(key)
                if key in state.fused:
                    continue
                if key not in state.weights:
                    if active is not None and applied.name not in active:
                        active.append(applied.name)
                    state.weights[key] = applied.strength
                elif state.is_on(expert, applied.name):
                    state.weights[key] = applied.strength
        for table in (state.files, state.weights):
            for key in [k for k in table if k not in present]:
                del table[key]
        state.fused &= present
        return state

    def _present(self) -> dict[str, list[str]]:
        return {e: [a.name for a in loaded_loras(m)] for e, m in self.experts.items()}  # type: ignore[attr-defined]

    def _apply_weights(self, state: AdapterState) -> None:
        """Each adapter's strength from the state: its weight when active and enabled, else 0; fused ones stay."""
        for expert, model in self.experts.items():  # type: ignore[attr-defined]
            for applied in loaded_loras(model):
                key = (expert, applied.name)
                if key in state.fused:
                    continue
                strength = state.weights.get(key, 1.0) if state.is_on(expert, applied.name) else 0.0
                if strength != applied.strength:
                    lora.set_lora_strength(self, applied.name, strength, expert)

    # --- diffusers' methods ---

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, torch.Tensor],
        adapter_name: str | None = None,
        hotswap: bool = False,
        *,
        weight_name: str | None = None,
        subfolder: str | None = None,
        load_into_transformer_2: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        low_cpu_mem_usage: bool | None = None,  # (how diffusers builds its layers; nothing to choose here)
    ) -> None:
        """A LoRA (any dialect wanflow reads) on ``transformer`` or ``transformer_2``, beside the weights, the only
        active adapter there (as in diffusers)."""
        if hotswap:
            raise ValueError(
                "hotswap is not supported: delete_adapters(name) and load again (set_adapters changes "
                "weights without a reload, and without a recompile)"
            )
        expert = self._expert_of("transformer_2" if load_into_transformer_2 else "transformer")
        hub = {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
        hub = {k: v for k, v in hub.items() if v is not None}
        state, present = self._state(), self._present()[expert]
        name = adapter_name or next(
            f"default_{n}" for n in itertools.count(len(present)) if f"default_{n}" not in present
        )
        if name in present:
            raise ValueError(
                f"an adapter named {name!r} is already on {self._component_name(expert)}; "
                "delete_adapters it first or pick another adapter_name"
            )
        file = lora_source(pretrained_model_name_or_path_or_dict, weight_name, subfolder, **hub)
        lora.load_lora(self, file.source, 1.0, expert, name=name, targets={expert: file})
        state.files[(expert, name)] = file
        state.weights[(expert, name)] = 1.0
        state.active[expert] = [name]
        self._apply_weights(state)

    def set_adapters(
        self,
        adapter_names: str | Sequence[str],
        adapter_weights: float
        | Mapping[str, float | None]
        | Sequence[float | Mapping[str, float | None] | None]
        | None = None,
    ) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = (
            list(adapter_weights) if isinstance(adapter_weights, (list, tuple)) else [adapter_weights] * len(names)
        )
        if len(weights) != len(names):
            raise ValueError(f"{len(names)} adapter names but {len(weights)} adapter weights")
        state, present, components = self._state(), self._present(), self._components()
        everywhere = {name for names_there in present.values() for name in names_there}
        missing = sorted(set(names) - everywhere)
        if missing:
            raise ValueError(f"adapter(s) {missing} not loaded; loaded: {sorted(everywhere)}")
        for weight in weights:
            if isinstance(weight, Mapping) and set(weight) - set(components):
                raise ValueError(
                    f"adapter weights name components {sorted(set(weight) - set(components))}; this "
                    f"model has {list(components)}"
                )
        new = {}  # every weight checked before any changes
        for component, expert in components.items():
            for name, weight in zip(names, weights, strict=True):
                value = weight.get(component) if isinstance(weight, Mapping) else weight
                if name in present[expert]:
                    new[(expert, name)] = 1.0 if value is None else lora.check_strength(value)
        for component, expert in components.items():
            fused = [n for n in present[expert] if (expert, n) in state.fused]
            unfused = [n for n in names if n in present[expert] and (expert, n) not in state.fused]
            if fused and unfused:
                raise ValueError(
                    f"{component} has fused adapter(s) {fused}: diffusers (PEFT) does not run {unfused} beside them; "
                    "unfuse_lora first"
                )
        state.weights.update(new)
        for expert in components.values():
            state.active[expert] = list(names)
        self._apply_weights(state)

    def get_list_adapters(self) -> dict[str, list[str]]:
        present = self._present()
        return {c: present[e] for c, e in self._components().items() if present[e]}

    def get_active_adapters(self) -> list[str]:
        """As diffusers answers: the active adapters of the last component that has any adapter."""
        state, present, active = self._state(), self._present(), []
        for expert in self._components().values():
            if present[expert]:
                active = list(state.active.get(expert, present[expert]))
        return active

    def disable_lora(self) -> None:
        """Every adapter off; fused ones are unfused first (as diffusers' PEFT layers do when disabled)."""
        self.unfuse_lora(list(self._components()))
        state = self._state()
        state.enabled = False
        self._apply_weights(state)

    def enable_lora(self) -> None:
        state = self._state()
        state.enabled = True
        self._apply_weights(state)

    def delete_adapters(self, adapter_names: str | Sequence[str]) -> None:
        """Take the adapters off every component that has them (a fused one leaves the weights as they were)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        present = self._present()
        missing = sorted(set(names) - {n for there in present.values() for n in there})
        if missing:
            raise ValueError(f"adapter(s) {missing} not loaded; loaded: {self.get_list_adapters()}")
        self.map_experts(lambda e, m: _remove(m, [n for n in names if n in present[e]]))  # type: ignore[attr-defined]
        state = self._state()
        for expert, active in state.active.items():
            state.active[expert] = [n for n in active if n not in names]

    def unload_lora_weights(self) -> None:
        """Every adapter off the model; a fused one stays in the weights (diffusers' fuse-then-unload)."""
        state = self._state()

        def unload(expert: str, model: torch.nn.Module) -> torch.nn.Module:
            for applied in loaded_loras(model):
                if (expert, applied.name) in state.fused:
                    bake_lora(model, applied.name)
                else:
                    remove_lora(model, applied.name)
            return model

        self.map_experts(unload)  # type: ignore[attr-defined]
        self._adapters = AdapterState()

    def fuse_lora(
        self,
        components: Sequence[str] = ("transformer",),
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: Sequence[str] | None = None,
    ) -> None:
        """As diffusers: the active adapters of ``components`` have their weights scaled by ``lora_scale`` (for good:
        also after ``unfuse_lora``), then they (or ``adapter_names``) are merged into the weights at their weights
        (float32 sums, one rounding: ``runtime.lora``)."""
        if safe_fusing:
            raise ValueError(
                "safe_fusing is not supported: a run whose latents turn NaN or infinite stops with an error"
            )
        scale, state, present = lora.check_strength(lora_scale), self._state(), self._present()
        if not state.enabled:
            raise ValueError("the adapters are disabled: enable_lora() before fuse_lora()")
        plan = []  # (expert, its active adapters, the adapters to merge), all checked before anything changes
        for component in components:
            expert = self._expert_of(component)
            active = [n for n in state.active.get(expert, present[expert]) if n in present[expert]]
            names = active if adapter_names is None else [n for n in adapter_names if n in present[expert]]
            native = [n for n in names if (expert, n) not in state.files]
            if native:
                raise ValueError(
                    f"adapter(s) {native} were loaded with load_lora, not load_lora_weights: load them with "
                    "load_lora(..., merge=True) to merge them"
                )
            left = [n for n in active if n not in names and (expert, n) not in state.fused]
            if left and names:
                raise ValueError(
                    f"fuse_lora would leave the active adapter(s) {left} of {component} unmerged beside merged ones, "
                    "which diffusers (PEFT) then does not run at all: fuse them too, or set_adapters without them first"
                )
            plan.append((expert, active, names))
        scaled = {
            (expert, name): state.weights.get((expert, name), 1.0) * scale
            for expert, active, _ in plan
            for name in active
            if (expert, name) not in state.fused
        }
        for expert, _, names in plan:
            for name in [n for n in names if (expert, n) not in state.fused]:
                file, strength = state.files[(expert, name)], scaled.get((expert, name), state.weights[(expert, name)])
                self.map_experts(  # type: ignore[attr-defined]
                    lambda e, m, x=expert, n=name, f=file, s=strength: (
                        reapply_lora(m, n, f, s, merge=True) if e == x else m
                    )
                )
                state.fused.add((expert, name))
        state.weights.update(scaled)
        self._apply_weights(state)  # (an active adapter left out of adapter_names runs at its scaled weight)

    def unfuse_lora(self, components: Sequence[str] = ("transformer",)) -> None:
        """The fused adapters of ``components`` beside the weights again, at their weights (the originals are
        restored bit for bit)."""
        state = self._state()
        for component in components:
            expert = self._expert_of(component)
            for _, name in sorted(k for k in state.fused if k[0] == expert):
                file = state.files[(expert, name)]
                self.map_experts(
                    lambda e, m, x=expert, n=name, f=file: (  # type: ignore[attr-defined]
                        reapply_lora(m, n, f, 0.0, merge=False, device=self.device) if e == x else m
                    )
                )
                state.fused.discard((expert, name))
        self._apply_weights(state)

    def _component_name(self, expert: str) -> str:
        return next(c for c, e in self._components().items() if e == expert)


def _remove(model: torch.nn.Module, names: Sequence[str]) -> torch.nn.Module:
    for name in names:
        remove_lora(model, name)
    return model


__all__ = ["AdapterState", "DiffusersLoraMethods", "guess_weight_name", "lora_source"]
