"""ComfyUI's server API, for the Wan 2.2 workflows wanflow runs: a program written for ComfyUI's API (its script
examples, bots, front ends that queue API-format workflows and read the outputs back) runs against this server.

``POST /prompt`` takes ``{"prompt": <API-format workflow>, "client_id", "prompt_id"}`` and queues it as a job of
this server (read as ``wanflow generate --workflow`` reads it, ``server.workflow``; its LoRAs by this server's LoRA
folder, its LoadImage files from ``POST /upload/image``); ``/ws?clientId=`` tells that client what ComfyUI tells it
(``status``, ``execution_start``, ``executing`` for the sampler, decode and save nodes, ``progress`` per sampler
node, ``executed`` with the video, ``execution_success`` / ``execution_error`` / ``execution_interrupted``, and
``executing`` with node null at the end); ``/history``, ``/view``, ``/queue``, ``/interrupt`` and ``/system_stats``
answer as ComfyUI's do. Where ComfyUI would run the workflow and wanflow would not run it the same way, the prompt is
refused (400, in ComfyUI's error shape), never run differently in silence. Every job is also a job of the native
API: the prompt id is the job id written as a UUID.

The video is the job's MP4 whatever the workflow's save node asked for (``filename`` ``<job id>.mp4``). A client's
websocket follows the prompts it queued on this API server (with several API servers, keep a client on one).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
from pathlib import Path

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Form, HTTPException, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse

from wanflow.cli.workflow import decoder, sampler_chain
from wanflow.cli.workflow_output import unrun_after
from wanflow.io.comfy_workflow import describe
from wanflow.io.image import image_size
from wanflow.server.comfy_messages import entry, history_item, queue_info, system_stats, updates
from wanflow.server.context import Context
from wanflow.server.errors import has_token
from wanflow.server.jobs import TERMINAL
from wanflow.server.loras import LoraLibrary
from wanflow.server.uploads import decode_image, max_body
from wanflow.server.video_upload import Inputs
from wanflow.server.workflow import WorkflowRead, read_workflow_bytes

# ComfyUI's save nodes for a video, and the key of their output (``executed`` and the history)
OUTPUT_NODES = {
    "SaveVideo": "images",
    "SaveWEBM": "images",
    "SaveAnimatedWEBP": "images",
    "SaveAnimatedPNG": "images",
    "VHS_VideoCombine": "gifs",
}
MAX_CLIENTS = 10_000  # websocket clients whose jobs an API server remembers
SAFE_NAME = re.compile(r"^[\w][\w .()+,=@-]{0,199}$")  # an uploaded image's name (and each folder of its subfolder)


def _error(status: int, kind: str, message: str, details: str = "") -> JSONResponse:
    """ComfyUI's answer to a prompt it refuses."""
    error = {"type": kind, "message": message, "details": details, "extra_info": {}}
    return JSONResponse({"error": error, "node_errors": {}}, status)


def prompt_id_of(job_id: str) -> str:
    return str(uuid.UUID(hex=job_id))


def job_id_of(prompt_id: str) -> str | None:
    """The job of a prompt id (a UUID in any of its spellings); None for anything else."""
    try:
        return uuid.UUID(str(prompt_id)).hex
    except ValueError:
        return None


class Prompts:
    """The prompts queued through this API: a record per job (``comfy/prompts/<job id>.json`` in the shared data
    folder: the workflow, its client, its nodes) and the uploaded inputs (``comfy/input``)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.root = ctx.files.root / "comfy"
        self.numbers = itertools.count(int(time.time()))  # (ComfyUI's queue numbers only grow)
        self.clients: dict[str, list[str]] = {}  # client id -> its job ids not yet reported finished, on this server
        self.sockets: dict[str, WebSocket] = {}  # client id -> its open websocket on this server

    @property
    def inputs(self) -> Path:
        return self.root / "input"

    def path(self, job_id: str) -> Path:
        return self.ctx.files.comfy_prompt(job_id)

    def record(self, job_id: str) -> dict | None:
        try:
            return json.loads(self.path(job_id).read_text())
        except (OSError, ValueError):
            return None

    def save(self, job_id: str, record: dict) -> None:
        self.path(job_id).parent.mkdir(parents=True, exist_ok=True)
        self.path(job_id).write_text(json.dumps(record))

    def remove(self, job_id: str) -> None:
        self.path(job_id).unlink(missing_ok=True)

    def jobs(self, statuses: tuple[str, ...]) -> list[tuple[dict, dict]]:
        """(job, record) of the prompts in ``statuses``, oldest first."""
        out = []
        for status in statuses:
            for job in self.ctx.store.list(status, 1000):
                record = self.record(job["id"])
                if record is not None:
                    out.append((job, record))
        return sorted(out, key=lambda pair: pair[1]["number"])

    def follow(self, client: str, job_id: str) -> None:
        """The job is the client's to hear about on its websocket (the clients' lists kept short: the jobs of a
        client that never listened, finished a minute ago, are dropped, and the oldest clients beyond
        ``MAX_CLIENTS``)."""
        jobs = [j for j in self.clients.pop(client, []) if not self._long_finished(j)]
        self.clients[client] = [*jobs, job_id]
        while len(self.clients) > MAX_CLIENTS:
            del self.clients[next(iter(self.clients))]

    def _long_finished(self, job_id: str) -> bool:
        job = self.ctx.store.get(job_id)
        return job is None or (job["status"] in TERMINAL and (job.get("finished_at") or 0) < time.time() - 60)

    def input_file(self, name: str, subfolder: str = "") -> Path:
        """An uploaded input by its name (ComfyUI's ``name [input]`` too); ValueError for names outside the folder."""
        name = name.removesuffix(" [input]")
        parts = [p for p in (subfolder.replace("\\", "/") + "/" + name.replace("\\", "/")).split("/") if p]
        if not parts or not all(SAFE_NAME.match(p) and p not in (".", "..") for p in parts):
            raise ValueError(f"{name!r} is not a name of an uploaded input")
        return self.inputs.joinpath(*parts)


def nodes_of(read: WorkflowRead) -> dict:
    """The nodes ComfyUI would report for the workflow's stages: its samplers (first first), its text encoder, its
    decoder and its save nodes (with their output key)."""
    graph = read.graph
    samplers = sampler_chain(graph)
    decode = decoder(graph, samplers)
    for node in unrun_after(graph, decode):
        raise ValueError(
            "invalid_prompt", f"{describe(node)} works on the decoded frames; wanflow saves the decoded frames as they "
            "are: bypass it, or run the workflow in ComfyUI",
        )  # fmt: skip
    try:
        text = graph.upstream(samplers[0], "positive").id
    except ValueError:
        text = None
    outputs = {n.id: OUTPUT_NODES[n.type] for n in graph.of_type(*OUTPUT_NODES)}
    return {
        "samplers": [s.id for s in samplers],
        "text": text,
        "decode": decode.id,
        "outputs": outputs,
        "switch": read.fields.get("switch_step"),
    }


def _check_prompt(body: object) -> tuple[dict, str | None, str | None]:
    """(the API-format workflow, the client id, the prompt id given) of a ``/prompt`` body; ValueError with
    ComfyUI's error kind as its first argument."""
    if not isinstance(body, dict) or "prompt" not in body:
        raise ValueError("no_prompt", "No prompt provided")
    prompt = body["prompt"]
    if not isinstance(prompt, dict) or not all(isinstance(v, dict) and "class_type" in v for v in prompt.values()):
        raise ValueError("invalid_prompt", "the prompt is not an API-format workflow (ComfyUI's Export (API))")
    client = body.get("client_id")
    given = body.get("prompt_id")
    if given is not None and job_id_of(given) is None:
        raise ValueError("invalid_prompt", f"prompt_id {given!r} is not a UUID")
    return prompt, None if client is None else str(client), None if given is None else str(given)


def comfy_routes(app: FastAPI, ctx: Context, loras: LoraLibrary, auth: list, token: str | None) -> None:
    prompts = Prompts(ctx)
    api = APIRouter(dependencies=auth, tags=["ComfyUI API"])

    @api.post("/prompt")
    async def queue_prompt(request: Request):
        """Queue an API-format Wan 2.2 workflow: ``{"prompt", "client_id", "prompt_id"}`` -> ``{"prompt_id",
        "number", "node_errors"}``."""
        limit = max_body(ctx.limits)
        data = await request.body()
        if len(data) > limit:
            raise HTTPException(413, f"a prompt may be up to {limit} bytes")
        try:
            body = json.loads(data)
            prompt, client, given = _check_prompt(body)
        except RecursionError:
            return _error(400, "invalid_prompt", "the JSON body is nested too deeply")
        except ValueError as e:
            kind, message = e.args if len(e.args) == 2 else ("invalid_prompt", "the body is not valid JSON")
            return _error(400, kind, message)
        try:
            read, nodes, inputs = await to_thread.run_sync(
                _read_prompt, prompts, prompt, loras, ctx, limiter=ctx.decodes
            )
        except ValueError as e:
            kind, message = e.args if len(e.args) == 2 else ("invalid_prompt", str(e))
            return _error(400, kind, "the prompt cannot run on this server", message)
        job_id = job_id_of(given) if given is not None else uuid.uuid4().hex
        if ctx.store.get(job_id) is not None:
            return _error(400, "invalid_prompt", f"prompt_id {given} is in use")
        number = next(prompts.numbers)
        extra = body_extra(body, client)
        record = {"prompt_id": given or prompt_id_of(job_id), "number": number, "client_id": client, "prompt": prompt}
        prompts.save(job_id, record | {"extra_data": extra, "nodes": nodes, "notes": read.notes})
        try:
            await ctx.submit(read.fields, inputs, job_id=job_id)
        except HTTPException as e:
            prompts.remove(job_id)
            return _error(e.status_code if e.status_code == 429 else 400, "invalid_prompt", str(e.detail))
        if client is not None:
            prompts.follow(client, job_id)
        return {"prompt_id": record["prompt_id"], "number": number, "node_errors": {}, "notes": read.notes}

    @api.get("/prompt")
    def queue_remaining() -> dict:
        return queue_info(ctx)

    @api.get("/system_stats")
    def stats() -> dict:
        return system_stats()

    @api.get("/queue")
    def queue() -> dict:
        running = [entry(r) for _, r in prompts.jobs(("running",))]
        return {"queue_running": running, "queue_pending": [entry(r) for _, r in prompts.jobs(("queued",))]}

    @api.post("/queue")
    async def change_queue(request: Request):
        """``{"delete": [prompt ids]}`` cancels those waiting; ``{"clear": true}`` every prompt waiting."""
        body = await _json_or_empty(request)
        waiting = {job["id"] for job, _ in prompts.jobs(("queued",))}
        chosen = waiting if body.get("clear") is True else _prompt_ids(body.get("delete")) & waiting
        for job_id in chosen:
            ctx.cancel(job_id)
        return JSONResponse({})

    @api.post("/interrupt")
    async def interrupt(request: Request):
        """Cancels the running prompt (``{"prompt_id"}``: only that one, if it runs)."""
        body = await _json_or_empty(request)
        given = body.get("prompt_id")
        wanted = None if given is None else job_id_of(given)
        for job, _ in prompts.jobs(("running",)):
            if given is None or job["id"] == wanted:  # (a prompt id that is no UUID: none of them)
                ctx.cancel(job["id"])
        return JSONResponse({})

    @api.get("/history")
    def history(max_items: int | None = None) -> dict:
        finished = prompts.jobs(tuple(TERMINAL))
        if max_items is not None:
            finished = finished[-max_items:] if max_items > 0 else []
        return dict(history_item(job, record) for job, record in finished)

    @api.get("/history/{prompt_id}")
    def history_of(prompt_id: str) -> dict:
        job_id = job_id_of(prompt_id)
        job = None if job_id is None else ctx.store.get(job_id)
        record = None if job_id is None else prompts.record(job_id)
        if job is None or record is None or job["status"] not in TERMINAL:
            return {}
        return dict([history_item(job, record)])

    @api.post("/history")
    async def change_history(request: Request):
        """``{"delete": [prompt ids]}`` or ``{"clear": true}``: out of the history (the jobs stay in the job API)."""
        body = await _json_or_empty(request)
        finished = {job["id"] for job, _ in prompts.jobs(tuple(TERMINAL))}
        chosen = finished if body.get("clear") is True else _prompt_ids(body.get("delete")) & finished
        for job_id in chosen:
            prompts.remove(job_id)
        return JSONResponse({})

    @api.post("/upload/image")
    async def upload_image(
        image: UploadFile, overwrite: str = Form(""), subfolder: str = Form(""), type: str = Form("input")
    ):
        """An input for the workflows' LoadImage nodes: ``{"name", "subfolder", "type"}``."""
        if type not in ("input", "temp"):
            raise HTTPException(400, f"this server keeps uploads as inputs; type {type!r} is not one")
        data = await image.read(ctx.limits.max_upload + 1)
        if len(data) > ctx.limits.max_upload:
            raise HTTPException(413, f"an image may be up to {ctx.limits.max_upload} bytes")
        await to_thread.run_sync(decode_image, data, ctx.limits, limiter=ctx.decodes)  # (an image, within limits)
        try:
            path = prompts.input_file(Path(image.filename or "").name, subfolder)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        path = path if overwrite.lower() in ("true", "1") else _free_name(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return {"name": path.name, "subfolder": subfolder, "type": "input"}

    @api.get("/view")
    def view(filename: str, type: str = "output", subfolder: str = "") -> FileResponse:
        """A prompt's video (``type=output``) or an uploaded input (``type=input``)."""
        if type == "input":
            try:
                path = prompts.input_file(filename, subfolder)
            except ValueError as e:
                raise HTTPException(400, str(e)) from None
            if not path.is_file():
                raise HTTPException(404, f"no input {filename}")
            return FileResponse(path)
        job_id = filename.removesuffix(".mp4") if filename.endswith(".mp4") else ""
        job = ctx.store.get(job_id) if re.fullmatch(r"[0-9a-f]{32}", job_id) else None
        if type != "output" or subfolder or job is None or job["status"] != "done":
            raise HTTPException(404, f"no output {filename}")
        return FileResponse(ctx.files.output(job), media_type="video/mp4", filename=filename)

    @app.websocket("/ws")
    async def websocket(ws: WebSocket, clientId: str = "") -> None:  # (clientId: ComfyUI's name)
        if not has_token(ws, token, query=True):  # (a websocket takes no header from a browser)
            await ws.close(code=1008)
            return
        await ws.accept()
        sid = clientId or uuid.uuid4().hex
        prompts.sockets[sid] = ws  # (a client that connects again is told here, not on its older socket)
        await ws.send_json({"type": "status", "data": {"status": queue_info(ctx), "sid": sid}})
        followed: dict[str, dict] = {}
        listening = asyncio.create_task(_until_closed(ws))  # (what the client sends is not used)
        try:
            while not ctx.stopping and not listening.done() and prompts.sockets.get(sid) is ws:
                for job_id in prompts.clients.get(sid, []):
                    followed.setdefault(job_id, {})
                for job_id, seen in list(followed.items()):
                    for message in updates(ctx, prompts.record, job_id, seen):
                        await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_json(message))
                    if seen.get("ended"):
                        del followed[job_id]
                        if job_id in prompts.clients.get(sid, []):
                            prompts.clients[sid].remove(job_id)
                        await ws.send_json({"type": "status", "data": {"status": queue_info(ctx)}})
                await asyncio.sleep(ctx.interval)
        except WebSocketDisconnect:
            pass
        finally:
            listening.cancel()
            if prompts.sockets.get(sid) is ws:
                del prompts.sockets[sid]

    app.include_router(api)


def body_extra(body: dict, client: str | None) -> dict:
    extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
    return extra | ({"client_id": client} if client is not None else {})


def _read_prompt(prompts: Prompts, prompt: dict, loras: LoraLibrary, ctx: Context) -> tuple[WorkflowRead, dict, Inputs]:
    """The job a prompt makes (blocking: a worker thread): its fields, nodes and input images; ValueError when this
    server would not run it as ComfyUI would."""
    read = read_workflow_bytes(json.dumps(prompt).encode(), "prompt.json", loras, lambda name: _size(prompts, name))
    if read.missing_loras:
        missing = ", ".join(read.missing_loras)
        raise ValueError("value_not_in_list", f"LoRAs not in this server's LoRA folder: {missing}")
    nodes = nodes_of(read)
    if not nodes["outputs"]:
        raise ValueError("prompt_no_outputs", f"Prompt has no outputs (a video save node: {', '.join(OUTPUT_NODES)})")
    images = {}
    for flag, name in read.images.items():
        path = prompts.input_file(name)
        if not path.is_file():
            raise ValueError("invalid_prompt", f"image {name} is not uploaded (POST /upload/image)")
        images[flag] = decode_image(path.read_bytes(), ctx.limits)
    return read, nodes, Inputs(images.get("image"), images.get("last_image"))


def _size(prompts: Prompts, name: str) -> tuple[int, int]:
    """An uploaded input's (width, height), upright (for a video size that follows the image's)."""
    path = prompts.input_file(name)
    if not path.is_file():
        raise ValueError("invalid_prompt", f"image {name} is not uploaded (POST /upload/image)")
    return image_size(path)


def _prompt_ids(given: object) -> set[str]:
    """The job ids of a list of prompt ids (anything else: none)."""
    return {job_id_of(p) for p in given if isinstance(p, str)} - {None} if isinstance(given, list) else set()


def _free_name(path: Path) -> Path:
    """``name (1).png`` and so on where ``path`` is taken, as ComfyUI names an upload that would overwrite."""
    n = 1
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        n += 1
    return candidate


async def _until_closed(ws: WebSocket) -> None:
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass


async def _json_or_empty(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
