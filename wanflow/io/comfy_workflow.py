"""A ComfyUI workflow file read as a graph: the nodes that run, their settings, and where each input comes from.

Both of ComfyUI's formats are read: the workflow the editor saves (``nodes`` and ``links``, widget values by position,
subgraphs under ``definitions``) and the one "Export (API)" writes (``{id: {"class_type", "inputs"}}``). The editor's
format is brought to the API's shape: each node's inputs by name, a linked input as a ``Link`` to the node and output
slot it comes from. Nodes the editor bypasses pass their input of the same type through; muted ones are absent; a
subgraph's nodes are inlined with ids ``"outer:inner"``; the frontend's reroutes and primitive nodes, and KJNodes'
SetNode / GetNode pairs, are followed.

Only the nodes whose settings are read need their widget names (``WIDGETS``); the meaning of the settings is the
caller's (``cli/workflow.py``). ``Graph.value`` evaluates what a workflow computes without a model: a widget's value,
a primitive node's, a switch node's choice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("wanflow")

POWER_LORA_LOADER = "Power Lora Loader (rgthree)"  # (its LoRAs are rows of one widget list, any number of them)

# The widget names of the nodes whose settings are read, in the order the editor saves their values.
WIDGETS: dict[str, tuple[str, ...]] = {
    "KSamplerAdvanced": (
        "add_noise",
        "noise_seed",
        "control_after_generate",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "start_at_step",
        "end_at_step",
        "return_with_leftover_noise",
    ),
    "KSampler": ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "SamplerCustom": ("add_noise", "noise_seed", "control_after_generate", "cfg"),
    "SamplerCustomAdvanced": (),
    "KSamplerSelect": ("sampler_name",),
    "BasicScheduler": ("scheduler", "steps", "denoise"),
    "SplitSigmas": ("step",),
    "SplitSigmasDenoise": ("denoise",),
    "CFGGuider": ("cfg",),
    "BasicGuider": (),
    "RandomNoise": ("noise_seed", "control_after_generate"),
    "DisableNoise": (),
    "ModelSamplingSD3": ("shift", "multiplier"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "CLIPTextEncode": ("text",),
    "UNETLoader": ("unet_name", "weight_dtype"),
    "UnetLoaderGGUF": ("unet_name",),
    "CLIPLoader": ("clip_name", "type", "device"),
    "CLIPLoaderGGUF": ("clip_name", "type"),
    "VAELoader": ("vae_name",),
    "EmptyHunyuanLatentVideo": ("width", "height", "length", "batch_size"),
    "Wan22ImageToVideoLatent": ("width", "height", "length", "batch_size"),
    "WanImageToVideo": ("width", "height", "length", "batch_size"),
    "WanFirstLastFrameToVideo": ("width", "height", "length", "batch_size"),
    "LoadImage": ("image", "upload"),
    "ImageScale": ("upscale_method", "width", "height", "crop"),
    "ImageResizeKJv2": (  # (KJNodes' widgets since 2025-06: before Wan 2.2)
        "width",
        "height",
        "upscale_method",
        "keep_proportion",
        "pad_color",
        "crop_position",
        "divisible_by",
        "device",
    ),
    "CreateVideo": ("fps",),
    "SaveAnimatedWEBP": ("filename_prefix", "fps", "lossless", "quality", "method"),
    "SaveAnimatedPNG": ("filename_prefix", "fps", "compress_level"),
    "WanVideoNAG": ("nag_scale", "nag_alpha", "nag_tau", "input_type"),  # (KJNodes)
    "ApplyRifleXRoPE_WanVideo": ("k",),  # (KJNodes)
    "WanVideoEnhanceAVideoKJ": ("weight",),  # (KJNodes)
    "EasyCache": ("reuse_threshold", "start_percent", "end_percent", "verbose"),
    "SkipLayerGuidanceDiT": (
        "double_layers",
        "single_layers",
        "scale",
        "start_percent",
        "end_percent",
        "rescaling_scale",
    ),
    "SkipLayerGuidanceDiTSimple": ("double_layers", "single_layers", "start_percent", "end_percent"),
    "ComfySwitchNode": ("switch",),
    "PrimitiveInt": ("value", "control_after_generate"),
    "PrimitiveFloat": ("value",),
    "PrimitiveBoolean": ("value",),
    "PrimitiveString": ("value",),
    "PrimitiveStringMultiline": ("value",),
    "PrimitiveNode": ("value", "control_after_generate"),  # (the editor's own: its value goes to a widget input)
    "VAEDecodeTiled": ("tile_size", "overlap", "temporal_size", "temporal_overlap"),
    "INTConstant": ("value",),  # (KJNodes' constants)
    "FloatConstant": ("value",),
    "StringConstant": ("string",),
    "StringConstantMultiline": ("string", "strip_newlines"),
    "Seed (rgthree)": ("seed",),  # (-1: a random seed, as wanflow draws for a negative one)
}
PRIMITIVES = {"PrimitiveInt", "PrimitiveFloat", "PrimitiveBoolean", "PrimitiveString", "PrimitiveStringMultiline"}
# nodes that give a value of their own: the widget it is, and what the node does to it (KJNodes' FloatConstant rounds
# to 6 digits; its StringConstantMultiline takes the newlines out unless told not to)
CONSTANTS: dict[str, tuple[str, Callable[[Any, Callable[..., Any]], Any]]] = {
    **{kind: ("value", lambda v, widget: v) for kind in (*PRIMITIVES, "PrimitiveNode", "INTConstant")},
    "FloatConstant": ("value", lambda v, widget: round(float(v), 6)),
    "StringConstant": ("string", lambda v, widget: v),
    "StringConstantMultiline": (
        "string", lambda v, widget: str(v).replace("\n", "").strip() if widget("strip_newlines", True) else v
    ),
    "Seed (rgthree)": ("seed", lambda v, widget: v),
}  # fmt: skip
BYPASSED, MUTED = 4, 2  # the editor's node modes (0: runs)
SET_GET = ("SetNode", "GetNode")  # KJNodes' named links: the frontend's, gone from the API format
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20  # the ids of a subgraph's input and output nodes in its links
MISSING = object()
MAX_DEPTH = 200  # links followed through reroutes, bypassed nodes and subgraphs, and subgraphs within subgraphs


@dataclass(frozen=True)
class Link:
    node: str
    slot: int = 0


@dataclass
class Node:
    id: str
    type: str
    inputs: dict[str, Any] = field(default_factory=dict)  # name -> a value, or a Link
    title: str | None = None


class Graph:
    """The nodes that run (``nodes``) and the node an input's link leads to."""

    def __init__(self, nodes: dict[str, Node], name: str = "workflow"):
        self.nodes, self.name = nodes, name
        self.notes: list[str] = []  # what the reader of the graph said about it (``say``)

    def say(self, text: str) -> None:
        """A note about how the workflow is run, logged and kept."""
        self.notes.append(text)
        log.warning("workflow %s: %s", self.name, text)

    def of_type(self, *types: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.type in types]

    def source(self, node: Node, name: str) -> tuple[Node, int] | None:
        """The node (and its output slot) input ``name`` of ``node`` is linked to; None where it is not linked."""
        value = node.inputs.get(name)
        if not isinstance(value, Link):
            return None
        if value.node not in self.nodes:
            raise ValueError(f"{self.name}: {describe(node)}'s input {name} comes from a node that does not run")
        return self.nodes[value.node], value.slot

    def upstream(self, node: Node, name: str) -> Node:
        """The node input ``name`` comes from, through switch nodes; an error naming the input where none does."""
        found, hops = self.source(node, name), 0
        while found is not None and found[0].type == "ComfySwitchNode":
            hops += 1
            if hops > len(self.nodes):
                raise ValueError(f"{self.name}: the switch nodes before {describe(node)}'s {name} form a loop")
            found = self.source(found[0], self.branch(found[0]))
        if found is None:
            raise ValueError(f"{self.name}: {describe(node)} has no {name} input linked")
        return found[0]

    def branch(self, switch: Node) -> str:
        """The input a switch node passes on: ``on_true`` or ``on_false``, as its switch says."""
        return "on_true" if self.value(switch, "switch") else "on_false"

    def value(self, node: Node, name: str, default: Any = MISSING) -> Any:
        """The setting ``name`` of ``node``: its widget's value, or what a linked primitive or switch node gives
        (``default`` where the node has no such setting; without one, an error naming it)."""
        seen, done = 0, []  # (what the constant nodes on the way do to the value, outermost first)
        while True:
            value = node.inputs.get(name, default)
            if value is MISSING:
                raise ValueError(f"{self.name}: {describe(node)} has no setting {name}")
            if not isinstance(value, Link):
                for step in reversed(done):
                    value = step(value)
                return value
            node = self.nodes.get(value.node)
            seen += 1
            if node is None or seen > len(self.nodes):
                raise ValueError(f"{self.name}: the setting {name} comes from a node that does not run")
            if node.type == "ComfySwitchNode":
                name = self.branch(node)
            elif node.type in CONSTANTS:
                name, apply = CONSTANTS[node.type]
                done.append(lambda v, apply=apply, node=node: apply(v, lambda w, d: self.value(node, w, d)))
            else:
                raise ValueError(
                    f"{self.name}: the setting {name} is computed by {describe(node)}, which wanflow does not evaluate"
                )


def describe(node: Node) -> str:
    return f"node {node.id} ({node.type}{f', {node.title!r}' if node.title else ''})"


def read_workflow(path: str | Path) -> Graph:
    """A workflow file of either format as a ``Graph``; or the workflow ComfyUI keeps inside what it saves: a PNG's
    text chunks, a video's container metadata (SaveVideo's ``workflow`` / ``prompt``, Video Helper Suite's
    ``comment``)."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        data = embedded_workflow(path)
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a JSON file ({e})") from None
        except RecursionError:
            raise ValueError(f"{path}: JSON nested too deeply") from None
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # (the API format inside a job request)
        data = data["prompt"]
    try:
        if isinstance(data, dict) and "nodes" in data and "links" in data:
            return Graph(_editor_nodes(data), path.name)
        if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
            return Graph({str(k): _api_node(str(k), v) for k, v in data.items()}, path.name)
    except (TypeError, KeyError, AttributeError, IndexError) as e:  # (a field of the wrong kind, or missing)
        raise ValueError(f"{path.name}: a malformed workflow ({type(e).__name__}: {e})") from None
    raise ValueError(f"{path}: not a ComfyUI workflow (neither the editor's nodes and links nor the API format)")


def embedded_workflow(path: Path) -> dict:
    """The workflow saved inside an image or a video ComfyUI wrote: the editor's (``workflow``) if there, else the
    API one (``prompt``)."""
    fields: dict = {}
    try:
        if path.suffix.lower() in (".png", ".webp"):
            from PIL import Image

            with Image.open(path) as image:
                fields = dict(image.info)
        else:
            import av

            with av.open(str(path)) as container:
                fields = dict(container.metadata)
    except Exception as e:  # (PIL and PyAV raise their own kinds for a file they cannot read)
        raise ValueError(f"{path}: cannot read its metadata ({e})") from None
    comment = _json(fields.get("comment"))
    if isinstance(comment, dict):  # (Video Helper Suite: one JSON object with both)
        fields = {**comment, **fields}
    for key in ("workflow", "prompt"):
        data = _json(fields.get(key))
        if isinstance(data, dict):
            return data
    raise ValueError(f"{path}: holds no ComfyUI workflow (no 'workflow' or 'prompt' in its metadata)")


def _json(value: Any) -> Any:
    if isinstance(value, (dict, list)) or value is None:
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return None


def _api_node(node_id: str, spec: dict) -> Node:
    inputs = {name: Link(str(v[0]), int(v[1])) if _is_api_link(v) else v for name, v in spec.get("inputs", {}).items()}
    return Node(node_id, spec["class_type"], inputs, spec.get("_meta", {}).get("title"))


def _is_api_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and not isinstance(value[1], bool)


def _editor_nodes(data: dict) -> dict[str, Node]:
    """The editor's format, subgraphs inlined, bypassed nodes and reroutes followed, muted nodes dropped."""
    subgraphs = {g["id"]: g for g in data.get("definitions", {}).get("subgraphs", [])}
    raw: dict[str, dict] = {}  # id -> the editor's node, with ids made global
    links: dict[str, tuple[str, int, str]] = {}  # link key -> (origin node, slot, type)
    _collect(data["nodes"], data["links"], "", subgraphs, raw, links, {})
    nodes = {}
    for node_id, spec in raw.items():
        if spec.get("mode", 0) in (BYPASSED, MUTED) or spec["type"] in ("Reroute", *SET_GET, "MarkdownNote", "Note"):
            continue
        nodes[node_id] = _editor_node(node_id, spec, raw, links)
    return nodes


def _collect(node_specs, link_specs, prefix, subgraphs, raw, links, outer_inputs) -> dict[int, tuple[str, int, str]]:
    """Add one graph level's nodes and links (``prefix``: the ids of the subgraph instance it is inlined in;
    ``outer_inputs``: what the instance's input slots are linked to, or their values). Returns what this level's
    output slots come from (a subgraph's outputs)."""
    outputs = {}
    for spec in link_specs:
        key, origin, slot, target, tslot, kind = _link_fields(spec)
        if origin == SUBGRAPH_INPUT:
            if slot in outer_inputs:
                links[prefix + key] = outer_inputs[slot]
            continue
        source = (prefix + str(origin), slot, kind)
        if target == SUBGRAPH_OUTPUT:
            outputs[tslot] = source
        links[prefix + key] = source
    for spec in node_specs:
        node_id = prefix + str(spec["id"])
        if spec["type"] in subgraphs and spec.get("mode", 0) not in (BYPASSED, MUTED):
            if prefix.count(":") >= MAX_DEPTH // 10:
                raise ValueError(f"subgraphs nested more than {MAX_DEPTH // 10} deep (a subgraph inside itself?)")
            _inline({**spec, "_prefix": prefix}, node_id, subgraphs, raw, links)
        else:
            raw[node_id] = {**spec, "_prefix": prefix}
    return outputs


def _inline(spec: dict, node_id: str, subgraphs: dict, raw: dict, links: dict) -> None:
    """A subgraph instance's nodes under ``node_id:``; links to its outputs lead to what the subgraph's outputs
    come from. Its inputs: the instance's links, else its promoted widgets' values."""
    graph = subgraphs[spec["type"]]
    prefix = spec.get("_prefix", "")
    promoted = [name for _, name in spec.get("properties", {}).get("proxyWidgets", [])]
    widget_values = dict(zip(promoted, spec.get("widgets_values") or [], strict=False))
    outer = {}
    for slot, sub_input in enumerate(graph.get("inputs", [])):
        given = next((i for i in spec.get("inputs", []) if i["name"] == sub_input["name"]), None)
        if given is not None and given.get("link") is not None:
            outer[slot] = ("link", prefix + str(given["link"]))
        elif sub_input["name"] in widget_values:
            outer[slot] = ("value", widget_values[sub_input["name"]])
    inner_links: dict[str, tuple] = {}
    outputs = _collect(graph["nodes"], graph["links"], node_id + ":", subgraphs, raw, inner_links, outer)
    links.update(inner_links)
    raw[node_id] = {"type": "_subgraph", "mode": BYPASSED, "_outputs": outputs}


def _link_fields(spec) -> tuple[str, int, int, int, int, str]:
    if isinstance(spec, dict):
        return (
            str(spec["id"]),
            spec["origin_id"],
            spec["origin_slot"],
            spec["target_id"],
            spec["target_slot"],
            spec.get("type", "*"),
        )
    key, origin, slot, target, tslot, kind = spec[:6]
    return str(key), origin, slot, target, tslot, kind


def _editor_node(node_id: str, spec: dict, raw: dict, links: dict) -> Node:
    inputs = _widgets(spec)
    prefix = spec.get("_prefix", "")
    for entry in spec.get("inputs", []):
        if entry.get("link") is None:
            continue
        resolved = _resolve(prefix + str(entry["link"]), raw, links)
        if resolved is not None:
            inputs[entry["name"]] = resolved
    return Node(node_id, spec["type"], inputs, spec.get("title"))


def _widgets(spec: dict) -> dict[str, Any]:
    """A node's widget values by name: in ``WIDGETS``' order; saved by name already (Video Helper Suite's nodes save
    an object); or, for rgthree's Power Lora Loader, its LoRA rows (objects with a ``lora``) as ``lora_1``, ``lora_2``
    ..., the names its API format gives them."""
    values = spec.get("widgets_values") or []
    if isinstance(values, dict):
        return dict(values)
    if spec["type"] == POWER_LORA_LOADER:
        rows = [v for v in values if isinstance(v, dict) and "lora" in v]
        return {f"lora_{i}": row for i, row in enumerate(rows, 1)}
    return dict(zip(WIDGETS.get(spec["type"], ()), values, strict=False))


def _resolve(key: str, raw: dict, links: dict, depth: int = 0) -> Any:
    """Where link ``key`` really comes from: through reroutes, bypassed nodes and subgraph boundaries; a value for a
    subgraph input given as a promoted widget; None where nothing runs upstream."""
    found = links.get(key)
    if found is None or depth > MAX_DEPTH:
        return None
    if found[0] == "link":
        return _resolve(found[1], raw, links, depth + 1)
    if found[0] == "value":
        return found[1]
    origin, slot, kind = found
    spec = raw.get(origin)
    if spec is None or spec.get("mode", 0) == MUTED:
        return None
    if spec["type"] == "_subgraph":
        inner = spec["_outputs"].get(slot)
        return None if inner is None else _resolve_source(inner, raw, links, depth)
    if spec["type"] == "GetNode":
        spec = _setter(origin, spec, raw)
    if spec["type"] in ("Reroute", *SET_GET) or spec.get("mode", 0) == BYPASSED:
        through = _passthrough(spec, kind, slot)
        return None if through is None else _resolve(spec.get("_prefix", "") + str(through), raw, links, depth + 1)
    return Link(origin, slot)


def _setter(node_id: str, getter: dict, raw: dict) -> dict:
    """The SetNode a KJNodes GetNode reads (the frontend's named links): the one of the same name in the getter's
    graph, else in the nearest graph around it (its subgraph's, then the one that holds it)."""
    name = (getter.get("widgets_values") or [None])[0]
    prefix = getter.get("_prefix", "")
    found = [s for s in raw.values() if s["type"] == "SetNode" and (s.get("widgets_values") or [None])[0] == name]
    found = [s for s in found if prefix.startswith(s.get("_prefix", ""))]
    if not found:
        raise ValueError(f"GetNode #{node_id} reads {name!r}, which no SetNode in its graph or around it sets")
    return max(found, key=lambda s: len(s.get("_prefix", "")))


def _resolve_source(source: tuple[str, int, str], raw: dict, links: dict, depth: int) -> Any:
    key = f"_out:{source[0]}:{source[1]}"
    links[key] = source
    return _resolve(key, raw, links, depth + 1)


def _passthrough(spec: dict, kind: str, slot: int) -> Any:
    """The link a bypassed node (or a reroute) passes on for its output of type ``kind``: its input of that type at
    the same position if there is one, else the first input of that type (as the editor bypasses)."""
    linked = [i for i in spec.get("inputs", []) if i.get("link") is not None]
    same = [i for i in linked if i.get("type") in (kind, "*") or kind == "*"]
    if spec["type"] in ("Reroute", *SET_GET):  # (one input, passed on whatever its type)
        return linked[0]["link"] if linked else None
    by_slot = [i for i in same if spec.get("inputs", []).index(i) == slot]
    chosen = by_slot or same
    return chosen[0]["link"] if chosen else None
