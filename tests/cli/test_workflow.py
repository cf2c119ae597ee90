"""``wanflow generate --workflow``: a ComfyUI Wan 2.2 workflow (the editor's file, or its API export) runs as the
flags of the same settings (the same video, byte for byte); bypassed and muted nodes, reroutes, primitive and switch
nodes and subgraphs are followed as the editor runs them; what wanflow cannot run as ComfyUI does is an error naming
the node.

The workflows here are written in the layout of ComfyUI's own Wan 2.2 templates (Comfy-Org/workflow_templates:
video_wan2_2_14B_t2v.json, video_wan2_2_14B_i2v.json with its subgraph and switches, video_wan2_2_14B_flf2v.json),
with tiny files."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli.test_single_files import comfy_models
from wanflow.cli import main
from wanflow.cli.workflow import workflow_arguments
from wanflow.io.comfy_workflow import read_workflow

NEGATIVE = "blurry, static"
HIGH, LOW = "wan2.2_t2v_high_noise_14B_Q8_0.gguf", "wan2.2_t2v_low_noise_14B_Q8_0.gguf"  # (city96's GGUF files)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """A ComfyUI folder: ``models/`` with a tiny T2V-A14B's files under ComfyUI's names."""
    return comfy_models(tmp_path_factory.mktemp("comfy"))


class Editor:
    """A workflow in the editor's format: nodes with widget values by position, links as lists."""

    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, node_id, kind, widgets=(), mode=0, **inputs):
        """``inputs``: name -> (node id, output slot) links, in order."""
        entries = []
        for name, (source, slot) in inputs.items():
            link = len(self.links) + 1
            self.links.append([link, source, slot, node_id, len(entries), "*"])
            entries.append({"name": name, "type": "*", "link": link})
        self.nodes.append(
            {"id": node_id, "type": kind, "mode": mode, "inputs": entries, "widgets_values": list(widgets)}
        )
        return self

    def json(self, **extra):
        return {"nodes": self.nodes, "links": self.links, **extra}


def t2v(high=(0, 2), low=(2, 10000), steps=4, sampler="euler", scheduler="simple", shift=8.000000000000002):
    """The layout of ComfyUI's Wan 2.2 14B T2V template: two experts, each through ModelSamplingSD3 into its
    KSamplerAdvanced, the first adding noise and handing its leftover noise to the second."""
    w = Editor()
    w.add(38, "CLIPLoader", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"])
    w.add(6, "CLIPTextEncode", ["a red circle moving right"], clip=(38, 0))
    w.add(7, "CLIPTextEncode", [NEGATIVE], clip=(38, 0))
    w.add(39, "VAELoader", ["wan_2.1_vae.safetensors"])
    w.add(37, "UnetLoaderGGUF", [HIGH]).add(56, "UnetLoaderGGUF", [LOW])
    w.add(54, "ModelSamplingSD3", [shift], model=(37, 0)).add(55, "ModelSamplingSD3", [8], model=(56, 0))
    w.add(59, "EmptyHunyuanLatentVideo", [64, 48, 5, 1])
    w.add(57, "KSamplerAdvanced", ["enable", 3, "randomize", steps, 3.5, sampler, scheduler, *high, "enable"],
          model=(54, 0), positive=(6, 0), negative=(7, 0), latent_image=(59, 0))  # fmt: skip
    w.add(58, "KSamplerAdvanced", ["disable", 0, "fixed", steps, 3.0, sampler, scheduler, *low, "disable"],
          model=(55, 0), positive=(6, 0), negative=(7, 0), latent_image=(57, 0))  # fmt: skip
    w.add(8, "VAEDecode", samples=(58, 0), vae=(39, 0)).add(60, "CreateVideo", [16], images=(8, 0))
    return w


def node(w: Editor, node_id: int) -> dict:
    return next(n for n in w.nodes if n["id"] == node_id)


def relink(w: Editor, target: int, name: str, source: int) -> None:
    """Input ``name`` of node ``target`` linked to output 0 of ``source`` instead."""
    link = max(lk[0] for lk in w.links) + 1
    entry = next(i for i in node(w, target)["inputs"] if i["name"] == name)
    entry["link"] = link
    w.links.append([link, source, 0, target, node(w, target)["inputs"].index(entry), "*"])


def write(tmp_path, workflow, name="workflow.json"):
    path = tmp_path / name
    path.write_text(json.dumps(workflow), encoding="utf-8")
    return path


def api(editor: Editor) -> dict:
    """The same workflow as ComfyUI's "Export (API)" writes it."""
    from wanflow.io.comfy_workflow import WIDGETS

    out = {}
    for node in editor.nodes:
        inputs = dict(zip(WIDGETS.get(node["type"], ()), node["widgets_values"], strict=False))
        for entry in node["inputs"]:
            link = next(lk for lk in editor.links if lk[0] == entry["link"])
            inputs[entry["name"]] = [str(link[1]), link[2]]
        out[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return out


FLAGS = [
    "--prompt", "a red circle moving right", "--negative_prompt", NEGATIVE, "--size", "64*48", "--frame_num", "5",
    "--sample_steps", "4", "--sample_solver", "euler", "--scheduler", "simple", "--sample_shift", "8",
    "--sample_guide_scale", "3,3.5", "--switch_step", "2", "--base_seed", "3", "--noise_device", "cpu",
]  # fmt: skip


def test_a_workflow_makes_the_video_of_its_flags(comfy, tmp_path):
    m = comfy / "models"
    files = ["--dit", str(m / "diffusion_models" / HIGH), "--dit_low", str(m / "diffusion_models" / LOW),
             "--vae", str(m / "vae" / "wan_2.1_vae.safetensors"),
             "--t5", str(m / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")]  # fmt: skip
    tokenizer = ["--tokenizer", str(m / "text_encoders" / "tokenizer")]
    assert main(["generate", *FLAGS, *files, *tokenizer, "--save_file", str(tmp_path / "flags.gif")]) == 0
    path = write(tmp_path, t2v().json())
    argv = ["generate", "--workflow", str(path), "--comfy_dir", str(comfy), *tokenizer]
    assert main([*argv, "--save_file", str(tmp_path / "workflow.gif")]) == 0
    assert (tmp_path / "workflow.gif").read_bytes() == (tmp_path / "flags.gif").read_bytes()
    expected = [*FLAGS, *files, "--task", "t2v-A14B", "--fps", "16"]  # (CreateVideo's rate: the task's)
    assert sorted(workflow_arguments(path, str(comfy))) == sorted(expected)
    exported = write(tmp_path, api(t2v()), "api.json")
    assert workflow_arguments(exported, str(comfy)) == workflow_arguments(path, str(comfy))
    # a flag given beside the workflow overrides its setting
    assert main([*argv, "--sample_steps", "3", "--switch_step", "1", "--save_file", str(tmp_path / "three.gif")]) == 0
    assert (tmp_path / "three.gif").read_bytes() != (tmp_path / "flags.gif").read_bytes()


def test_the_frame_rate_of_the_video_node(comfy, tmp_path):
    """CreateVideo's fps (SaveAnimatedWEBP's, SaveAnimatedPNG's) is the saved video's frame rate, ``--fps``: the
    workflow's MP4 is the flags' at that rate, byte for byte; rates wanflow does not write are errors."""
    import av

    m = comfy / "models"
    files = ["--dit", str(m / "diffusion_models" / HIGH), "--dit_low", str(m / "diffusion_models" / LOW),
             "--vae", str(m / "vae" / "wan_2.1_vae.safetensors"),
             "--t5", str(m / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
             "--tokenizer", str(m / "text_encoders" / "tokenizer")]  # fmt: skip
    w = t2v()
    node(w, 60)["widgets_values"][0] = 24.0
    path = write(tmp_path, w.json())
    args = workflow_arguments(path, str(comfy))
    assert args[args.index("--fps") + 1] == "24"
    out, flags = tmp_path / "workflow.mp4", tmp_path / "flags.mp4"
    assert (
        main(["generate", "--workflow", str(path), "--comfy_dir", str(comfy), *files[-2:], "--save_file", str(out)])
        == 0
    )
    assert main(["generate", *FLAGS, *files, "--fps", "24", "--save_file", str(flags)]) == 0
    assert out.read_bytes() == flags.read_bytes()
    with av.open(str(out)) as video:
        assert video.streams.video[0].average_rate == 24
    webp = t2v()
    webp.add(61, "SaveAnimatedWEBP", ["ComfyUI", 12.0, False, 90, "default"], images=(8, 0))
    with pytest.raises(ValueError, match=r"saved at 2 frame rates \(\[12\.0, 16\.0\]\)"):
        workflow_arguments(write(tmp_path, webp.json()), str(comfy))
    node(webp, 61)["widgets_values"][1] = 16.0
    args = workflow_arguments(write(tmp_path, webp.json()), str(comfy))
    assert args[args.index("--fps") + 1] == "16"
    node(w, 60)["widgets_values"][0] = 23.976
    with pytest.raises(ValueError, match=r"a frame rate of 23\.976; wanflow writes whole frame rates"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))


def test_bypassed_muted_rerouted_and_switched_nodes(comfy, tmp_path):
    """A bypassed LoRA loader passes its model on; a muted second output is not a second video; a reroute and a
    switch node (on a primitive boolean) lead to the model they choose; primitive nodes give the steps and cfg."""
    w = t2v()
    (comfy / "models" / "loras").mkdir(exist_ok=True)
    (comfy / "models" / "loras" / "style.safetensors").touch()
    w.add(90, "LoraLoaderModelOnly", ["style.safetensors", 1.0], mode=4, model=(37, 0))
    w.add(91, "Reroute", model=(90, 0))
    w.add(92, "PrimitiveBoolean", [True]).add(93, "ComfySwitchNode", [False], on_true=(91, 0), on_false=(56, 0),
                                               switch=(92, 0))  # fmt: skip
    w.add(94, "PrimitiveInt", [4, "fixed"]).add(95, "PrimitiveFloat", [2.5])
    relink(w, 54, "model", 93)  # the high-noise ModelSamplingSD3 takes the switch's model
    node(w, 58)["inputs"].append({"name": "cfg", "type": "FLOAT", "link": 501, "widget": {"name": "cfg"}})
    w.links.append([501, 95, 0, 58, 4, "FLOAT"])  # the low-noise cfg from the primitive
    w.add(96, "VAEDecode", mode=2, samples=(57, 0), vae=(39, 0))  # muted: not run
    args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert args[args.index("--dit") + 1].endswith(HIGH) and "--lora_high" not in args  # (bypassed)
    assert args[args.index("--sample_guide_scale") + 1] == "2.5,3.5"
    node(w, 90)["mode"] = 0  # the LoRA loader runs
    args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert args[args.index("--lora_high") + 1] == f"{comfy / 'models' / 'loras' / 'style.safetensors'}:1"
    node(w, 92)["widgets_values"] = [False]  # the switch takes the low-noise file
    args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert args[args.index("--dit") + 1].endswith(LOW)


def test_a_subgraph_is_inlined(comfy, tmp_path):
    """The layout of ComfyUI's newer templates: the samplers inside a subgraph whose inputs are the outer graph's
    links or the instance's promoted widgets (the prompt here), its output the decoded images."""
    inner = t2v()
    inner.nodes = [n for n in inner.nodes if n["id"] not in (60,)]
    text = next(n for n in inner.nodes if n["id"] == 6)
    text["inputs"].append({"name": "text", "type": "STRING", "link": 900, "widget": {"name": "text"}})
    links = [{"id": lk[0], "origin_id": lk[1], "origin_slot": lk[2], "target_id": lk[3], "target_slot": lk[4],
              "type": lk[5]} for lk in inner.links]  # fmt: skip
    links += [
        {"id": 900, "origin_id": -10, "origin_slot": 0, "target_id": 6, "target_slot": 1, "type": "STRING"},
        {"id": 901, "origin_id": 8, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"},
    ]
    subgraph = {"id": "sub-1", "name": "Wan", "inputs": [{"name": "text", "type": "STRING", "linkIds": [900]}],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "linkIds": [901]}], "nodes": inner.nodes,
                "links": links}  # fmt: skip
    outer = Editor()
    outer.nodes.append({"id": 129, "type": "sub-1", "mode": 0, "inputs": [{"name": "text", "type": "STRING",
                        "link": None, "widget": {"name": "text"}}], "widgets_values": ["a blue square"],
                        "properties": {"proxyWidgets": [["-1", "text"]]}})  # fmt: skip
    outer.add(60, "CreateVideo", [16], images=(129, 0))
    path = write(tmp_path, outer.json(definitions={"subgraphs": [subgraph]}))
    args = workflow_arguments(path, str(comfy))
    assert args[args.index("--prompt") + 1] == "a blue square" and args[args.index("--switch_step") + 1] == "2"
    assert sorted(read_workflow(path).nodes) == sorted(["60", *(f"129:{n['id']}" for n in inner.nodes)])


@pytest.mark.parametrize(
    ("sampler", "scheduler"),
    [("euler", "bong_tangent"), ("euler", "beta57"), ("res_2s", "bong_tangent"), ("res_3s", "beta57")],
)
def test_res4lyfs_samplers_and_schedulers_are_flags(comfy, tmp_path, sampler, scheduler):
    """The schedulers and the samplers RES4LYF adds to KSampler's list run as wanflow's (sampling/res4lyf,
    sampling/comfy_schedules); their noise follows the first KSampler's seed in both experts' calls, as in ComfyUI:
    no seed of the second call's is carried."""
    args = workflow_arguments(write(tmp_path, t2v(sampler=sampler, scheduler=scheduler, steps=8).json()), str(comfy))
    assert args[args.index("--scheduler") + 1] == scheduler and args[args.index("--sample_steps") + 1] == "8"
    assert args[args.index("--sample_solver") + 1] == sampler and "--low_noise_seed" not in args


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(sampler="ddpm"), r"uses sampler 'ddpm'; wanflow runs ComfyUI's \['ddim', 'deis', 'dpm_2', "),
        (dict(scheduler="GITS[coeff=1.2]"), r"scheduler 'GITS\[coeff=1.2\]'"),
        (dict(high=(0, 2), low=(3, 10000)), "do not split one run"),
        (dict(high=(1, 2)), "do not split one run"),
    ],
)
def test_what_wanflow_cannot_run_as_comfyui_does_is_an_error(comfy, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        workflow_arguments(write(tmp_path, t2v(**change).json()), str(comfy))


def test_unknown_nodes_and_missing_files_are_named(comfy, tmp_path, caplog):
    w = t2v()
    w.add(70, "WanVideoTeaCacheKJ", [0.2], model=(54, 0))
    relink(w, 57, "model", 70)
    with pytest.raises(ValueError, match=r"node 70 \(WanVideoTeaCacheKJ\) changes the model"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))
    w.nodes[-1]["type"] = "PathchSageAttentionKJ"  # speed only: passed over, and said
    with caplog.at_level(logging.WARNING, logger="wanflow"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert "node 70 (PathchSageAttentionKJ) only changes speed; passed over" in caplog.text
    path = write(tmp_path, t2v().json())
    with pytest.raises(ValueError, match=f"diffusion_models file {HIGH} is not in .*pass --comfy_dir"):
        workflow_arguments(path, str(tmp_path))
    two = t2v().add(96, "VAEDecode", samples=(57, 0), vae=(39, 0))
    with pytest.raises(ValueError, match="2 decoded outputs"):
        workflow_arguments(write(tmp_path, two.json()), str(comfy))
    (tmp_path / "bad.json").write_text('{"nodes": 1}')
    assert main(["generate", "--workflow", str(tmp_path / "bad.json")]) == 2


def first_last(comfy) -> Editor:
    """ComfyUI's FLF2V template's layout: the prompts through WanFirstLastFrameToVideo, a LoadImage at each end (80:
    start.png, 89: end.png, under ComfyUI's input folder), cfg 1."""
    (comfy / "input").mkdir(exist_ok=True)
    for name in ("start.png", "end.png"):
        (comfy / "input" / name).touch()
    w = t2v()
    w.add(80, "LoadImage", ["start.png", "image"]).add(89, "LoadImage", ["end.png", "image"])
    w.add(81, "WanFirstLastFrameToVideo", [640, 640, 81, 1], positive=(6, 0), negative=(7, 0), vae=(39, 0),
          start_image=(80, 0), end_image=(89, 0))  # fmt: skip
    for sampler in (57, 58):
        relink(w, sampler, "positive", 81)
        entry = next(i for i in node(w, sampler)["inputs"] if i["name"] == "negative")
        next(lk for lk in w.links if lk[0] == entry["link"])[1:3] = [81, 1]
        node(w, sampler)["widgets_values"][4] = 1.0  # cfg 1
    relink(w, 57, "latent_image", 81)
    next(lk for lk in w.links if lk[3] == 57 and lk[1] == 81 and lk[4] == 3)[2] = 2  # (its LATENT output)
    return w


def test_first_last_frame_layout(comfy, tmp_path):
    """ComfyUI's FLF2V template: the prompts pass through WanFirstLastFrameToVideo (positive, negative, latent) with
    a LoadImage for each end, files under ComfyUI's input folder; a cfg of 1 leaves the negative prompt unread; the
    images are fit as ComfyUI fits them (``--image_fit crop``)."""
    args = workflow_arguments(write(tmp_path, first_last(comfy).json()), str(comfy))
    assert args[args.index("--task") + 1] == "i2v-A14B" and args[args.index("--size") + 1] == "640*640"
    assert args[args.index("--image") + 1] == str(comfy / "input" / "start.png")
    assert args[args.index("--last_image") + 1] == str(comfy / "input" / "end.png")
    assert "--negative_prompt" not in args and args[args.index("--sample_guide_scale") + 1] == "1,1"
    assert args[args.index("--image_fit") + 1] == "crop"  # (the node's size, each image fit to it as ComfyUI fits it)
    assert "--image_fit" not in workflow_arguments(write(tmp_path, t2v().json(), "t2v.json"), str(comfy))


def test_an_image_scale_node_before_the_images(comfy, tmp_path):
    """ComfyUI's ImageScale between each LoadImage and the Wan node becomes ``--image_scale`` (run before the fit);
    the two images scaled differently, or by a method wanflow lacks, are errors naming it."""
    w = first_last(comfy)
    w.add(82, "ImageScale", ["lanczos", 832, 480, "center"], image=(80, 0))
    w.add(83, "ImageScale", ["lanczos", 832, 480, "center"], image=(89, 0))
    relink(w, 81, "start_image", 82)
    relink(w, 81, "end_image", 83)
    args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert args[args.index("--image_scale") + 1] == "lanczos:832*480:center"
    assert args[args.index("--image") + 1] == str(comfy / "input" / "start.png")
    node(w, 83)["widgets_values"] = ["bicubic", 0, 480, "disabled"]
    with pytest.raises(ValueError, match="scaled differently"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))
    node(w, 82)["widgets_values"] = node(w, 83)["widgets_values"] = ["bislerp", 0, 480, "disabled"]
    with pytest.raises(ValueError, match="image_scale is METHOD"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))


def kj_i2v(comfy, mode="crop", sized_by="ImageResizeKJv2") -> Editor:
    """An image-to-video layout of the community's: LoadImage (a real 37x23 picture) through KJNodes'
    ImageResizeKJv2 into WanImageToVideo, whose width and height are the resize node's size outputs (or a
    GetImageSize's of its image)."""
    w = first_last(comfy)
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (23, 37, 3), dtype=np.uint8)).save(
        comfy / "input" / "start.png"
    )
    wan = node(w, 81)
    wan["type"], wan["inputs"] = "WanImageToVideo", [i for i in wan["inputs"] if i["name"] != "end_image"]
    w.add(84, "ImageResizeKJv2", [24, 16, "lanczos", mode, "0, 0, 0", "left", 8, "cpu"], image=(80, 0))
    relink(w, 81, "start_image", 84)
    source = {"ImageResizeKJv2": (84, 1, 2), "GetImageSize": (85, 0, 1)}[sized_by]
    if sized_by == "GetImageSize":
        w.add(85, "GetImageSize", image=(84, 0))
    for name, slot in (("width", source[1]), ("height", source[2])):
        link = max(lk[0] for lk in w.links) + 1
        wan["inputs"].append({"name": name, "type": "INT", "widget": {"name": name}, "link": link})
        w.links.append([link, source[0], slot, 81, len(wan["inputs"]) - 1, "INT"])
    return w


@pytest.mark.parametrize(
    ("mode", "sized_by", "size"),
    [("crop", "ImageResizeKJv2", "24*16"), ("resize", "ImageResizeKJv2", "24*8"), ("resize", "GetImageSize", "24*8"),
     ("stretch", "GetImageSize", "24*16"), ("pad_edge", "ImageResizeKJv2", "24*16"),
     ("pillarbox_blur", "GetImageSize", "24*16")],
)  # fmt: skip
def test_a_kjnodes_resize_before_the_image(comfy, tmp_path, mode, sized_by, size):
    """KJNodes' ImageResizeKJv2 between the LoadImage and the Wan node becomes ``--image_scale`` in its KJNodes form,
    and the video's size, which the workflow takes from the resized image, is worked out from the picture's own size
    (37x23: resize to within 24x16 is 24x15, cut to multiples of 8; padded out to 24x16); its nvidia_rtx_vsr
    method is a named error; without the picture the size is an error."""
    path = write(tmp_path, kj_i2v(comfy, mode, sized_by).json())
    args = workflow_arguments(path, str(comfy))
    pad = ":0, 0, 0" if mode.startswith(("pad", "pillarbox")) else ""
    assert args[args.index("--image_scale") + 1] == f"lanczos:24*16:{mode}:left:8{pad}"
    assert args[args.index("--size") + 1] == size and args[args.index("--task") + 1] == "i2v-A14B"
    assert args[args.index("--image") + 1] == str(comfy / "input" / "start.png")
    from wanflow.cli.workflow import Files, workflow_settings

    with pytest.raises(ValueError, match=r"size of the image start\.png"):
        workflow_settings(path, Files(tmp_path, None, lookup=False))
    sized = workflow_settings(path, Files(tmp_path, None, lookup=False, image_sizes=lambda name: (37, 23)))[0]
    assert sized[sized.index("--size") + 1] == size
    w = kj_i2v(comfy, "crop", sized_by)
    node(w, 84)["widgets_values"][2] = "nvidia_rtx_vsr"
    with pytest.raises(ValueError, match=r"KJNodes resize is METHOD.*METHOD one of nearest-exact"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))


def test_a_seed_gives_comfyuis_initial_noise_on_any_device():
    """ComfyUI's ``prepare_noise``: ``torch.manual_seed(seed)`` and one float32 randn of the latent (batch 1) on the
    CPU. wanflow's initial noise on the CPU is the same draw; with ``noise_device="cpu"`` (what a workflow sets) it is
    drawn on the CPU whatever the device, then moved there (here: the meta device, which has no generator of its
    own, so the draw can only have been the CPU's)."""
    from wanflow.sampling.noise import initial_noise

    for seed in (774388746670969, 2**64 - 5):  # (the T2V template's; one past 2**63, as "randomize" draws half of them)
        with torch.random.fork_rng():  # (the global generator left as it was)
            comfy = torch.randn([1, 16, 2, 6, 8], generator=torch.manual_seed(seed), dtype=torch.float32)
        assert torch.equal(initial_noise((16, 2, 6, 8), seed, "cpu"), comfy)
        assert torch.equal(initial_noise((16, 2, 6, 8), seed, "cpu", on="cpu"), comfy)
    moved = initial_noise((16, 2, 6, 8), seed, "meta", on="cpu")
    assert moved.device.type == "meta" and moved.shape == comfy.shape
    with pytest.raises(RuntimeError):
        initial_noise((16, 2, 6, 8), seed, "meta")  # (drawn on the device itself by default)
    with pytest.raises(ValueError, match="noise_device is one of"):
        initial_noise((16, 2, 6, 8), seed, "cpu", on="gpu")


def test_a_seed_past_2_63_runs(comfy, tmp_path):
    """ComfyUI's seed widgets go up to 2**64 - 1: such a workflow runs, and its video says its seed."""
    w = t2v()
    node(w, 57)["widgets_values"][1] = 2**64 - 1
    args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert args[args.index("--base_seed") + 1] == str(2**64 - 1)
    assert main(["generate", "--workflow", str(tmp_path / "workflow.json"), "--comfy_dir", str(comfy),
                 "--save_file", str(tmp_path / "out.mp4")]) == 0  # fmt: skip
    assert torch.manual_seed(2**64 - 1).initial_seed() == 2**64 - 1  # (torch's generators take the whole range)


def test_a_setting_the_file_lacks_is_named(comfy, tmp_path):
    w = t2v()
    node(w, 59)["widgets_values"] = [64, 48]  # (no length)
    with pytest.raises(ValueError, match=r"node 59 \(EmptyHunyuanLatentVideo\) has no setting length"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))


def test_the_workflow_inside_comfyuis_png_and_mp4(comfy, tmp_path):
    """ComfyUI keeps the workflow in what it saves: SaveImage's PNG text chunks, SaveVideo's MP4 metadata (``workflow``
    and ``prompt``, JSON); either gives the workflow file's flags (the editor's when both are there)."""
    import av
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    expected = workflow_arguments(write(tmp_path, t2v().json()), str(comfy))
    info = PngInfo()
    info.add_text("prompt", json.dumps(api(t2v())))
    info.add_text("workflow", json.dumps(t2v().json()))
    Image.new("RGB", (8, 8)).save(tmp_path / "still.png", pnginfo=info)
    assert workflow_arguments(tmp_path / "still.png", str(comfy)) == expected
    with av.open(str(tmp_path / "clip.mp4"), "w", options={"movflags": "use_metadata_tags"}) as out:
        out.metadata["prompt"] = json.dumps(api(t2v()))  # (the API format only)
        stream = out.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for packet in stream.encode(av.VideoFrame.from_image(Image.new("RGB", (16, 16)))):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    assert workflow_arguments(tmp_path / "clip.mp4", str(comfy)) == expected
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="holds no ComfyUI workflow"):
        workflow_arguments(tmp_path / "plain.png", str(comfy))


def test_a_checkpoint_beside_the_workflow_replaces_its_model_files(comfy, tmp_path):
    """``--ckpt_dir`` with ``--workflow``: the checkpoint's models (the workflow's files need not exist), the
    workflow's settings; a prompt on the command line replaces the workflow's."""
    w = t2v()
    node(w, 37)["widgets_values"] = ["somewhere_else.safetensors"]
    path = write(tmp_path, w.json())
    with pytest.raises(ValueError, match=r"somewhere_else\.safetensors is not in"):
        workflow_arguments(path, str(comfy))
    args = workflow_arguments(path, str(comfy), models=False)
    assert not {"--dit", "--dit_low", "--t5", "--vae"} & set(args) and "--switch_step" in args
    ckpt = ["--ckpt_dir", str(comfy / "ckpt")]
    out = tmp_path / "a.gif"
    assert main(["generate", "a green cross", "--workflow", str(path), *ckpt, "--save_file", str(out)]) == 0
    flags = [f for f in FLAGS if f not in ("--prompt", "a red circle moving right")]
    assert main(["generate", "a green cross", *flags, *ckpt, "--save_file", str(tmp_path / "b.gif")]) == 0
    assert out.read_bytes() == (tmp_path / "b.gif").read_bytes()


def test_the_5b_layout(comfy, tmp_path, caplog):
    """ComfyUI's TI2V-5B template: one model, one KSampler (uni_pc, simple, 20 steps, cfg 5, shift 8) from
    Wan22ImageToVideoLatent, here with a start image; its uni_pc is ComfyUI's (not the reference's unipc)."""
    (comfy / "input").mkdir(exist_ok=True)
    (comfy / "input" / "first.png").touch()
    w = Editor()
    w.add(38, "CLIPLoader", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "cpu"])
    w.add(6, "CLIPTextEncode", ["a boat"], clip=(38, 0)).add(7, "CLIPTextEncode", [NEGATIVE], clip=(38, 0))
    w.add(39, "VAELoader", ["wan_2.1_vae.safetensors"]).add(37, "UnetLoaderGGUF", [HIGH])
    w.add(48, "ModelSamplingSD3", [8], model=(37, 0)).add(56, "LoadImage", ["first.png", "image"])
    w.add(55, "Wan22ImageToVideoLatent", [1280, 704, 121, 1], vae=(39, 0), start_image=(56, 0))
    w.add(3, "KSampler", [898471028164125, "randomize", 20, 5, "uni_pc", "simple", 1],
          model=(48, 0), positive=(6, 0), negative=(7, 0), latent_image=(55, 0))  # fmt: skip
    w.add(8, "VAEDecode", samples=(3, 0), vae=(39, 0))
    with caplog.at_level(logging.WARNING, logger="wanflow"):
        args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    given = {flag: args[i + 1] for i, flag in enumerate(args[:-1]) if flag.startswith("--")}
    assert (given["--task"], given["--size"], given["--frame_num"]) == ("ti2v-5B", "1280*704", "121")
    assert (given["--sample_solver"], given["--scheduler"], given["--sample_steps"]) == ("uni_pc", "simple", "20")
    assert given["--sample_guide_scale"] == "5" and given["--base_seed"] == "898471028164125"
    assert given["--image"] == str(comfy / "input" / "first.png") and "--switch_step" not in args
    assert "--t5_cpu" in args and "--dit_low" not in args
    assert "uni_pc" not in caplog.text.replace("--sample_solver uni_pc", "")  # (nothing said about it)
    node(w, 3)["widgets_values"][6] = 0.7  # denoise below 1 from an empty latent
    with pytest.raises(ValueError, match=r"denoises 0\.7 of the way"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))


def test_kjnodes_nag(comfy, tmp_path, caplog):
    """KJNodes' WanVideoNAG on both experts (its conditioning: a prompt of its own) becomes wanflow's NAG; on one
    expert only, or with other settings on each, it is an error; at scale 1 it is left out and said."""
    w = t2v().add(9, "CLIPTextEncode", ["blurry"], clip=(38, 0))
    for sampler, sampling, node_id in ((57, 54, 70), (58, 55, 71)):
        w.add(node_id, "WanVideoNAG", [11.0, 0.25, 2.5, "default"], model=(sampling, 0), conditioning=(9, 0))
        relink(w, sampler, "model", node_id)
    with caplog.at_level(logging.WARNING, logger="wanflow"):
        args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    at = args.index("--nag_scale")
    assert args[at : at + 8] == ["--nag_scale", "11", "--nag_alpha", "0.25", "--nag_tau", "2.5",
                                 "--nag_negative_prompt", "blurry"]  # fmt: skip
    assert "runs as wanflow's NAG" in caplog.text
    differs_between_samplers(comfy, tmp_path, w, "WanVideoNAG", 71, 5.0)
    node(w, 70)["widgets_values"][0] = node(w, 71)["widgets_values"][0] = 1.0
    assert "--nag_scale" not in workflow_arguments(write(tmp_path, w.json()), str(comfy))


def patched_on_both(comfy, tmp_path, caplog, kind, widgets, ids, said, **inputs):
    """``t2v()`` with a ``kind`` node (``widgets``, ``inputs``) between each expert's ModelSamplingSD3 and its sampler
    (node ids ``ids``); (the workflow, its flags, read once from the editor's file, checked to be the API export's and
    to say ``said``)."""
    w = t2v()
    for sampler, sampling, node_id in zip((57, 58), (54, 55), ids, strict=True):
        w.add(node_id, kind, widgets, model=(sampling, 0), **inputs)
        relink(w, sampler, "model", node_id)
    with caplog.at_level(logging.WARNING, logger="wanflow"):
        args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert said in caplog.text
    assert workflow_arguments(write(tmp_path, api(w), "api.json"), str(comfy)) == args
    return w, args


def differs_between_samplers(comfy, tmp_path, w, kind: str, low_node: int, other) -> None:
    """Workflow ``w`` with another first setting on the low-noise expert's ``kind`` node, then without that node, is
    refused (wanflow runs one on every call); both put back."""
    widgets = node(w, low_node)["widgets_values"]
    widgets[0], kept = other, widgets[0]
    with pytest.raises(ValueError, match=f"{kind} differs between the samplers' models"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))
    widgets[0] = kept
    relink(w, 58, "model", 55)  # (the low-noise expert without it)
    with pytest.raises(ValueError, match=f"{kind} differs between the samplers' models"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))
    relink(w, 58, "model", low_node)


def flag(args: list[str], name: str) -> list[str]:
    return args[args.index(name) : args.index(name) + 2]


def test_kjnodes_riflex(comfy, tmp_path, caplog):
    """KJNodes' Apply RifleXRoPE WanVideo on both experts, given the video's latent (or another of its frames), becomes
    ``--riflex K``; on one expert only, with another k on each, or given a latent of other frames, it is an error."""
    said = "runs as wanflow's RIFLEx"
    w, args = patched_on_both(comfy, tmp_path, caplog, "ApplyRifleXRoPE_WanVideo", [6], (72, 73), said, latent=(59, 0))
    assert flag(args, "--riflex") == ["--riflex", "6"]
    w.add(61, "EmptyHunyuanLatentVideo", [32, 32, 5, 1])  # another latent of the video's frames
    relink(w, 73, "latent", 61)
    assert workflow_arguments(write(tmp_path, w.json()), str(comfy)) == args
    node(w, 61)["widgets_values"][2] = 9
    with pytest.raises(ValueError, match=r"not the video's latent .* wanflow's RIFLEx works on the video's own frames"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))
    relink(w, 73, "latent", 59)
    differs_between_samplers(comfy, tmp_path, w, "ApplyRifleXRoPE_WanVideo", 73, 4)


def test_kjnodes_enhance_a_video(comfy, tmp_path, caplog):
    """KJNodes' WanVideo Enhance A Video (native) on both experts, given the video's latent, becomes
    ``--enhance_a_video W``; weight 0 (the node then leaves the model as it is) is left out; another weight on each
    expert, or another latent's frames, is an error."""
    said = "runs as wanflow's Enhance-A-Video"
    w, args = patched_on_both(comfy, tmp_path, caplog, "WanVideoEnhanceAVideoKJ", [2.5], (78, 79), said, latent=(59, 0))
    assert flag(args, "--enhance_a_video") == ["--enhance_a_video", "2.5"]
    differs_between_samplers(comfy, tmp_path, w, "WanVideoEnhanceAVideoKJ", 79, 1.0)
    node(w, 78)["widgets_values"][0] = node(w, 79)["widgets_values"][0] = 0.0
    assert "--enhance_a_video" not in workflow_arguments(write(tmp_path, w.json()), str(comfy))
    w.add(62, "EmptyHunyuanLatentVideo", [64, 48, 9, 1])
    relink(w, 79, "latent", 62)
    with pytest.raises(ValueError, match=r"is given node 62 .* wanflow's Enhance-A-Video works on the video's own"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))


def test_comfyuis_easycache(comfy, tmp_path, caplog):
    """ComfyUI's EasyCache node on both experts becomes ``--cache easycache:T:START:END``; with other settings on
    each, or on one expert only, it is an error."""
    said = "ComfyUI's EasyCache runs as wanflow's"
    w, args = patched_on_both(comfy, tmp_path, caplog, "EasyCache", [0.1, 0.2, 0.9, False], (76, 77), said)
    assert flag(args, "--cache") == ["--cache", "easycache:0.1:0.2:0.9"]
    differs_between_samplers(comfy, tmp_path, w, "EasyCache", 77, 0.2)


def test_comfyuis_skip_layer_guidance(comfy, tmp_path, caplog):
    """ComfyUI's SkipLayerGuidanceDiT on both experts becomes wanflow's SLG over its percent window (its double
    layers: Wan's blocks), SkipLayerGuidanceDiTSimple the uncond mode; on one expert only, with its rescaling, or
    beside custom uni_pc sigmas, an error; at scale 0 it is left out and said. The workflow's video is the flags'."""
    w = t2v()
    for sampler, sampling, node_id in ((57, 54, 70), (58, 55, 71)):
        w.add(node_id, "SkipLayerGuidanceDiT", ["1", "7, 8, 9", 3.0, 0.01, 0.5, 0.0], model=(sampling, 0))
        relink(w, sampler, "model", node_id)
    args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    at = args.index("--slg_layers")
    assert args[at : at + 6] == ["--slg_layers", "1", "--slg_percent", "0.01,0.5", "--slg_scale", "3.0"]
    tokenizer = ["--tokenizer", str(comfy / "models" / "text_encoders" / "tokenizer")]
    argv = ["generate", "--workflow", str(tmp_path / "workflow.json"), "--comfy_dir", str(comfy), *tokenizer]
    assert main([*argv, "--save_file", str(tmp_path / "slg.gif")]) == 0
    flags = ["generate", *args, *tokenizer, "--save_file", str(tmp_path / "flags.gif")]
    assert main(flags) == 0 and (tmp_path / "slg.gif").read_bytes() == (tmp_path / "flags.gif").read_bytes()
    plain = write(tmp_path, t2v().json(), "plain.json")
    assert main(["generate", "--workflow", str(plain), "--comfy_dir", str(comfy), *tokenizer,
                 "--save_file", str(tmp_path / "plain.gif")]) == 0  # fmt: skip
    assert (tmp_path / "plain.gif").read_bytes() != (tmp_path / "slg.gif").read_bytes()
    for n in (70, 71):
        node(w, n).update(type="SkipLayerGuidanceDiTSimple", widgets_values=["9, 10", "", 0.0, 1.0])
    args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    at = args.index("--slg_layers")
    assert args[at : at + 6] == ["--slg_layers", "9,10", "--slg_percent", "0.0,1.0", "--slg_mode", "uncond"]
    relink(w, 58, "model", 55)  # the low-noise expert without it
    with pytest.raises(ValueError, match="skip layer guidance differs between the experts"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))
    relink(w, 58, "model", 71)
    for n in (70, 71):
        node(w, n).update(type="SkipLayerGuidanceDiT", widgets_values=["9", "", 3.0, 0.01, 0.15, 0.5])
    with pytest.raises(ValueError, match="rescaling_scale"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))
    for n in (70, 71):
        node(w, n)["widgets_values"][2], node(w, n)["widgets_values"][5] = 0.0, 0.0
    with caplog.at_level(logging.WARNING, logger="wanflow"):
        assert "--slg_layers" not in workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert "SkipLayerGuidanceDiT changes nothing here" in caplog.text


def test_video_helper_suite_and_power_lora_loader(comfy, tmp_path):
    """Video Helper Suite's VHS_VideoCombine (its widgets saved by name) gives the frame rate; rgthree's Power Lora
    Loader gives its LoRAs in order, those switched off or at strength 0 left out; in the editor's file and in the API
    format alike."""
    folder = comfy / "models" / "loras"
    folder.mkdir(exist_ok=True)
    for name in ("style.safetensors", "wide.safetensors"):
        (folder / name).touch()
    vhs = {"frame_rate": 24, "loop_count": 0, "filename_prefix": "Wan", "format": "video/h264-mp4", "pingpong": False,
           "save_output": True, "videopreview": {"hidden": False, "paused": False}}  # fmt: skip
    rows = [{"on": True, "lora": "style.safetensors", "strength": 0.8, "strengthTwo": None},
            {"on": False, "lora": "wide.safetensors", "strength": 1},
            {"on": True, "lora": "wide.safetensors", "strength": 0.5, "strengthTwo": 1.0},
            {"on": True, "lora": "style.safetensors", "strength": 0}]  # fmt: skip
    w = t2v()
    node(w, 60).update(type="VHS_VideoCombine", widgets_values=vhs)
    header = {"type": "PowerLoraLoaderHeaderWidget"}
    w.add(97, "Power Lora Loader (rgthree)", [{}, header, *rows, {}, ""], model=(37, 0), clip=(38, 0))
    relink(w, 54, "model", 97)
    args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert args[args.index("--fps") + 1] == "24"
    loras = [args[i + 1] for i, a in enumerate(args) if a == "--lora_high"]
    assert loras == [f"{folder / 'style.safetensors'}:0.8", f"{folder / 'wide.safetensors'}:0.5"]
    assert "--lora_low" not in args
    exported = api(w)
    exported["60"]["inputs"] |= vhs
    exported["97"]["inputs"] = {"PowerLoraLoaderHeaderWidget": header,
                                **{f"lora_{i}": row for i, row in enumerate(rows, 1)},
                                "➕ Add Lora": "", "model": ["37", 0], "clip": ["38", 0]}  # fmt: skip
    assert workflow_arguments(write(tmp_path, exported, "api.json"), str(comfy)) == args


def test_kjnodes_set_and_get_nodes(comfy, tmp_path):
    """KJNodes' SetNode / GetNode (named links the frontend resolves, absent from the API format): a GetNode reads
    what the SetNode of its name is linked to, so the workflow gives the flags of the same links drawn directly; a
    GetNode whose name nothing sets is an error naming it."""
    expected = workflow_arguments(write(tmp_path, t2v().json(), "plain.json"), str(comfy))
    w = t2v()
    w.add(98, "SetNode", ["model_high"], MODEL=(54, 0)).add(99, "GetNode", ["model_high"])
    w.add(100, "SetNode", ["prompt"], CONDITIONING=(6, 0)).add(101, "GetNode", ["prompt"])
    relink(w, 57, "model", 99)
    relink(w, 58, "positive", 101)
    assert workflow_arguments(write(tmp_path, w.json()), str(comfy)) == expected
    node(w, 99)["widgets_values"] = ["model_hgih"]
    with pytest.raises(ValueError, match=r"GetNode #99 reads 'model_hgih', which no SetNode"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))


def widget_from(w: Editor, target: int, name: str, source: int) -> None:
    """Widget ``name`` of node ``target`` turned into an input linked to output 0 of ``source``."""
    link = max(lk[0] for lk in w.links) + 1
    node(w, target)["inputs"].append({"name": name, "type": "*", "link": link, "widget": {"name": name}})
    w.links.append([link, source, 0, target, len(node(w, target)["inputs"]) - 1, "*"])


def test_constant_nodes_give_their_values(comfy, tmp_path):
    """KJNodes' INTConstant, FloatConstant (rounded to 6 digits, as it rounds) and StringConstantMultiline (its
    newlines taken out, as it does unless told not to) and rgthree's Seed give the settings they are linked to."""
    w = t2v()
    w.add(110, "INTConstant", [6]).add(111, "FloatConstant", [0.0100000004]).add(112, "Seed (rgthree)", [77, None])
    w.add(113, "StringConstantMultiline", ["a blue square\nmoving left ", True])
    for sampler, sampling, node_id in ((57, 54, 70), (58, 55, 71)):
        widget_from(w, sampler, "steps", 110)
        w.add(node_id, "SkipLayerGuidanceDiT", ["1", "", 3.0, 0.3, 0.5, 0.0], model=(sampling, 0))
        relink(w, sampler, "model", node_id)
        widget_from(w, node_id, "start_percent", 111)
    widget_from(w, 57, "noise_seed", 112)
    widget_from(w, 6, "text", 113)
    args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert args[args.index("--sample_steps") + 1] == "6" and args[args.index("--base_seed") + 1] == "77"
    assert args[args.index("--slg_percent") + 1] == "0.01,0.5"  # (0.0100000004 rounded to 6 digits)
    assert args[args.index("--prompt") + 1] == "a blue squaremoving left"
    node(w, 113)["widgets_values"][1] = False
    args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert args[args.index("--prompt") + 1] == "a blue square\nmoving left "


def test_a_tiled_decode_is_wanflows_exact_tiles(comfy, tmp_path, caplog, monkeypatch):
    """VAEDecodeTiled becomes ``--vae_tile`` (its tile size over 16): the video of the whole decode, byte for byte,
    in tiles (64 pixels: 4 latent pixels, so the 8 x 6 latent frames of this video decode in 4 tiles), and said."""
    tokenizer = ["--tokenizer", str(comfy / "models" / "text_encoders" / "tokenizer")]
    plain = write(tmp_path, t2v().json(), "plain.json")
    w = t2v()
    node(w, 8).update(type="VAEDecodeTiled", widgets_values=[64, 32, 64, 8])
    tiled = write(tmp_path, w.json(), "tiled.json")
    with caplog.at_level(logging.WARNING, logger="wanflow"):
        args = workflow_arguments(tiled, str(comfy))
    assert args[args.index("--vae_tile") + 1] == "4" and "exact tiles (--vae_tile 4)" in caplog.text
    import wanflow.pipelines.pipeline as pipeline_module

    tiled_decodes = []
    decode_tiled = pipeline_module.decode_tiled
    monkeypatch.setattr(
        pipeline_module, "decode_tiled", lambda *a, **k: tiled_decodes.append(1) or decode_tiled(*a, **k)
    )
    for path, out in ((plain, "plain.mp4"), (tiled, "tiled.mp4")):
        argv = ["generate", "--workflow", str(path), "--comfy_dir", str(comfy), *tokenizer]
        assert main([*argv, "--save_file", str(tmp_path / out)]) == 0
        assert len(tiled_decodes) == (out == "tiled.mp4")  # (the tiled decode ran for the tiled workflow only)
    assert (tmp_path / "plain.mp4").read_bytes() == (tmp_path / "tiled.mp4").read_bytes()


def test_experts_on_models_of_different_shifts(comfy, tmp_path):
    """Two KSamplerAdvanced nodes on models of different ModelSamplingSD3 shifts: the high-noise call's shift is
    ``--sample_shift``, the low-noise one's ``--low_noise_shift``; the workflow's video is the flags'."""
    w = t2v(shift=5.0)
    path = write(tmp_path, w.json())
    args = workflow_arguments(path, str(comfy))
    assert args[args.index("--sample_shift") + 1] == "5" and args[args.index("--low_noise_shift") + 1] == "8"
    assert "--low_noise_shift" not in workflow_arguments(write(tmp_path, t2v().json(), "same.json"), str(comfy))
    tokenizer = ["--tokenizer", str(comfy / "models" / "text_encoders" / "tokenizer")]
    argv = ["generate", "--workflow", str(path), "--comfy_dir", str(comfy), *tokenizer]
    assert main([*argv, "--save_file", str(tmp_path / "shifts.gif")]) == 0
    assert main(["generate", *args, *tokenizer, "--save_file", str(tmp_path / "flags.gif")]) == 0
    assert (tmp_path / "shifts.gif").read_bytes() == (tmp_path / "flags.gif").read_bytes()
    assert main([*argv, "--low_noise_shift", "5", "--save_file", str(tmp_path / "one.gif")]) == 0
    assert (tmp_path / "one.gif").read_bytes() != (tmp_path / "shifts.gif").read_bytes()


def test_nodes_after_the_decoder_are_said(comfy, tmp_path, caplog):
    """A node between the decoder and a save node (frame interpolation here) is not run: said, naming it; the video is
    the decoded frames, at the task's rate (the save node's rate is for the interpolated frames). A node that reads
    the frames but feeds no output (an info node) is not."""
    w = t2v()
    w.add(62, "RIFE VFI", ["rife47.pth", 10, 2], frames=(8, 0)).add(63, "GetImageSizeAndCount", image=(8, 0))
    relink(w, 60, "images", 62)
    with caplog.at_level(logging.WARNING, logger="wanflow"):
        args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert "node 62 (RIFE VFI) works on the decoded frames and is not run" in caplog.text
    assert "GetImageSizeAndCount" not in caplog.text and "--fps" not in args
