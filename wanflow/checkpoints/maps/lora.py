"""LoRA key dialects as data: the prefixes, module spellings and tensor roles of every LoRA format in the wild.

A LoRA key is ``<prefix><module><sep><role>``: e.g. ``diffusion_model.`` + ``blocks.0.self_attn.q`` + ``.`` +
``lora_down.weight`` (Wan / ComfyUI), ``lora_unet_`` + ``blocks_0_self_attn_q`` + ``.`` + ``lora_down.weight``
(kohya / musubi), ``transformer.`` + ``blocks.0.attn1.to_q`` + ``.`` + ``lora_A.weight`` (diffusers / PEFT). The module
is spelled with the official names (also wanflow's own) or the diffusers ones, joined by dots or by underscores; the
diffusers <-> official module names come from the checkpoint key map (``DIT_KEYMAP``), not from a second table.
``checkpoints/lora.py`` is the engine that reads these tables.
"""

from __future__ import annotations

from wanflow.checkpoints.keymap import KeyMap
from wanflow.checkpoints.maps.dit import DIT_KEYMAP

# Prefixes before dotted module names, stripped repeatedly (``base_model.model.transformer.`` is two of them), and
# what ``wanflow info`` calls a file that uses them.
DOTTED_PREFIXES = {
    "model.diffusion_model.": "ComfyUI",
    "diffusion_model.": "Wan/ComfyUI",
    "base_model.model.": "PEFT",
    "transformer.": "diffusers",
    "pipe.dit.": "DiffSynth",
    "dit.": "DiffSynth",
}
# Prefixes before module names whose dots became underscores (``lora_unet_blocks_0_self_attn_q``), longest first.
UNDERSCORE_PREFIXES = {
    "lora_unet__": "VideoX-Fun",
    "lora_unet_": "kohya/musubi",
    "lycoris_": "LyCORIS",
    "lora_transformer_": "kohya (transformer)",
}

# Tensor role suffix -> (adapter family, slot). Slots: a low-rank pair ``down`` (r, in) / ``up`` (out, r) with an
# optional ``alpha`` (scale alpha / r, else 1) and PEFT's ``bias`` of lora_B; LoHa and LoKr factors by their LyCORIS
# names; full deltas ``diff`` (weight), ``diff_b`` (bias), ``diff_m`` (a block's or the head's modulation table).
ROLES: dict[str, tuple[str, str]] = {
    "lora_down.weight": ("LoRA down/up", "down"),
    "lora_up.weight": ("LoRA down/up", "up"),
    "lora_down": ("LoRA down/up", "down"),
    "lora_up": ("LoRA down/up", "up"),
    "lora.down.weight": ("LoRA down/up", "down"),
    "lora.up.weight": ("LoRA down/up", "up"),
    "lora_A.weight": ("LoRA A/B", "down"),
    "lora_B.weight": ("LoRA A/B", "up"),
    "lora_A.default.weight": ("LoRA A/B", "down"),
    "lora_B.default.weight": ("LoRA A/B", "up"),
    "lora_B.bias": ("LoRA A/B", "bias"),
    "lora_B.default.bias": ("LoRA A/B", "bias"),
    "alpha": ("alpha", "alpha"),
    **{f"hada_{name}": ("LoHa", f"hada_{name}") for name in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
    **{f"lokr_{name}": ("LoKr", f"lokr_{name}") for name in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t1", "t2")},
    "diff": ("diff", "diff"),
    "diff_b": ("diff_b", "diff_b"),
    "diff_m": ("diff_m", "diff_m"),
    "dora_scale": ("DoRA", "dora_scale"),
}
ROLE_SUFFIXES = tuple(sorted(ROLES, key=len, reverse=True))  # "lora_B.default.bias" before "lora_B.bias"

# Which parameter of the module a full delta changes.
DELTA_PARAMS = {"diff": "weight", "diff_b": "bias", "diff_m": "modulation"}

# (official module, diffusers module) for every module a LoRA may target: the module-level rules of the checkpoint
# key map, plus the owners of the modulation tables (targets of ``diff_m``, official spelling only).
MODULE_RULES = (
    *((official[:-1], other[:-1]) for official, other in DIT_KEYMAP.rules if official.endswith(".")),
    ("blocks.{}", "blocks.{}"),
    ("head", "head"),
)

# Modules of Wan 2.1's CLIP image branch, which Wan 2.2 does not have: LoRAs made for Wan 2.1 I2V carry them, and they
# are skipped (and counted), not an error.
SKIPPED_RULES = (
    ("blocks.{}.cross_attn.k_img", "blocks.{}.attn2.add_k_proj"),
    ("blocks.{}.cross_attn.v_img", "blocks.{}.attn2.add_v_proj"),
    ("blocks.{}.cross_attn.norm_k_img", "blocks.{}.attn2.norm_added_k"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
)


def _spellings(name: str, rules: tuple[tuple[str, str], ...]) -> tuple[tuple[str, KeyMap], ...]:
    """(naming, official <- spelled map) for the four spellings of ``rules``: official or diffusers, dots or
    underscores. Tried in this order; official first, so ``blocks.0.norm3`` stays official (diffusers' ``norm2`` is
    official ``norm3``, and the official ``norm2`` has no weights a LoRA could change)."""
    under = tuple((a, a.replace(".", "_")) for a, _ in rules)
    diffusers_under = tuple((a, b.replace(".", "_")) for a, b in rules if b)
    return (
        ("official", KeyMap(f"{name}, official names", tuple((a, a) for a, _ in rules))),
        ("diffusers", KeyMap(f"{name}, diffusers names", tuple((a, b) for a, b in rules if b))),
        ("official", KeyMap(f"{name}, official names with underscores", under)),
        ("diffusers", KeyMap(f"{name}, diffusers names with underscores", diffusers_under)),
    )


MODULE_SPELLINGS = _spellings("LoRA modules", MODULE_RULES)
SKIPPED_SPELLINGS = _spellings("Wan 2.1 image branch", SKIPPED_RULES)
