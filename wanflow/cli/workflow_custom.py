"""ComfyUI's custom sampling nodes read as the KSamplerAdvanced node each amounts to, so that ``cli/workflow.py``
reads one kind of sampler.

A ``SamplerCustomAdvanced`` takes its noise (``RandomNoise``: noise with a seed; ``DisableNoise``: none), its
guider (``CFGGuider``: model, prompts, cfg; ``BasicGuider``: model and one prompt, cfg 1), its sampler
(``KSamplerSelect``) and its sigmas (``BasicScheduler``: scheduler, steps, on its model's sigma table; through
``SplitSigmas`` at a step or ``SplitSigmasDenoise`` at a fraction, the high-noise expert's share and the
low-noise one's, the way Wan 2.2 workflows split the experts). ``SamplerCustom`` holds the noise, seed, cfg and model
itself. Each is the KSamplerAdvanced that runs the same steps of the same schedule (ComfyUI's KSamplerAdvanced calls
the same sampling with the same sigmas), with one difference carried over: for uni_pc, KSamplerAdvanced lays out one
step more and drops the penultimate sigma, BasicScheduler does not (its sigmas are then given as they are).
"""

from __future__ import annotations

from collections.abc import Callable

from wanflow.io.comfy_workflow import Graph, Link, Node, describe
from wanflow.sampling.schedule import DISCARD_PENULTIMATE

CUSTOM = ("SamplerCustomAdvanced", "SamplerCustom")
LAST = 10000  # (KSamplerAdvanced's end_at_step for "to the end")


def as_ksamplers(graph: Graph, shift_of: Callable[[Graph, list[Node]], float]) -> None:
    """Replaces each custom sampler of ``graph`` (in place) by its KSamplerAdvanced; ``shift_of``: the shift of the
    samplers' models (``cli/workflow.py``'s), which BasicScheduler's model must have as well."""
    custom = {n.id: n for n in graph.of_type(*CUSTOM)}
    for node in graph.nodes.values():
        for value in node.inputs.values():
            if isinstance(value, Link) and value.node in custom and value.slot != 0:
                raise ValueError(
                    f"{graph.name}: {describe(node)} reads the denoised_output of {describe(custom[value.node])}; "
                    "wanflow runs a sampler's output"
                )
    for node in custom.values():
        graph.nodes[node.id] = _ksampler(graph, node, shift_of)


def _ksampler(graph: Graph, node: Node, shift_of: Callable[[Graph, list[Node]], float]) -> Node:
    value = graph.value
    if node.type == "SamplerCustomAdvanced":
        add_noise, seed = _noise(graph, graph.upstream(node, "noise"))
        guided = _guider(graph, graph.upstream(node, "guider"))
    else:
        add_noise, seed = "enable" if value(node, "add_noise") else "disable", node.inputs.get("noise_seed")
        guided = {name: node.inputs.get(name) for name in ("model", "positive", "negative", "cfg")}
    chooser = graph.upstream(node, "sampler")
    if chooser.type != "KSamplerSelect":
        raise ValueError(
            f"{graph.name}: {describe(node)}'s sampler is {describe(chooser)}; wanflow reads KSamplerSelect"
        )
    name = value(chooser, "sampler_name")
    schedule, steps, start, end = _sigmas(graph, node)
    inputs = {
        **guided,
        "latent_image": node.inputs.get("latent_image"),
        "add_noise": add_noise,
        "noise_seed": seed,
        "steps": steps,
        "sampler_name": name,
        "scheduler": value(schedule, "scheduler"),
        "start_at_step": start,
        "end_at_step": end,
        "return_with_leftover_noise": "enable" if end < steps else "disable",
        # BasicScheduler's sigmas as they are: KSampler lays one step more out for uni_pc and drops the penultimate
        "sigmas_as_given": name in DISCARD_PENULTIMATE,
    }
    ksampler = Node(node.id, "KSamplerAdvanced", inputs, title=node.title or node.type)
    table = Node(schedule.id, "KSamplerAdvanced", {"model": schedule.inputs.get("model")}, title=schedule.title)
    if shift_of(graph, [table]) != shift_of(graph, [ksampler]):  # (BasicScheduler uses its model's sigma table)
        raise ValueError(
            f"{graph.name}: {describe(schedule)}'s model has another shift than {describe(ksampler)}'s; wanflow "
            "runs one schedule"
        )
    return ksampler


def _noise(graph: Graph, node: Node) -> tuple[str, object]:
    if node.type == "RandomNoise":
        return "enable", node.inputs.get("noise_seed")
    if node.type == "DisableNoise":
        return "disable", 0
    raise ValueError(f"{graph.name}: the noise comes from {describe(node)}; wanflow reads RandomNoise, DisableNoise")


def _guider(graph: Graph, node: Node) -> dict:
    """The model, prompts and cfg of a guider, as a KSamplerAdvanced's inputs."""
    if node.type == "CFGGuider":
        return {name: node.inputs.get(name) for name in ("model", "positive", "negative", "cfg")}
    if node.type == "BasicGuider":  # (the prompt alone: cfg 1, no negative read)
        conditioning = node.inputs.get("conditioning")
        return {"model": node.inputs.get("model"), "positive": conditioning, "negative": conditioning, "cfg": 1.0}
    raise ValueError(f"{graph.name}: the guider is {describe(node)}; wanflow reads CFGGuider and BasicGuider")


def _sigmas(graph: Graph, node: Node) -> tuple[Node, int, int, int]:
    """(the BasicScheduler, its steps, and the steps of them the sampler runs: start, end)."""
    found = graph.source(node, "sigmas")
    if found is None:
        raise ValueError(f"{graph.name}: {describe(node)} has no sigmas input linked")
    source, slot = found
    split, fraction = None, None
    if source.type in ("SplitSigmas", "SplitSigmasDenoise"):
        split, fraction = source, source.type == "SplitSigmasDenoise"
        source = graph.upstream(split, "sigmas")
    if source.type != "BasicScheduler":
        raise ValueError(
            f"{graph.name}: the sigmas come from {describe(source)}; wanflow reads BasicScheduler (through "
            "SplitSigmas or SplitSigmasDenoise)"
        )
    steps = int(graph.value(source, "steps"))
    if float(graph.value(source, "denoise", 1.0)) != 1.0:
        raise ValueError(f"{graph.name}: {describe(source)} denoises part of the way; wanflow starts from noise")
    if split is None:
        return source, steps, 0, LAST
    if fraction:  # (ComfyUI's: the last round(steps * denoise) steps are the low-noise share)
        low = round(steps * float(graph.value(split, "denoise")))
        if not 0 < low <= steps:
            raise ValueError(f"{graph.name}: {describe(split)} leaves the high-noise expert no sigmas")
        at = steps - low
    else:
        at = int(graph.value(split, "step"))
    if not 0 <= at <= steps:
        raise ValueError(f"{graph.name}: {describe(split)} splits at step {at} of {steps}")
    return source, steps, *((0, at) if slot == 0 else (at, LAST))
