"""diffusers' LoRA methods on ``WanPipeline``: the same sequence of calls (load into ``transformer`` and
``transformer_2``, set_adapters with per-component weights, disable / enable, fuse with a scale, unfuse, unload after
fusing, delete) given to diffusers' own ``WanPipeline`` and to wanflow, on one tiny checkpoint and the same latents,
gives the same latents after every call."""

import itertools
import json
import logging

import pytest
import torch
from diffusers import WanPipeline as DiffusersWan
from safetensors.torch import save_file

from tests.pipelines.test_diffusers_api import DIFFUSERS_CALL, PROMPT
from tests.pipelines.test_parity import diffusers_pipe
from tests.tiny.checkpoint import TINY_DITS, write_both_layouts
from tests.tiny.lora import make_lora
from wanflow.pipelines.diffusers_lora import guess_weight_name
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.tasks import TASKS

TASK = "t2v-A14B"
CALL = {
    **DIFFUSERS_CALL,  # the diffusers-api tests' call, shorter:
    "prompt": PROMPT,
    "num_frames": 5,
    "num_inference_steps": 4,  # 3 steps on the high-noise expert, 1 on the low-noise one
    "output_type": "latent",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers-lora")
    write_both_layouts(root, TASK, seed=11)
    for fmt, seed in (("wan", 5), ("diffusers", 6), ("kohya", 7)):
        state, _ = make_lora(fmt, TINY_DITS[TASK], seed)
        (root / f"lora{seed}").mkdir()
        save_file(state, root / f"lora{seed}" / f"{fmt}.safetensors")
    return root


def latents_of(pipe, noise):
    with torch.no_grad():
        return pipe(latents=noise.clone(), **CALL).frames


def test_the_same_lora_calls_give_diffusers_latents(root):
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    ours = WanPipeline.from_pretrained(root / "official")
    theirs = diffusers_pipe(DiffusersWan, root / "diffusers", TASKS[TASK].shift)
    noise = ours.noise((16, 2, 8, 8), seed=3)
    base = latents_of(ours, noise)
    steps = [
        ("load a", lambda p: p.load_lora_weights(str(root / "lora5"), adapter_name="a")),
        (
            "load b: the only active one",
            lambda p: p.load_lora_weights(str(root / "lora6" / "diffusers.safetensors"), "b"),
        ),
        ("load into transformer_2", lambda p: p.load_lora_weights(str(root / "lora7"), load_into_transformer_2=True)),
        (
            "set_adapters with per-component weights",
            lambda p: p.set_adapters(["a", "b", "default_0"], [0.7, {"transformer": 0.4}, 1.3]),
        ),
        ("set_adapters: one name", lambda p: p.set_adapters("a")),
        ("disable_lora", lambda p: p.disable_lora()),
        ("enable_lora", lambda p: p.enable_lora()),
        ("set_adapters again", lambda p: p.set_adapters(["a", "default_0"], [0.6, 0.9])),
        ("fuse_lora", lambda p: p.fuse_lora(components=["transformer", "transformer_2"], lora_scale=0.5)),
        ("unfuse_lora", lambda p: p.unfuse_lora(components=["transformer", "transformer_2"])),
        ("set_adapters on transformer only", lambda p: p.set_adapters(["a", "b"], [0.5, 0.7])),
        ("fuse, then disable: unfused", lambda p: (p.fuse_lora(lora_scale=1.5), p.disable_lora())),
        ("enable: the two beside at their scaled weights", lambda p: p.enable_lora()),
        ("set_adapters: b only", lambda p: p.set_adapters("b", 0.7)),
        ("fuse transformer only", lambda p: p.fuse_lora(lora_scale=2.0)),
        ("unload after fusing: the fused one stays", lambda p: p.unload_lora_weights()),
    ]
    seen = [base]
    for label, call in steps:
        call(ours)
        call(theirs)
        a, b = latents_of(ours, noise), latents_of(theirs, noise)
        # the base models differ by 8e-6 of the latents' range (1e-4 of 12.7); the LoRAs add nothing measurable
        assert (a - b).abs().max() <= 2e-5 * b.abs().max(), label
        assert ours.get_list_adapters() == theirs.get_list_adapters(), label
        assert ours.get_active_adapters() == theirs.get_active_adapters(), label
        seen.append(a)
    differs = [(x - y).abs().max().item() > 1e-2 for x, y in itertools.pairwise(seen)]
    # every call changes the latents but unfuse_lora (fused or beside, the same weights: lora_scale stays applied, as
    # in diffusers) and the last unload (transformer's active adapter is fused, the others are inactive)
    assert differs == [True] * 9 + [False, True, True, True, True, True, False]
    assert (seen[6] - base).abs().max() <= 1e-6  # disabled: the base model
    assert (seen[-1] - base).abs().max() > 1e-2  # the fused adapter outlives its unloading
    baked = [{"name": "b", "strength": {"high": 0.7 * 2.0}, "merged": True, "baked": True}]
    assert ours.loras == baked and ours.get_list_adapters() == {}  # ... and the output's metadata says so:
    assert json.loads(ours(PROMPT, size=(64, 64), frames=5, steps=1, seed=1).metadata["loras"]) == baked


def test_attention_kwargs_scale_as_in_diffusers(root):
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    ours = WanPipeline.from_pretrained(root / "official")
    theirs = diffusers_pipe(DiffusersWan, root / "diffusers", TASKS[TASK].shift)
    noise = ours.noise((16, 2, 8, 8), seed=3)
    for pipe in (ours, theirs):
        pipe.load_lora_weights(str(root / "lora5"), adapter_name="a")
        pipe.load_lora_weights(str(root / "lora7"), adapter_name="b", load_into_transformer_2=True)
        pipe.set_adapters(["a", "b"], [0.8, 1.2])
    full = latents_of(ours, noise)
    with torch.no_grad():
        a = ours(latents=noise.clone(), attention_kwargs={"scale": 0.4}, **CALL).frames
        b = theirs(latents=noise.clone(), attention_kwargs={"scale": 0.4}, **CALL).frames
    assert (a - b).abs().max() <= 2e-5 * b.abs().max() and (a - full).abs().max() > 1e-2
    assert ours.loras == [
        {"name": "a", "strength": {"high": 0.8}, "merged": False},
        {"name": "b", "strength": {"low": 1.2}, "merged": False},
    ]  # the call's scale is the call's only
    assert torch.equal(latents_of(ours, noise), full)
    with pytest.raises(ValueError, match="takes"):
        ours(latents=noise.clone(), attention_kwargs={"scale": 0.4, "mask": 1}, **CALL)


def test_what_diffusers_would_run_otherwise_is_refused(root):
    """PEFT runs no unmerged adapter in a layer where another is merged; wanflow refuses to get there."""
    pipe = WanPipeline.from_pretrained(root / "official")
    pipe.load_lora_weights(root / "lora5", adapter_name="a")
    pipe.load_lora_weights(root / "lora6", adapter_name="b")
    pipe.set_adapters(["a", "b"])
    with pytest.raises(ValueError, match=r"leave the active adapter\(s\) \['a'\] of transformer unmerged"):
        pipe.fuse_lora(adapter_names=["b"])
    pipe.set_adapters("b")
    pipe.fuse_lora(adapter_names=["b"])
    with pytest.raises(ValueError, match=r"fused adapter\(s\) \['b'\].*does not run \['a'\].*unfuse_lora first"):
        pipe.set_adapters(["a", "b"])
    pipe.unfuse_lora()
    pipe.set_adapters(["a", "b"])


def test_delete_adapters_and_the_wanflow_lora_view(root):
    pipe = WanPipeline.from_pretrained(root / "official")
    noise = pipe.noise((16, 2, 8, 8), seed=3)
    base = latents_of(pipe, noise)
    pipe.load_lora_weights(root / "lora5", adapter_name="style")
    pipe.load_lora_weights(root / "lora7", adapter_name="style", load_into_transformer_2=True)  # a name per component
    assert pipe.get_list_adapters() == {"transformer": ["style"], "transformer_2": ["style"]}
    assert pipe.loras == [{"name": "style", "strength": {"high": 1.0, "low": 1.0}, "merged": False}]
    pipe.set_adapters("style", 0.3)
    assert pipe.loras[0]["strength"] == {"high": 0.3, "low": 0.3}
    pipe.delete_adapters("style")
    assert pipe.get_list_adapters() == {} and torch.equal(latents_of(pipe, noise), base)
    name = pipe.load_lora(root / "lora6" / "diffusers.safetensors", 0.5)  # wanflow's own: an active adapter too
    assert pipe.get_list_adapters() == {"transformer": [name], "transformer_2": [name]}
    pipe.enable_lora()  # a diffusers method leaves it on, at its strength
    assert pipe.get_active_adapters() == [name] and pipe.loras[0]["strength"] == {"high": 0.5, "low": 0.5}
    with pytest.raises(ValueError, match="were loaded with load_lora, not load_lora_weights"):
        pipe.fuse_lora()
    pipe.unload_lora_weights()
    assert torch.equal(latents_of(pipe, noise), base)


def test_a_state_dict_and_clear_errors(root):
    pipe = WanPipeline.from_pretrained(root / "official")
    state, _ = make_lora("wan", TINY_DITS[TASK], 5)
    pipe.load_lora_weights(state, "from-dict")
    assert pipe.get_list_adapters() == {"transformer": ["from-dict"]}
    with pytest.raises(ValueError, match="already on transformer"):
        pipe.load_lora_weights(state, "from-dict")
    with pytest.raises(ValueError, match=r"adapter\(s\) \['nope'\] not loaded"):
        pipe.set_adapters(["nope"])
    with pytest.raises(ValueError, match="2 adapter names but 1 adapter weights"):
        pipe.set_adapters(["from-dict", "from-dict"], [1.0])
    with pytest.raises(ValueError, match=r"components \['unet'\]"):
        pipe.set_adapters("from-dict", {"unet": 1.0})
    with pytest.raises(ValueError, match="hotswap is not supported"):
        pipe.load_lora_weights(state, "x", hotswap=True)
    with pytest.raises(ValueError, match="no file, folder or Hugging Face Hub"):
        pipe.load_lora_weights(root / "missing.safetensors")
    pipe.disable_lora()
    with pytest.raises(ValueError, match="enable_lora"):
        pipe.fuse_lora()
    ti2v = WanPipeline.from_builtin("ti2v-5B")
    with pytest.raises(ValueError, match="no transformer_2"):
        ti2v.load_lora_weights(state, load_into_transformer_2=True)


def test_guess_weight_name_as_diffusers():
    assert guess_weight_name(["a.safetensors", "README.md"], "repo") == "a.safetensors"
    assert guess_weight_name(["x.safetensors", "pytorch_lora_weights.safetensors"], "repo").startswith("pytorch")
    assert guess_weight_name(["optimizer.safetensors", "lora.safetensors"], "repo") == "lora.safetensors"
    assert guess_weight_name(["sub/l.safetensors", "top.safetensors"], "repo", "sub") == "l.safetensors"
    with pytest.raises(ValueError, match=r"pass weight_name= \(several: \['a.safetensors', 'b.safetensors'\]"):
        guess_weight_name(["b.safetensors", "a.safetensors"], "repo")
    with pytest.raises(ValueError, match=r"\(none \.safetensors"):
        guess_weight_name(["model.bin"], "repo")


def test_a_hub_repository_is_fetched_with_huggingface_hub(root, monkeypatch):
    """No network here: huggingface_hub's two calls are stood in for, and what wanflow asks of them is checked."""
    import huggingface_hub

    asked = []
    files = ["README.md", "loras/high.safetensors", "loras/optimizer.safetensors", "other/low.safetensors"]
    monkeypatch.setattr(
        huggingface_hub, "list_repo_files", lambda repo, **kw: asked.append(("list", repo, kw)) or files
    )

    def download(repo, filename, **kw):
        asked.append(("get", repo, filename, kw))
        return str(root / "lora5" / "wan.safetensors")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    pipe = WanPipeline.from_pretrained(root / "official")
    pipe.load_lora_weights("org/wan-loras", subfolder="loras", revision="v1", adapter_name="hub")
    pipe.load_lora_weights(
        "org/wan-loras", weight_name="low.safetensors", subfolder="other", load_into_transformer_2=True
    )
    assert asked == [
        ("list", "org/wan-loras", {"revision": "v1", "token": None}),
        ("get", "org/wan-loras", "high.safetensors", {"subfolder": "loras", "revision": "v1"}),
        ("get", "org/wan-loras", "low.safetensors", {"subfolder": "other"}),
    ]
    assert pipe.get_list_adapters() == {"transformer": ["hub"], "transformer_2": ["default_0"]}
    with pytest.raises(ValueError, match="offline"):
        pipe.load_lora_weights("org/wan-loras", local_files_only=True)


@pytest.mark.parametrize("policy", ["model", "block"])
def test_the_memory_policies_give_the_resident_frames(root, policy):
    """Loading, weighting, fusing and unloading go through the pipeline's transforms: the policy moves them along."""
    state, _ = make_lora("wan", TINY_DITS[TASK], 5)
    call = dict(size=(64, 64), frames=5, steps=3, seed=2)
    frames = []
    for offload in ("resident", policy):
        pipe = WanPipeline.from_pretrained(root / "official", offload=offload)
        pipe.load_lora_weights(state, "a")
        pipe.load_lora_weights(state, "b", load_into_transformer_2=True)
        pipe.set_adapters(["a", "b"], [0.5, {"transformer_2": 0.8}])
        runs = [pipe(PROMPT, **call).frames]
        pipe.fuse_lora(["transformer", "transformer_2"], lora_scale=0.5)
        runs.append(pipe(PROMPT, **call).frames)
        pipe.unload_lora_weights()
        runs.append(pipe(PROMPT, **call).frames)
        assert pipe._placement.policy == offload
        frames.append(runs)
    assert all(torch.equal(a, b) for a, b in zip(*frames, strict=True))
    assert (frames[0][0] - frames[0][1]).abs().max() > 1e-2  # fusing at half the weights changed the picture
