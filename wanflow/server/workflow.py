"""``POST /api/workflow``: a ComfyUI Wan 2.2 workflow read into this server's job fields (the page fills its form).

The body is the workflow file itself (the editor's JSON, its API export, or a PNG or MP4 ComfyUI saved;
``?name=FILE`` tells which by its extension). The workflow is read as ``wanflow generate --workflow`` reads it
(``cli/workflow.py``), without looking for its files: the server runs its own models, its LoRAs by the names of its
LoRA folder, and the images are the client's to upload. What cannot carry over is said in ``notes``.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

from anyio import to_thread
from fastapi import HTTPException, Request

from wanflow.cli.lora import LORA_FLAGS
from wanflow.cli.workflow_image import ImageSize
from wanflow.io.comfy_workflow import Graph, read_workflow
from wanflow.server.loras import LoraLibrary
from wanflow.server.uploads import max_body

SUFFIXES = (".json", ".png", ".webp", ".mp4", ".webm", ".mov")
# the workflow's flags this server's job takes under the same name
SAME_NAME = (
    "guidance", "switch_step", "noise_device", "fps", "scheduler", "sigmas", "low_noise_shift", "image_fit",
    "sampler_calls", "call_guide_scale", "call_seeds", "image_scale",
    "nag_scale", "nag_alpha", "nag_tau", "nag_negative_prompt", "riflex", "enhance_a_video", "cache",
    "slg_layers", "slg_scale", "slg_start", "slg_stop", "slg_mode", "slg_percent",
)  # fmt: skip
# the other flags a job carries (under its own names, or read below), and those the server's own setup replaces
CARRIED = {
    "task", "prompt", "negative_prompt", "size", "frame_num", "sample_steps", "sample_shift", "sample_guide_scale",
    "sample_solver", "base_seed", "low_noise_seed", "image", "last_image", *LORA_FLAGS,
}  # fmt: skip
SERVERS_OWN = {"dit", "dit_low", "t5", "vae", "fp8", "t5_cpu", "tokenizer", "vae_tile"}  # (its models, how they run)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ValueError(message)


@dataclass
class WorkflowRead:
    """A workflow file read into this server's job fields (``GenerateRequest``'s names)."""

    task: str
    fields: dict
    notes: list[str]  # what could not carry over
    images: dict[str, str]  # "image" / "last_image": the workflow's file name of that input (the client sends it)
    missing_loras: list[str]  # the workflow's LoRAs this server's LoRA folder lacks (left out of ``fields``)
    graph: Graph


def read_workflow_bytes(
    data: bytes, name: str, loras: LoraLibrary, image_sizes: ImageSize | None = None
) -> WorkflowRead:
    """The workflow in a file's bytes (``name`` tells its kind by its extension), read as ``wanflow generate
    --workflow`` reads it, without looking for its files; ``image_sizes``: its input images' sizes by name, where
    the caller has the images (a video size that follows the image's needs them)."""
    from wanflow.cli.generate import add_arguments
    from wanflow.cli.workflow import Files, graph_settings

    suffix = Path(name).suffix.lower() or ".json"
    if suffix not in SUFFIXES:
        raise ValueError(f"a workflow is a {', '.join(SUFFIXES)} file, got {name!r}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"workflow{suffix}"
        path.write_bytes(data)
        graph = read_workflow(path)
        flags, notes = graph_settings(graph, Files(path.parent, None, lookup=False, image_sizes=image_sizes))
    parser = _Parser()
    add_arguments(parser)
    args = parser.parse_args(flags)
    width, height = args.size
    fields = {
        "task": args.task,
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "width": width,
        "height": height,
        "frames": args.frame_num,
        "steps": args.sample_steps,
        "shift": args.sample_shift,
        "guide_scale": list(guide) if isinstance(guide := args.sample_guide_scale, tuple) else [guide],
        "solver": args.sample_solver,
        "scheduler": args.scheduler,
        "seed": str(args.base_seed),  # (a string: exact past 2^53 in a browser, as the jobs' seeds)
        "low_noise_seed": None if args.low_noise_seed is None else str(args.low_noise_seed),
        **{name: getattr(args, name) for name in SAME_NAME},
    }
    _check_carried(flags)
    missing: list[str] = []
    fields["loras"] = _loras(args, loras, missing)
    notes += [f"LoRA {stem} is not in this server's LoRA folder: left out" for stem in missing]
    images = {flag: getattr(args, flag) for flag in ("image", "last_image") if getattr(args, flag)}
    fields = {k: v for k, v in fields.items() if v is not None}
    return WorkflowRead(args.task, fields, notes, images, missing, graph)


def _check_carried(flags: list[str]) -> None:
    """Every flag of the workflow is a job field here or the server's own to set: a setting the job would drop is an
    error, never a video made without it."""
    dropped = {f[2:] for f in flags if f.startswith("--")} - {*SAME_NAME, *CARRIED, *SERVERS_OWN}
    if dropped:
        raise ValueError(f"the workflow's {sorted(dropped)} do not carry over to this server's jobs")


def workflow_fields(data: bytes, name: str, loras: LoraLibrary) -> dict:
    """``{"task", "fields", "notes"}``: the job fields of a workflow file's bytes, and what the page's user is told."""
    read = read_workflow_bytes(data, name, loras)
    notes = list(read.notes)
    for flag, what in (("image", "start image"), ("last_image", "last image")):
        if flag in read.images:
            notes.append(f"the workflow's {what} is {Path(read.images[flag]).name}: upload it with the job")
    notes.append(f"this server runs its own {read.task} model, not the workflow's files")
    return {"task": read.task, "fields": read.fields, "notes": notes}


def _loras(args: argparse.Namespace, library: LoraLibrary, missing: list[str]) -> list[dict]:
    """The workflow's LoRAs this server has (by file name), each on its expert; the others' names in ``missing``."""
    have = set(library.names())
    chosen = []
    for flag, expert in LORA_FLAGS.items():
        for path, strength in getattr(args, flag) or []:
            stem = Path(path.replace("\\", "/")).name.removesuffix(".safetensors")
            if stem not in have:
                missing.append(stem)
                continue
            given = list(strength) if isinstance(strength, tuple) else strength  # (a tuple: one for each call)
            chosen.append({"name": stem, "strength": given, **({"expert": expert} if expert else {})})
    return chosen


def workflow_routes(api, ctx, loras: LoraLibrary) -> None:
    @api.post("/workflow")
    async def read(request: Request, name: str = "workflow.json") -> dict:
        """A ComfyUI workflow (the request body: the file itself) as this server's job fields, and notes."""
        limit = max_body(ctx.limits)
        if int(request.headers.get("content-length") or 0) > limit:
            raise HTTPException(413, f"a workflow file may be up to {limit} bytes")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise HTTPException(413, f"a workflow file may be up to {limit} bytes")
        try:  # (off the event loop, a few at a time, as uploaded images are decoded)
            return await to_thread.run_sync(workflow_fields, bytes(data), name, loras, limiter=ctx.decodes)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
