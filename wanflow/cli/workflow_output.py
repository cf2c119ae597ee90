"""What a ComfyUI workflow does with its decoded frames, read for ``cli/workflow.py``: the decoder (VAEDecode, or
VAEDecodeTiled as wanflow's exact tiles), the frame rate of the node that makes the frames a video, and the nodes
between the decoder and a save node that wanflow does not run (frame interpolation, upscaling, colour nodes: the
video wanflow writes is the decoded frames themselves, so such a node is said, and the ComfyUI API refuses it).
"""

from __future__ import annotations

from wanflow.io.comfy_workflow import Graph, Link, Node, describe

# nodes that give the decoded frames a rate, and the name of their rate
FPS_NODES = {
    "CreateVideo": "fps",
    "SaveAnimatedWEBP": "fps",
    "SaveAnimatedPNG": "fps",
    "VHS_VideoCombine": "frame_rate",
}
DECODERS = ("VAEDecode", "VAEDecodeTiled")
# nodes that make the decoded frames a video or keep them as they are (CreateVideo: the workflow's video, saved or not)
SAVES = {
    "CreateVideo", "SaveVideo", "SaveWEBM", "SaveAnimatedWEBP", "SaveAnimatedPNG", "VHS_VideoCombine", "SaveImage",
    "PreviewImage",
}  # fmt: skip


def decoder(graph: Graph, chain: list[Node]) -> Node:
    """The VAEDecode (or VAEDecodeTiled) node of the last sampler's output."""
    return next(n for n in graph.of_type(*DECODERS) if graph.upstream(n, "samples") is chain[-1])


def tile_arguments(graph: Graph, decode: Node) -> list[str]:
    """VAEDecodeTiled as wanflow's exact tiles of ``tile_size / 16`` latent pixels (its pixels over the Wan 2.2 VAE's
    16; on the 2.1 VAE's 8 the tiles are half as wide): less memory, and the frames of a whole decode, where
    ComfyUI's tiles blend at their seams."""
    if decode.type != "VAEDecodeTiled":
        return []
    tile = max(1, int(graph.value(decode, "tile_size")) // 16)
    graph.say(f"{describe(decode)} decodes in wanflow's exact tiles (--vae_tile {tile}): the frames of a whole "
              "decode, not ComfyUI's blended tiles")  # fmt: skip
    return ["--vae_tile", str(tile)]


def fps_arguments(graph: Graph, decode: Node) -> list[str]:
    """``--fps`` of the node that makes the decoded frames a video (CreateVideo, SaveAnimatedWEBP,
    SaveAnimatedPNG, Video Helper Suite's VHS_VideoCombine); none where no such node reads them (the task's rate). A
    rate that is not a whole number is an error: wanflow writes whole frame rates."""
    rates = {float(graph.value(n, FPS_NODES[n.type])) for n in graph.of_type(*FPS_NODES) if graph.source(n, "images")
             and graph.upstream(n, "images") is decode}  # fmt: skip
    if len(rates) > 1:
        raise ValueError(f"{graph.name}: the video is saved at {len(rates)} frame rates ({sorted(rates)}); pick one")
    if not rates:
        return []
    fps = rates.pop()
    if fps != int(fps) or fps < 1:
        raise ValueError(f"{graph.name}: a frame rate of {fps:g}; wanflow writes whole frame rates of 1 or more")
    return ["--fps", str(int(fps))]


def unrun_after(graph: Graph, decode: Node) -> list[Node]:
    """The nodes that take the decoded frames on their way to an output node and are not a save node (RIFE, an
    upscaler, a colour match ...): wanflow writes the decoded frames themselves, so their outputs would differ."""
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes.values():
        for value in node.inputs.values():
            if isinstance(value, Link):
                readers.setdefault(value.node, []).append(node)
    return [r for r in readers.get(decode.id, []) if r.type not in SAVES and _reaches_output(r, readers)]


def _reaches_output(node: Node, readers: dict[str, list[Node]]) -> bool:
    """Whether a save node takes what ``node`` makes, through any nodes after it."""
    todo, visited = [node], set()
    while todo:
        current = todo.pop()
        if current.id in visited:
            continue
        visited.add(current.id)
        if current.type in SAVES:
            return True
        todo.extend(readers.get(current.id, []))
    return False
