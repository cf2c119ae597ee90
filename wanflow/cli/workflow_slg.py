"""ComfyUI's skip layer guidance nodes in a workflow, read as ``wanflow generate``'s ``--slg_*`` flags.

``SkipLayerGuidanceDiT`` adds a third pass of the prompt without the ``double_layers`` blocks on the steps whose sigma
lies between its start and end percent's (``percent_to_sigma`` at the model's shift), and ``scale`` times the
conditional prediction less that pass to the guided one: wanflow's SLG "pass" mode over ``--slg_percent``.
``SkipLayerGuidanceDiTSimple`` leaves the blocks out of the unconditional pass instead: the "uncond" mode. Wan's
blocks are ComfyUI's double blocks (it has no single ones, so ``single_layers`` changes nothing there). wanflow runs
one SLG on every expert: the same node settings on each sampler's model, or an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from wanflow.io.comfy_workflow import Graph, Node, describe

SLG_NODES = ("SkipLayerGuidanceDiT", "SkipLayerGuidanceDiTSimple")


def slg_arguments(graph: Graph, chain: list[Node], model_path: Callable[[Graph, Node], list[Node]]) -> list[str]:
    """The ``--slg_*`` flags of the skip layer guidance node on the samplers' models (``model_path``: each
    sampler's model nodes); none where there is none or it changes nothing."""
    found = []
    for sampler in chain:
        nodes = [n for n in model_path(graph, sampler) if n.type in SLG_NODES]
        if len(nodes) > 1:
            raise ValueError(f"{graph.name}: {describe(sampler)}'s model has {len(nodes)} skip layer guidance nodes; "
                             "wanflow runs one")  # fmt: skip
        found.append(_settings(graph, nodes[0]) if nodes else None)
    if len(set(found)) > 1:
        raise ValueError(
            f"{graph.name}: skip layer guidance differs between the experts' models; wanflow runs one on every expert"
        )
    if found[0] is None:
        return []
    kind, layers, scale, start, end = found[0]
    if not layers or scale == 0 or start > end:
        graph.say(f"{kind} changes nothing here (no double_layers, scale 0, or start after end); left out")
        return []
    args = ["--slg_layers", ",".join(str(i) for i in layers), "--slg_percent", f"{start!r},{end!r}"]
    if kind == "SkipLayerGuidanceDiTSimple":
        return [*args, "--slg_mode", "uncond"]
    return [*args, "--slg_scale", f"{scale!r}"]


def _settings(graph: Graph, node: Node) -> tuple[str, tuple[int, ...], float, float, float]:
    """(node type, the blocks, scale (1 for the Simple node), start percent, end percent)."""
    value = graph.value
    layers = tuple(int(i) for i in re.findall(r"\d+", str(value(node, "double_layers"))))  # (as ComfyUI parses them)
    scale = 1.0
    if node.type == "SkipLayerGuidanceDiT":
        scale = float(value(node, "scale"))
        if float(value(node, "rescaling_scale", 0.0)) != 0:
            raise ValueError(
                f"{graph.name}: {describe(node)} rescales the guided prediction (rescaling_scale); wanflow's skip "
                "layer guidance does not: set it to 0"
            )
    return node.type, layers, scale, float(value(node, "start_percent")), float(value(node, "end_percent"))
