import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from tests.tiny.dit import TINY_T2V, random_dit
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.offload import ExpertPlacement, stream_blocks

KW = dict(size=(64, 64), frames=5, steps=3, seed=9)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B")


@pytest.mark.parametrize("policy", ["model", "block"])
def test_policies_give_the_same_video(ckpt, policy):
    resident = WanPipeline.from_pretrained(ckpt, offload="resident")("a green square", **KW)
    other = WanPipeline.from_pretrained(ckpt, offload=policy)("a green square", **KW)
    assert torch.equal(resident.frames, other.frames)


def test_model_policy_keeps_one_active_expert():
    experts = {"high": random_dit(TINY_T2V, 1), "low": random_dit(TINY_T2V, 2)}
    placement = ExpertPlacement(experts, "cpu", "model")
    assert placement("high") is experts["high"] and placement.active == "high"
    assert placement("low") is experts["low"] and placement.active == "low"
    placement.release()
    assert placement.active is None


def test_block_streaming_runs_each_block_through_hooks():
    model = random_dit(TINY_T2V, 3)
    x, t, ctx = torch.randn(1, 16, 1, 4, 4), torch.tensor([500]), torch.randn(1, 7, 32)
    want = model(x, t, ctx)
    calls = []
    handles = stream_blocks(model, torch.device("cpu"))
    assert len(handles) == 2 * len(model.blocks)
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, a: calls.append(m))
    torch.testing.assert_close(model(x, t, ctx), want, rtol=0, atol=0)
    assert calls == list(model.blocks)


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown offload policy"):
        ExpertPlacement({}, "cpu", "disk")


def test_hub_repo_id_is_downloaded_only_when_asked(ckpt, monkeypatch, tmp_path):
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo: asked.append(repo) or str(ckpt))
    pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.2-T2V-A14B")
    assert asked == ["Wan-AI/Wan2.2-T2V-A14B"] and pipe.task.name == "t2v-A14B"
    monkeypatch.chdir(ckpt.parent)
    WanPipeline.from_pretrained(f"{ckpt.name}/")  # an existing local folder is never looked up on the Hub
    assert asked == ["Wan-AI/Wan2.2-T2V-A14B"]
