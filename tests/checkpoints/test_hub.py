"""Names on the Hugging Face Hub: a repository id is told from a local path, and an ``hf://`` address is split into
repository, revision and path (huggingface_hub stood in for: no network here)."""

import huggingface_hub
import pytest
import torch

from wanflow.checkpoints.hub import is_hub_id, local_file


def test_a_repository_id_is_not_a_local_path(tmp_path):
    assert is_hub_id("Wan-AI/Wan2.2-TI2V-5B")
    (tmp_path / "org").mkdir()
    assert not is_hub_id(tmp_path / "org") and not is_hub_id("./a/b") and not is_hub_id("a/b/c")


def test_hf_addresses(tmp_path, monkeypatch):
    asked = []
    fetch = lambda r, f, revision=None: asked.append((r, f, revision)) or "x"  # noqa: E731
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetch)
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda r, revision=None, allow_patterns=None: str(tmp_path)
    )
    assert local_file(tmp_path / "l.safetensors") == tmp_path / "l.safetensors"  # a local path, as it is
    assert str(local_file("hf://org/name@main/dir/l.safetensors")) == "x"
    assert asked == [("org/name", "dir/l.safetensors", "main")]
    assert local_file("hf://org/name/Seko-V1.1") == tmp_path / "Seko-V1.1"  # a dot, yet a folder
    for bad in ("hf://org/name", "hf://org//x.safetensors", "hf://org"):
        with pytest.raises(ValueError, match=r"hf://ORG/NAME\[@REVISION\]/PATH"):
            local_file(bad)


def test_hub_options_reach_snapshot_download(tmp_path, monkeypatch):
    from tests.tiny.checkpoint import write_official_checkpoint
    from wanflow.pipelines.pipeline import WanPipeline

    folder = write_official_checkpoint(tmp_path / "ckpt", "ti2v-5B")
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: asked.append((repo, kw)) or folder)
    pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.2-TI2V-5B", revision="v1", token="t", local_files_only=True)
    assert pipe.task.name == "ti2v-5B"
    assert asked == [("Wan-AI/Wan2.2-TI2V-5B", {"revision": "v1", "token": "t", "local_files_only": True})]
    with pytest.raises(ValueError, match=r"is a local folder: \['revision'\] apply to a Hugging Face Hub"):
        WanPipeline.from_pretrained(folder, revision="v1")
    with pytest.raises(ValueError, match=r"unknown runtime options \['use_auth'\]"):
        WanPipeline.from_pretrained("Wan-AI/Wan2.2-TI2V-5B", use_auth="x")


def test_single_files_from_the_hub_are_fetched_once_and_read_as_local(tmp_path, monkeypatch):
    """``from_single_files`` / ``--dit`` with ``hf://`` addresses (ComfyUI's repackaged files, city96's GGUF repos):
    each file fetched with hf_hub_download, then the same models as from the local files."""
    from tests.checkpoints.test_single_file import comfy_folder
    from tests.tiny.checkpoint import write_official_checkpoint
    from wanflow.pipelines.pipeline import WanPipeline

    ckpt = write_official_checkpoint(tmp_path / "ckpt", "t2v-A14B")
    comfy_folder(ckpt, tmp_path / "repo")
    asked = []
    monkeypatch.setattr(
        huggingface_hub,
        "hf_hub_download",
        lambda repo, name, revision=None: asked.append((repo, name, revision)) or str(tmp_path / "repo" / name),
    )
    names = {
        "dit": "diffusion_models/wan2.2_t2v_high_noise_14B_Q8_0.gguf",
        "dit_low": "diffusion_models/wan2.2_t2v_low_noise_14B_Q8_0.gguf",
        "vae": "vae/wan_2.1_vae.safetensors",
        "t5": "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    }
    hub = WanPipeline.from_single_files(**{k: f"hf://Org/Repo@v2/{v}" for k, v in names.items()})
    assert asked == [("Org/Repo", name, "v2") for name in names.values()]
    local = WanPipeline.from_single_files(**{k: tmp_path / "repo" / v for k, v in names.items()})
    run = dict(size=(64, 48), frames=5, steps=2, seed=1)
    assert torch.equal(hub("a red circle", **run).frames, local("a red circle", **run).frames)
