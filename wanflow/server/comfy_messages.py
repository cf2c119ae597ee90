"""What ComfyUI's server says about a prompt, in its shapes: the websocket's messages while a job runs (``updates``),
the history's entry of a finished one (``history_item``), the queue's entries (``entry``). The job's row (the store)
and its ComfyUI record (``server.comfy_api.Prompts.record``) are read; nothing is written."""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Callable

import torch

from wanflow import __version__
from wanflow.server.context import Context
from wanflow.server.jobs import TERMINAL
from wanflow.server.previews import read_preview

PREVIEW_IMAGE, PNG = 1, 2  # ComfyUI's binary websocket message: its event number, then its image format's


def _now_ms() -> int:
    return int(time.time() * 1000)


def queue_info(ctx: Context) -> dict:
    counts = ctx.store.counts()
    return {"exec_info": {"queue_remaining": counts["queued"] + counts["running"]}}


def system_stats() -> dict:
    """``GET /system_stats`` in ComfyUI's shape, of this process (clients ask it to see that the server is up and what
    it runs on): the machine's memory, and the device this process would run jobs on (its first GPU, or the CPU; on an
    API server whose workers run the jobs, the API server's own). ``comfyui_version`` names wanflow's."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    ram_total = page * os.sysconf("SC_PHYS_PAGES") if page else 0
    ram_free = page * os.sysconf("SC_AVPHYS_PAGES") if page else 0
    system = {
        "os": os.name, "ram_total": ram_total, "ram_free": ram_free, "comfyui_version": f"wanflow {__version__}",
        "python_version": sys.version, "pytorch_version": torch.__version__, "embedded_python": False,
        "argv": sys.argv,
    }  # fmt: skip
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(0)
        name, index, kind = torch.cuda.get_device_name(0), 0, "cuda"
    else:
        free, total, name, index, kind = ram_free, ram_total, "cpu", None, "cpu"
    device = {"name": name, "type": kind, "index": index, "vram_total": total, "vram_free": free,
              "torch_vram_total": total, "torch_vram_free": free}  # fmt: skip
    return {"system": system, "devices": [device]}


def entry(record: dict) -> list:
    """A queue or history entry: ComfyUI's (number, prompt id, prompt, extra data, outputs to run)."""
    outputs = list(record["nodes"]["outputs"])
    return [record["number"], record["prompt_id"], record["prompt"], record.get("extra_data", {}), outputs]


def _output(job: dict, kind: str) -> dict:
    item = {"filename": f"{job['id']}.mp4", "subfolder": "", "type": "output"}
    if kind == "gifs":
        return {"gifs": [item | {"format": "video/h264-mp4"}]}
    return {"images": [item], "animated": [True]}


def history_item(job: dict, record: dict) -> tuple[str, dict]:
    """(prompt id, ComfyUI's history entry) of a finished job."""
    pid = record["prompt_id"]
    nodes = record["nodes"]
    done = job["status"] == "done"
    outputs = {node: _output(job, kind) for node, kind in nodes["outputs"].items()} if done else {}
    messages = [[kind, data] for kind, data in (*_starting(job, record), *_ending(job, record))]
    status = {"status_str": "success" if done else "error", "completed": done, "messages": messages}
    meta = {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs}
    return pid, {"prompt": entry(record), "outputs": outputs, "status": status, "meta": meta}


def _starting(job: dict, record: dict, stamp: int | None = None) -> list[tuple[str, dict]]:
    """ComfyUI's messages as a prompt starts (none for a prompt cancelled before it started)."""
    if not job.get("started_at"):
        return []
    data = {"prompt_id": record["prompt_id"], "timestamp": stamp or int(job["started_at"] * 1000)}
    return [("execution_start", data), ("execution_cached", {"nodes": []} | data)]


def _ending(job: dict, record: dict) -> list[tuple[str, dict]]:
    """ComfyUI's message as a prompt ends: ``execution_success``, ``execution_interrupted`` or ``execution_error``."""
    pid, nodes = record["prompt_id"], record["nodes"]
    stamp = int((job.get("finished_at") or time.time()) * 1000)
    if job["status"] == "done":
        return [("execution_success", {"prompt_id": pid, "timestamp": stamp})]
    node = _node_at(job, nodes)[0] or nodes["samplers"][0]
    node_type = record["prompt"].get(node, {}).get("class_type", "")
    about = {"prompt_id": pid, "node_id": node, "node_type": node_type, "executed": []}
    if job["status"] == "cancelled":
        return [("execution_interrupted", about | {"timestamp": stamp})]
    error = {"exception_message": job.get("error") or "", "exception_type": "RuntimeError", "traceback": []}
    error |= {"current_inputs": {}, "current_outputs": {}, "timestamp": stamp}
    return [("execution_error", about | error)]


def _node_at(job: dict, nodes: dict) -> tuple[str | None, int, int]:
    """(the node ComfyUI would be running, its progress value, its maximum) for the job's stage and step: the
    sampler of the expert at work, counting its own steps, as each KSamplerAdvanced counts its share."""
    stage = job.get("stage")
    if stage == "text":
        return nodes["text"], 0, 0
    if stage == "decode":
        return nodes["decode"], 0, 0
    if stage != "denoise" or not job.get("steps"):
        return None, 0, 0
    step, steps, samplers, switch = job.get("step") or 0, job["steps"], nodes["samplers"], nodes.get("switch")
    if len(samplers) == 2 and switch:
        if step <= switch:
            return samplers[0], step, switch
        return samplers[1], step - switch, steps - switch
    return samplers[0], step, steps


def updates(ctx: Context, record_of: Callable[[str], dict | None], job_id: str, seen: dict) -> list[dict | bytes]:
    """The websocket messages for what happened to the job since ``seen`` (updated): as ComfyUI sends them while it
    runs a prompt, its live previews as ComfyUI's binary preview messages (event 1, PNG: type 2, then the image)."""
    job = ctx.store.get(job_id)
    record = seen["record"] = seen.get("record") or record_of(job_id)
    if job is None or record is None:
        seen["ended"] = True
        return []
    pid, nodes, out = record["prompt_id"], record["nodes"], []

    def send(kind: str, data: dict) -> None:
        out.append({"type": kind, "data": data | {"prompt_id": pid}})

    if job["status"] != "queued" and not seen.get("started"):
        seen["started"] = True
        for kind, data in _starting(job, record, _now_ms()):
            send(kind, data)
    if job["status"] == "running":
        node, value, maximum = _node_at(job, nodes)
        if node is not None and node != seen.get("node"):
            seen["node"] = node
            send("executing", {"node": node, "display_node": node})
        if node in nodes["samplers"] and value and (node, value) != seen.get("progress"):  # (from the first step)
            seen["progress"] = (node, value)
            send("progress", {"value": value, "max": maximum, "node": node})
        preview = read_preview(ctx.files.preview(job_id), seen.get("preview"))
        if preview is not None:
            seen["preview"] = preview[0]
            out.append(struct.pack(">II", PREVIEW_IMAGE, PNG) + preview[2])
    if job["status"] in TERMINAL:
        seen["ended"] = True
        if job["status"] == "done":
            for node, kind in nodes["outputs"].items():
                send("executing", {"node": node, "display_node": node})
                send("executed", {"node": node, "display_node": node, "output": _output(job, kind)})
        for kind, data in _ending(job, record):
            send(kind, data)
        send("executing", {"node": None, "display_node": None})
    return out
