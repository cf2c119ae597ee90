"""A workflow's input images: the LoadImage of a Wan node's image input, the resize node between them
(ComfyUI's ImageScale, KJNodes' ImageResizeKJv2) as ``--image_scale`` takes it, and the Wan node's size where the
workflow takes it from the resized image (ImageResizeKJv2's size outputs, GetImageSize): worked out from the image's
own size, which the caller gives (``image_size``: the CLI reads the file, the server its upload)."""

from __future__ import annotations

from collections.abc import Callable

from wanflow.io.comfy_workflow import Graph, Node, describe
from wanflow.io.resize_nodes import RESIZE_MODES, ImageResize, ImageScale

RESIZE = "ImageResizeKJv2"
PASS_THROUGH = {"GetImageSizeAndCount": 0}  # nodes whose output slot passes their image on
SIZE_OUTPUTS = {  # (a node's width and height output slots)
    RESIZE: (1, 2),
    "GetImageSize": (0, 1),
    "GetImageSizeAndCount": (1, 2),
}
ImageSize = Callable[[str], tuple[int, int]]  # a LoadImage's file name -> its (width, height), upright


def image_source(graph: Graph, node: Node, name: str) -> tuple[Node, str | None]:
    """The LoadImage of a Wan node's image input, and the settings of an ImageScale or ImageResizeKJv2 node between
    them (as ``--image_scale`` takes them), if any."""
    loader, scale = _through(graph, graph.upstream(node, name)), None
    if loader.type in ("ImageScale", RESIZE):
        scale = str(resizer(graph, loader))
        loader = _through(graph, graph.upstream(loader, "image"))
    if loader.type != "LoadImage":
        raise ValueError(f"{graph.name}: {name} comes from {describe(loader)}; wanflow reads a LoadImage (through an "
                         f"ImageScale or {RESIZE})")  # fmt: skip
    return loader, scale


def resizer(graph: Graph, node: Node) -> ImageScale | ImageResize:
    """An ImageScale or ImageResizeKJv2 node's settings; an error naming what wanflow lacks."""
    value = graph.value
    width, height, method = int(value(node, "width")), int(value(node, "height")), value(node, "upscale_method")
    if node.type == "ImageScale":
        crop = ":center" if value(node, "crop") == "center" else ""
        return ImageScale.parse(f"{method}:{width}*{height}{crop}")  # (a method wanflow lacks: an error naming it)
    mode = value(node, "keep_proportion")
    if mode not in RESIZE_MODES:
        raise ValueError(f"{graph.name}: {describe(node)} keeps the proportion by {mode!r}; wanflow runs "
                         f"{', '.join(RESIZE_MODES)}")  # fmt: skip
    position, by = value(node, "crop_position", "center"), int(value(node, "divisible_by", 2))
    color = value(node, "pad_color", "0, 0, 0")
    return ImageResize.parse(f"{method}:{width}*{height}:{mode}:{position}:{by}:{color}")


def size_setting(graph: Graph, node: Node, name: str, image_size: ImageSize | None) -> int:
    """A Wan node's ``width`` or ``height``: its setting, or the size of the image a size node reports."""
    found = graph.source(node, name)
    if found is None or found[0].type not in SIZE_OUTPUTS:
        return int(graph.value(node, name))
    source, slot = found
    slots = SIZE_OUTPUTS[source.type]
    if slot not in slots:
        raise ValueError(f"{graph.name}: {describe(node)}'s {name} comes from {describe(source)}'s output {slot}")
    image = source if source.type == RESIZE else graph.upstream(source, "image")
    return _size(graph, image, image_size)[slots.index(slot)]


def _size(graph: Graph, node: Node, image_size: ImageSize | None) -> tuple[int, int]:
    """The (width, height) of the image a node outputs: a LoadImage's file, through the resize nodes."""
    node = _through(graph, node)
    if node.type == "LoadImage":
        if image_size is None:
            raise ValueError(f"{graph.name}: the video's size follows the size of the image "
                             f"{graph.value(node, 'image')}; read the workflow with the image at hand")  # fmt: skip
        return image_size(str(graph.value(node, "image")))
    if node.type in ("ImageScale", RESIZE):
        return resizer(graph, node).size(*_size(graph, graph.upstream(node, "image"), image_size))
    raise ValueError(f"{graph.name}: the size comes from the image of {describe(node)}, which wanflow does not "
                     "evaluate")  # fmt: skip


def _through(graph: Graph, node: Node) -> Node:
    """``node``, or the node whose image it passes on (GetImageSizeAndCount)."""
    for _ in graph.nodes:
        if node.type not in PASS_THROUGH:
            return node
        node = graph.upstream(node, "image")
    raise ValueError(f"{graph.name}: the image nodes before {describe(node)} form a loop")
