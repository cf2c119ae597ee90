"""``wanflow generate --workflow FILE``: a ComfyUI Wan 2.2 workflow run by wanflow.

The workflow's graph (``io.comfy_workflow``) is read for what ComfyUI's own Wan nodes set, and each setting becomes
the ``wanflow generate`` flag of the same meaning: the model files (UNETLoader / UnetLoaderGGUF, CLIPLoader,
VAELoader, found under ``--comfy_dir``'s ``models`` folders), the LoRAs on each expert (LoraLoaderModelOnly,
LoraLoader, rgthree's Power Lora Loader), the shift (ModelSamplingSD3), the prompts (CLIPTextEncode), the size, frames
and input images (EmptyHunyuanLatentVideo, Wan22ImageToVideoLatent, WanImageToVideo, WanFirstLastFrameToVideo,
LoadImage, an ImageScale between), the sampling (one KSampler, or the two KSamplerAdvanced nodes of the A14B experts:
steps, cfg per expert, sampler, scheduler, seed, the step the experts switch at; a chain of more KSamplerAdvanced
nodes, each with its guidance, seed and LoRA strengths; CFGZeroStar, WanVideoNAG, skip layer guidance), and the
frame rate of the node that saves the video. A node wanflow cannot run as ComfyUI does is an error
naming it, never skipped in silence; nodes that only change speed (attention kernels, compilation) are passed over
and named in the log.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wanflow.cli.workflow_custom import as_ksamplers
from wanflow.cli.workflow_image import ImageSize, image_source, size_setting
from wanflow.cli.workflow_output import DECODERS, decoder, fps_arguments, tile_arguments, unrun_after
from wanflow.cli.workflow_slg import SLG_NODES, slg_arguments
from wanflow.io.comfy_workflow import POWER_LORA_LOADER, Graph, Node, describe, read_workflow
from wanflow.io.image import image_size
from wanflow.sampling.comfy_schedules import SCHEDULERS, comfy_sigmas
from wanflow.sampling.solvers import REFERENCE_SOLVERS, SOLVERS, get_solver

log = logging.getLogger("wanflow")

SAMPLER_NODES = ("KSamplerAdvanced", "KSampler")
SAMPLERS = tuple(name for name in SOLVERS if name not in REFERENCE_SOLVERS)  # (ComfyUI's)
ALIASES = {"ddim": "euler"}  # ComfyUI's ddim is its euler (with inpainting's noise drawn anew, which no Wan task has)
RIFLEX_NODE = "ApplyRifleXRoPE_WanVideo"  # (KJNodes' "Apply RifleXRoPE WanVideo")
ENHANCE_NODE = "WanVideoEnhanceAVideoKJ"  # (KJNodes' "WanVideo Enhance A Video (native)")
MODEL_NODES = {
    "ModelSamplingSD3", "LoraLoaderModelOnly", "LoraLoader", POWER_LORA_LOADER, "CFGZeroStar", "WanVideoNAG",
    RIFLEX_NODE, ENHANCE_NODE, "EasyCache", *SLG_NODES,
}  # fmt: skip
SPEED_ONLY = {"PathchSageAttentionKJ", "ModelPatchTorchSettings", "TorchCompileModel", "TorchCompileModelWanVideoV2"}
LATENTS = ("EmptyHunyuanLatentVideo", "Wan22ImageToVideoLatent", "WanImageToVideo", "WanFirstLastFrameToVideo")
FOLDERS = {  # ComfyUI's model folders (and their older names)
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
    "vae": ("vae",),
    "loras": ("loras",),
    "input": ("input",),
}
MODEL_FLAGS = ("--dit", "--dit_low", "--t5", "--vae")  # (left out when a checkpoint is named instead)
COMFY_WAN_SHIFT = 8.0  # ComfyUI's shift for Wan models when no ModelSamplingSD3 node sets one
MAX_CALLS = 8  # samplers in a row (ComfyUI's chains run two to four)


def workflow_arguments(path: str | Path, comfy_dir: str | None = None, models: bool = True) -> list[str]:
    """``wanflow generate`` flags for the workflow at ``path``, its files found under ``comfy_dir``; without
    ``models``, not its model files (the caller names a checkpoint instead)."""
    return workflow_settings(path, Files(Path(path).parent, comfy_dir, models))[0]


def workflow_settings(path: str | Path, files: Files) -> tuple[list[str], list[str]]:
    """The flags of the workflow at ``path`` (its files as ``files`` finds them) and what was said about it on the
    way (a sampler run as another, nodes passed over)."""
    return graph_settings(read_workflow(path), files)


def graph_settings(graph: Graph, files: Files) -> tuple[list[str], list[str]]:
    """``workflow_settings`` of a graph read already."""
    try:
        return _settings(graph, files)
    except (TypeError, KeyError, AttributeError, IndexError) as e:  # (a setting of the wrong kind)
        raise ValueError(f"{graph.name}: a malformed workflow ({type(e).__name__}: {e})") from None


def _settings(graph: Graph, files: Files) -> tuple[list[str], list[str]]:
    models = files.models
    as_ksamplers(graph, shift_of)  # (custom sampling nodes: the KSamplerAdvanced each amounts to)
    chain = sampler_chain(graph)
    experts = chain_experts(graph, chain)
    args = sampling_arguments(graph, chain, experts)
    for expert in dict.fromkeys(experts):
        args += model_arguments(graph, [s for s, e in zip(chain, experts, strict=True) if e == expert], expert, files)
    for patch in (nag_arguments, riflex_arguments, enhance_arguments, easycache_arguments):
        args += patch(graph, chain)
    slg = slg_arguments(graph, chain, model_path)
    if slg and "--sigmas" in args:  # (its window is the model's percent, at the shift given sigmas leave out)
        raise ValueError(f"{graph.name}: skip layer guidance beside uni_pc on BasicScheduler's sigmas; wanflow "
                         "runs it with a KSampler or KSamplerAdvanced, or without the node")  # fmt: skip
    args += slg
    args += text_arguments(graph, chain[0], files, guided=any(float(graph.value(s, "cfg")) != 1 for s in chain))
    args += latent_arguments(graph, chain[0], two_experts=experts[-1] == "low", files=files)
    decode = decoder(graph, chain)
    args += ["--vae", files.find(graph.value(graph.upstream(decode, "vae"), "vae_name"), "vae")]
    args += fps_arguments(graph, decode) + tile_arguments(graph, decode)
    for node in unrun_after(graph, decode):
        graph.say(f"{describe(node)} works on the decoded frames and is not run: the video is the decoded frames")
    args += ["--noise_device", "cpu"]  # (ComfyUI draws the initial noise on the CPU: the seed gives its noise anywhere)
    if not models:
        args = [a for i, a in enumerate(args) if a not in MODEL_FLAGS and (i == 0 or args[i - 1] not in MODEL_FLAGS)]
    log.warning("workflow %s: wanflow generate %s", graph.name, shlex.join(args))
    return args, graph.notes


def sampler_chain(graph: Graph) -> list[Node]:
    """The samplers of the video the workflow decodes, first first: one KSampler, or a chain of KSamplerAdvanced
    nodes (the two experts' two, or more: the "three KSampler" recipes)."""
    finals = {s.id: s for s in (graph.upstream(n, "samples") for n in graph.of_type(*DECODERS))}
    if len(finals) != 1:
        raise ValueError(f"{graph.name}: {len(finals)} decoded outputs; wanflow runs a workflow that makes one video")
    chain = [next(iter(finals.values()))]
    while chain[0].type in SAMPLER_NODES and graph.upstream(chain[0], "latent_image").type in SAMPLER_NODES:
        chain.insert(0, graph.upstream(chain[0], "latent_image"))
        if len(chain) > MAX_CALLS:
            raise ValueError(f"{graph.name}: more than {MAX_CALLS} samplers in a row (or a loop of them)")
    if any(s.type not in SAMPLER_NODES for s in chain) or (len(chain) > 1 and chain[0].type == "KSampler"):
        raise ValueError(
            f"{graph.name}: the video comes from {', '.join(map(describe, chain))}; wanflow runs one "
            "KSampler, or KSamplerAdvanced nodes that split one run's steps"
        )
    return chain


def chain_experts(graph: Graph, chain: list[Node]) -> list[str | None]:
    """The expert each sampler runs: None for one model; for two (told apart by their files), ``high`` for the first
    model's samplers and ``low`` for the other's, which come after them."""
    files = [loader_file(graph, s) for s in chain]
    models = list(dict.fromkeys(files))
    if len(models) == 1:
        return [None] * len(chain)
    high = files.index(models[1])
    if len(models) > 2 or models[0] in files[high:]:
        raise ValueError(f"{graph.name}: the samplers run {', '.join(f[0] for f in files)}; wanflow runs the "
                         "high-noise expert's samplers, then the low-noise one's")  # fmt: skip
    return ["high"] * high + ["low"] * (len(chain) - high)


def loader_file(graph: Graph, sampler: Node) -> tuple[str, str]:
    """The file of a sampler's model, and the weight dtype it is loaded at."""
    loader = model_path(graph, sampler)[-1]
    return str(graph.value(loader, "unet_name")), str(graph.value(loader, "weight_dtype", "default"))


def sampling_arguments(graph: Graph, chain: list[Node], experts: list[str | None]) -> list[str]:
    """Steps, guidance, sampler, scheduler, seed and the expert switch of the sampler nodes (and, for more calls than
    the two experts' two, each call's start, guidance and seed)."""
    first = chain[0]
    value = graph.value
    name, scheduler = value(first, "sampler_name"), value(first, "scheduler")
    steps = int(value(first, "steps"))
    for key in ("steps", "sampler_name", "scheduler"):
        if any(value(s, key) != value(first, key) for s in chain):
            raise ValueError(f"{graph.name}: the samplers differ in {key}; wanflow runs one schedule for all")
    solver = solver_name(graph, first, name)
    args = ["--sample_solver", solver]
    if scheduler not in SCHEDULERS:
        raise ValueError(f"{graph.name}: scheduler {scheduler!r}; wanflow has ComfyUI's {sorted(SCHEDULERS)}")
    shift, low = expert_shifts(graph, chain, experts)  # (the low-noise calls lay their steps out at their own shift)
    if value(first, "sigmas_as_given", False):  # (custom sampling's uni_pc: BasicScheduler's sigmas themselves)
        args += ["--sigmas", ",".join(repr(s) for s in comfy_sigmas(scheduler, steps, shift).tolist())]
    else:
        args += ["--sample_steps", str(steps), "--scheduler", scheduler, "--sample_shift", f"{shift:.10g}"]
        if low is not None and low != shift:
            args += ["--low_noise_shift", f"{low:.10g}"]
    seed = value(first, "noise_seed" if first.type == "KSamplerAdvanced" else "seed")
    args += ["--base_seed", str(int(seed))]
    cfg = [float(value(s, "cfg")) for s in chain]
    by_expert = [cfg[experts.index(e)] for e in dict.fromkeys(experts)]  # (each expert's first call's)
    args += ["--sample_guide_scale", ",".join(f"{c:g}" for c in reversed(by_expert))]  # (low-noise, high-noise)
    if len(chain) == 1:
        if first.type == "KSamplerAdvanced":
            check_alone(graph, first, steps)
        elif float(value(first, "denoise", 1.0)) != 1.0:
            raise ValueError(
                f"{graph.name}: {describe(first)} denoises {value(first, 'denoise')} of the way from "
                "an empty latent; wanflow starts from noise (or from a video: --video)"
            )
        return args
    starts = check_chain(graph, chain, steps)
    seeds = [str(int(value(s, "noise_seed"))) for s in chain[1:]]  # (the later calls' step noise)
    noised = get_solver(solver).noised
    switch = ["--switch_step", str(starts[experts.index("low")])] if "low" in experts else []
    if experts == ["high", "low"]:  # (the two experts' two calls: the reference's flags)
        return [*args, *switch, *(["--low_noise_seed", seeds[0]] if noised else [])]
    args += [*switch, "--sampler_calls", ",".join(map(str, starts[1:]))]
    args += ["--call_guide_scale", ",".join(f"{c:g}" for c in cfg)]
    return args + (["--call_seeds", ",".join(seeds)] if noised else [])


def solver_name(graph: Graph, node: Node, name: str) -> str:
    if name in SAMPLERS:
        return name
    if name in ALIASES:
        graph.say(f"{describe(node)}'s sampler {name} is ComfyUI's {ALIASES[name]}: run as {ALIASES[name]}")
        return ALIASES[name]
    raise ValueError(
        f"{graph.name}: {describe(node)} uses sampler {name!r}; wanflow runs ComfyUI's {sorted([*SAMPLERS, *ALIASES])}"
    )


def check_chain(graph: Graph, chain: list[Node], steps: int) -> list[int]:
    """The step each KSamplerAdvanced starts at, where the nodes split one run (ComfyUI's split): the first from step
    0 adding noise, each next one from the step the one before ends at without adding noise, each but the last
    returning its leftover noise, the last to the end."""
    value = graph.value
    if any(s.type != "KSamplerAdvanced" for s in chain):
        raise ValueError(f"{graph.name}: samplers in a row must be KSamplerAdvanced nodes")
    starts = [int(value(s, "start_at_step")) for s in chain]
    ends = [int(value(s, "end_at_step")) for s in chain]
    ok = (
        starts[0] == 0
        and all(0 < end < steps and end == nxt for end, nxt in zip(ends[:-1], starts[1:], strict=True))
        and starts == sorted(set(starts))
        and ends[-1] >= steps
        and value(chain[0], "add_noise") == "enable"
        and all(value(s, "add_noise") == "disable" for s in chain[1:])
        and all(value(s, "return_with_leftover_noise") == "enable" for s in chain[:-1])
    )
    if not ok:
        raise ValueError(
            f"{graph.name}: the KSamplerAdvanced nodes do not split one run (the first from step 0 adding noise "
            "and returning it, each next one from the step the one before ends at without adding noise); wanflow "
            "runs that split only"
        )
    return starts


def check_alone(graph: Graph, node: Node, steps: int) -> None:
    value = graph.value
    if int(value(node, "start_at_step")) != 0 or int(value(node, "end_at_step")) < steps:
        raise ValueError(f"{graph.name}: {describe(node)} runs part of its steps; wanflow runs them all")
    if value(node, "add_noise") != "enable":
        raise ValueError(f"{graph.name}: {describe(node)} adds no noise; wanflow starts from noise")


def model_path(graph: Graph, sampler: Node) -> list[Node]:
    """The nodes from the sampler's model input up to its loader, loader last."""
    path, node = [], graph.upstream(sampler, "model")
    while True:
        path.append(node)
        if len(path) > len(graph.nodes):
            raise ValueError(f"{graph.name}: the model nodes before {describe(sampler)} form a loop")
        if node.type in ("UNETLoader", "UnetLoaderGGUF"):
            return path
        if node.type not in MODEL_NODES | SPEED_ONLY:
            raise ValueError(
                f"{graph.name}: {describe(node)} changes the model, and wanflow does not know how; "
                "bypass it, or run the workflow in ComfyUI"
            )
        if node.type in SPEED_ONLY:
            graph.say(f"{describe(node)} only changes speed; passed over")
        node = graph.upstream(node, "model")


def shifts_of(graph: Graph, chain: list[Node]) -> list[float]:
    """The shift of each sampler's model: its ModelSamplingSD3's, else ComfyUI's for Wan."""
    shifts = []
    for sampler in chain:
        found = [graph.value(n, "shift") for n in model_path(graph, sampler) if n.type == "ModelSamplingSD3"]
        shifts.append(round(float(found[0]), 6) if found else COMFY_WAN_SHIFT)  # (the editor saves 8.000000000000002)
    return shifts


def shift_of(graph: Graph, chain: list[Node]) -> float:
    """The one shift of the samplers' models, or an error."""
    shifts = set(shifts_of(graph, chain))
    if len(shifts) > 1:
        raise ValueError(f"{graph.name}: the models' ModelSamplingSD3 shifts differ ({sorted(shifts)})")
    return shifts.pop()


def expert_shifts(graph: Graph, chain: list[Node], experts: list[str | None]) -> tuple[float, float | None]:
    """The shift of the first expert's samplers, and of the low-noise expert's (None without one): one each."""
    shifts = shifts_of(graph, chain)
    found = [{s for s, e in zip(shifts, experts, strict=True) if e == expert} for expert in dict.fromkeys(experts)]
    if any(len(f) > 1 for f in found):
        raise ValueError(f"{graph.name}: one expert's samplers have models of different ModelSamplingSD3 shifts "
                         f"({sorted(shifts)})")  # fmt: skip
    return found[0].pop(), found[1].pop() if len(found) > 1 else None


def model_arguments(graph: Graph, calls: list[Node], expert: str | None, files: Files) -> list[str]:
    """The DiT file of one expert (``expert`` None: the only model), the LoRAs of its sampler calls (where their
    strengths differ between its calls, one for each: ``PATH:S1,S2``), FP8 and CFG-Zero*."""
    paths = [model_path(graph, sampler) for sampler in calls]
    loader = paths[0][-1]
    args = [
        "--dit_low" if expert == "low" else "--dit",
        files.find(graph.value(loader, "unet_name"), "diffusion_models"),
    ]
    if str(graph.value(loader, "weight_dtype", "default")).startswith("fp8_e4m3fn"):
        args.append("--fp8")
    flag = {"high": "--lora_high", "low": "--lora_low", None: "--lora"}[expert]
    strengths: dict[str, list[float]] = {}  # file -> its strength in each call (summed where loaded twice)
    for k, path in enumerate(paths):
        for node in reversed(path):
            for name, strength in loras_of(graph, node):
                strengths.setdefault(name, [0.0] * len(paths))[k] += strength
    for name, per_call in strengths.items():
        given = f"{per_call[0]:g}" if len(set(per_call)) == 1 else ",".join(f"{s:g}" for s in per_call)
        args += [flag, f"{files.find(name, 'loras')}:{given}"]
    if expert != "low" and any(n.type == "CFGZeroStar" for path in paths for n in path):
        args += ["--guidance", "cfg_zero_star:0"]  # (ComfyUI's node: the optimised scale, no zeroed steps)
    return args


def loras_of(graph: Graph, node: Node) -> list[tuple[str, float]]:
    """The LoRAs a model node loads, in order, as (file name, model strength), those at strength 0 (or switched off)
    left out: ComfyUI's LoraLoaderModelOnly and LoraLoader, rgthree's Power Lora Loader (its rows ``lora_1``, ...:
    ``on``, ``lora``, ``strength`` for the model; ``strengthTwo``, the text encoder's, changes nothing on Wan)."""
    if node.type in ("LoraLoaderModelOnly", "LoraLoader"):
        found = [(graph.value(node, "lora_name"), float(graph.value(node, "strength_model")))]
    elif node.type == POWER_LORA_LOADER:
        rows = [v for k, v in node.inputs.items() if k.upper().startswith("LORA_") and isinstance(v, dict)]
        rows = [r for r in rows if {"on", "lora", "strength"} <= set(r)]  # (as the node reads its rows)
        found = [(r["lora"], float(r["strength"])) for r in rows if r["on"]]
    else:
        return []
    return [(name, strength) for name, strength in found if strength != 0]


def on_every_sampler(graph: Graph, chain: list[Node], kind: str, read: Callable[[Node], Any]) -> Any:
    """``read`` of the ``kind`` node on each sampler's model, the same on every one (wanflow runs one for the whole
    run), or an error; None where no sampler's model has one."""
    found = []
    for sampler in chain:
        nodes = [n for n in model_path(graph, sampler) if n.type == kind]
        found.append(read(nodes[0]) if nodes else None)
    if len(set(found)) > 1:
        raise ValueError(f"{graph.name}: {kind} differs between the samplers' models; wanflow runs one on every call")
    return found[0]


def check_video_latent(graph: Graph, node: Node, chain: list[Node], what: str) -> None:
    """A node that reads the frame count of the latent it is given: that latent must be the video's (or one of its
    frames), since wanflow's ``what`` works on the frames the DiT sees."""
    latent, video = graph.upstream(node, "latent"), graph.upstream(chain[0], "latent_image")
    frames = [int(graph.value(n, "length", -1)) for n in (latent, video)]
    if latent.id != video.id and (latent.type not in LATENTS or frames[0] != frames[1]):
        raise ValueError(f"{graph.name}: {describe(node)} is given {describe(latent)}, not the video's latent "
                         f"({describe(video)}); wanflow's {what} works on the video's own frames")  # fmt: skip


def nag_arguments(graph: Graph, chain: list[Node]) -> list[str]:
    """KJNodes' WanVideoNAG (scale, alpha, tau and the negative prompt of its conditioning) as wanflow's NAG, which
    runs the authors' formulation on every expert."""

    def read(node: Node) -> tuple:
        numbers = (float(graph.value(node, k)) for k in ("nag_scale", "nag_alpha", "nag_tau"))
        return (*numbers, str(graph.value(prompt_node(graph, node, "conditioning", 0), "text")))

    found = on_every_sampler(graph, chain, "WanVideoNAG", read)
    if found is None:
        return []
    scale, alpha, tau, negative = found
    if scale <= 1:
        graph.say(f"WanVideoNAG at scale {scale:g} changes nothing (NAG acts above 1); left out")
        return []
    graph.say("KJNodes' WanVideoNAG runs as wanflow's NAG (the authors' formulation)")
    return ["--nag_scale", f"{scale:g}", "--nag_alpha", f"{alpha:g}", "--nag_tau", f"{tau:g}",
            "--nag_negative_prompt", negative]  # fmt: skip


def riflex_arguments(graph: Graph, chain: list[Node]) -> list[str]:
    """KJNodes' Apply RifleXRoPE WanVideo as ``--riflex K`` (its frequency for the frames of the video's latent)."""

    def read(node: Node) -> int:
        check_video_latent(graph, node, chain, "RIFLEx")
        return int(graph.value(node, "k"))

    k = on_every_sampler(graph, chain, RIFLEX_NODE, read)
    if k is None:
        return []
    graph.say(f"KJNodes' {RIFLEX_NODE} runs as wanflow's RIFLEx (--riflex {k})")
    return ["--riflex", str(k)]


def enhance_arguments(graph: Graph, chain: list[Node]) -> list[str]:
    """KJNodes' WanVideo Enhance A Video (native) as ``--enhance_a_video W`` (for the frames of the video's latent);
    its weight 0 leaves the model as it is."""

    def read(node: Node) -> float:
        check_video_latent(graph, node, chain, "Enhance-A-Video")
        return float(graph.value(node, "weight"))

    weight = on_every_sampler(graph, chain, ENHANCE_NODE, read)
    if not weight:
        return []
    graph.say(f"KJNodes' {ENHANCE_NODE} runs as wanflow's Enhance-A-Video (--enhance_a_video {weight:g})")
    return ["--enhance_a_video", f"{weight:g}"]


def easycache_arguments(graph: Graph, chain: list[Node]) -> list[str]:
    """ComfyUI's EasyCache node as ``--cache easycache:T:START:END``."""
    keys = ("reuse_threshold", "start_percent", "end_percent")
    found = on_every_sampler(graph, chain, "EasyCache", lambda n: tuple(float(graph.value(n, k)) for k in keys))
    if found is None:
        return []
    graph.say("ComfyUI's EasyCache runs as wanflow's (its rule on each sampler call)")
    return ["--cache", "easycache:{:g}:{:g}:{:g}".format(*found)]


def text_arguments(graph: Graph, sampler: Node, files: Files, guided: bool) -> list[str]:
    """The prompt, the negative prompt (where guidance reads it) and the text encoder file."""
    positive = prompt_node(graph, sampler, "positive", 0)
    args = ["--prompt", str(graph.value(positive, "text"))]
    if guided:
        args += ["--negative_prompt", str(graph.value(prompt_node(graph, sampler, "negative", 1), "text"))]
    encoder = graph.upstream(positive, "clip")
    if encoder.type not in ("CLIPLoader", "CLIPLoaderGGUF"):
        raise ValueError(f"{graph.name}: the prompt is encoded by {describe(encoder)}; wanflow reads a CLIPLoader")
    args += ["--t5", files.find(graph.value(encoder, "clip_name"), "text_encoders")]
    return args + (["--t5_cpu"] if graph.value(encoder, "device") == "cpu" else [])


def prompt_node(graph: Graph, sampler: Node, name: str, slot: int) -> Node:
    """The CLIPTextEncode node of a sampler's conditioning, through the image-to-video nodes that pass it on."""
    node = graph.upstream(sampler, name)
    for _ in graph.nodes:
        if node.type not in ("WanImageToVideo", "WanFirstLastFrameToVideo"):
            break
        node = graph.upstream(node, name)
    if node.type != "CLIPTextEncode":
        raise ValueError(
            f"{graph.name}: the {name} conditioning comes from {describe(node)}; wanflow reads a "
            "CLIPTextEncode (with a cfg of 1 the negative one is not read)"
        )
    return node


def latent_arguments(graph: Graph, sampler: Node, two_experts: bool, files: Files) -> list[str]:
    """Task, size, frames and the input images of the latent the first sampler starts from."""
    node = graph.upstream(sampler, "latent_image")
    if node.type not in LATENTS:
        raise ValueError(f"{graph.name}: the video starts from {describe(node)}; wanflow reads {', '.join(LATENTS)}")
    if int(graph.value(node, "batch_size", 1)) != 1:
        raise ValueError(f"{graph.name}: {describe(node)} makes a batch; wanflow makes one video a run")
    images = {"WanImageToVideo": "i2v-A14B", "WanFirstLastFrameToVideo": "i2v-A14B"}
    task = images.get(node.type, "t2v-A14B" if two_experts else "ti2v-5B")
    if (task == "ti2v-5B") == two_experts:
        raise ValueError(
            f"{graph.name}: {describe(node)} with {'two experts' if two_experts else 'one model'}: not a Wan 2.2 task"
        )
    width, height = (size_setting(graph, node, k, files.image_size) for k in ("width", "height"))
    length = int(graph.value(node, "length"))
    args = ["--task", task, "--size", f"{width}*{height}", "--frame_num", str(length)]
    scales = set()
    for name, flag in (("start_image", "--image"), ("end_image", "--last_image")):
        if graph.source(node, name) is not None:
            loader, scale = image_source(graph, node, name)
            scales.add(scale)
            args += [flag, files.find(graph.value(loader, "image"), "input")]
    if task == "i2v-A14B" and "--image" not in args:
        raise ValueError(f"{graph.name}: {describe(node)} has no start_image")
    if len(scales) > 1:
        raise ValueError(f"{graph.name}: the two images are scaled differently ({sorted(map(str, scales))}); "
                         "wanflow scales both alike")  # fmt: skip
    scale = next(iter(scales), None)
    args += [] if scale is None else ["--image_scale", scale]
    return args + (["--image_fit", "crop"] if "--image" in args else [])  # (the node's size, the image fit to it)


class Files:
    """Where the files a workflow names are: ComfyUI's folders under ``comfy_dir`` (ComfyUI's folder, or its
    ``models`` folder), else beside the workflow, else the current folder."""

    def __init__(
        self,
        workflow_dir: Path,
        comfy_dir: str | None,
        models: bool = True,
        lookup: bool = True,
        image_sizes: ImageSize | None = None,
    ):
        self.workflow_dir, self.comfy_dir = workflow_dir, Path(comfy_dir) if comfy_dir else None
        self.models = models  # False: the model files are not looked for (a checkpoint is named instead)
        self.lookup = lookup  # False: no file is looked for, names are kept as the workflow gives them (a server's)
        self.image_sizes = image_sizes  # (without lookup: the input images' sizes by name, where the caller has them)

    def image_size(self, name: str) -> tuple[int, int]:
        """The (width, height) of the input image ``name``, upright (as LoadImage reads it)."""
        if self.lookup:
            return image_size(self.find(name, "input"))
        if self.image_sizes is None:
            raise ValueError(f"the video's size follows the size of the image {name}: send the workflow with it")
        return self.image_sizes(name)

    def find(self, name: str, kind: str) -> str:
        if not self.lookup or (not self.models and kind in ("diffusion_models", "text_encoders", "vae")):
            return str(name)
        relative = Path(str(name).replace("\\", "/"))
        places = []
        if self.comfy_dir is not None:
            for folder in FOLDERS[kind]:
                top = self.comfy_dir if kind == "input" else self.comfy_dir / "models"
                places += [top / folder, self.comfy_dir / folder]
        places += [self.workflow_dir, Path.cwd()]
        for place in places:
            if (place / relative).is_file():
                return str(place / relative)
        where = ", ".join(dict.fromkeys(str(p) for p in places))
        raise ValueError(f"the workflow's {kind} file {name} is not in {where}; pass --comfy_dir (ComfyUI's folder)")
