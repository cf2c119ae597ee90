import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from tests.tiny.dit import TINY_T2V, random_dit
from wanflow.pipelines.core import Conditioning, Sampler, denoise
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.progress import Callback
from wanflow.runtime import offload
from wanflow.runtime.offload import ExpertPlacement, stream_blocks
from wanflow.sampling.experts import select_expert
from wanflow.sampling.solvers import get_schedule, get_solver

KW = dict(size=(64, 64), frames=5, steps=3, seed=9)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B")


GUIDED = dict(nag_scale=3.0, guidance="cfg_zero_star")  # NAG sets each expert's cross-attention as it comes


@pytest.mark.parametrize("options", [{}, GUIDED], ids=["plain", "nag+cfg_zero_star"])
@pytest.mark.parametrize("policy", ["model", "block"])
def test_policies_give_the_same_video(ckpt, policy, options):
    resident = WanPipeline.from_pretrained(ckpt, offload="resident")("a green square", **KW, **options)
    other = WanPipeline.from_pretrained(ckpt, offload=policy)("a green square", **KW, **options)
    assert torch.equal(resident.frames, other.frames)
    if options:
        plain = WanPipeline.from_pretrained(ckpt, offload=policy)("a green square", **KW)
        assert (plain.frames - other.frames).abs().max() > 0.01


def test_model_policy_keeps_one_active_expert():
    experts = {"high": random_dit(TINY_T2V, 1), "low": random_dit(TINY_T2V, 2)}
    placement = ExpertPlacement(experts, "cpu", "model")
    assert placement("high") is experts["high"] and placement.active == "high"
    assert placement("low") is experts["low"] and placement.active == "low"
    placement.release()
    assert placement.active is None


def record_moves(monkeypatch, experts):
    """Log ``("move", expert)`` for every copy of a whole expert the placement makes from now on."""
    names = {id(m): n for n, m in experts.items()}
    events, move = [], offload._to

    def recorded(module, device, stream=None):
        events.append(("move", names.get(id(module), "other")))
        move(module, device, stream)

    monkeypatch.setattr(offload, "_to", recorded)
    return events


def test_prefetched_expert_is_copied_once_and_not_at_the_switch(monkeypatch):
    experts = {"high": random_dit(TINY_T2V, 1), "low": random_dit(TINY_T2V, 2)}
    placement = ExpertPlacement(experts, "cpu", "model")
    events = record_moves(monkeypatch, experts)
    placement("high")
    placement.prefetch("low")
    placement.prefetch("low")
    placement.prefetch("high")  # the active one: nothing to do
    assert events == [("move", "high"), ("move", "low")] and placement.prefetched == "low"
    assert placement("low") is experts["low"] and placement.active == "low" and placement.prefetched is None
    assert events == [("move", "high"), ("move", "low")]
    placement.prefetch("high")
    placement.release()  # drops the active and the prefetched expert
    assert placement.active is None and placement.prefetched is None


def test_denoise_prefetches_the_next_expert_one_step_before_the_switch(monkeypatch):
    experts = {"high": random_dit(TINY_T2V, 1), "low": random_dit(TINY_T2V, 2)}
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 16, 1, 4, 4, generator=gen)
    cond = Conditioning(torch.randn(1, 7, 32, generator=gen), torch.randn(1, 7, 32, generator=gen))
    schedule, boundary = get_schedule("unipc", 8, 12.0), 875.0
    names = [select_expert(t, boundary) for t in schedule.timesteps.tolist()]
    k = names.index("low")
    assert 1 < k < len(names) and set(names[k:]) == {"low"}

    def run(experts_at, **kw):
        sampler = Sampler(schedule, get_solver("unipc"), boundary, (3.0, 4.0))
        steps = Callback(lambda s: events.append(("step", s.index)))
        return denoise(experts_at, noise, cond, sampler, [*kw.get("hooks", []), steps])

    events = []
    want = run(experts.__getitem__)  # both resident
    placement = ExpertPlacement(experts, "cpu", "model")
    events = record_moves(monkeypatch, experts)
    got = run(placement, hooks=[placement])
    steps = [("step", i) for i in range(len(names))]
    assert events == [("move", "high"), *steps[: k - 1], ("move", "low"), *steps[k - 1 :]]
    assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prefetch_on_a_side_stream_keeps_the_host_copies():
    experts = {"high": random_dit(TINY_T2V, 1), "low": random_dit(TINY_T2V, 2)}
    want = [p.detach().clone() for p in experts["low"].parameters()]
    placement = ExpertPlacement(experts, "cuda", "model")
    host = [p.data_ptr() for p in experts["high"].parameters()]
    placement("high")
    placement.prefetch("low")
    assert placement.stream is not None and placement.prefetched == "low"
    assert all(p.is_cuda for m in experts.values() for p in m.parameters())
    placement("low")
    high = list(experts["high"].parameters())
    assert all(p.device.type == "cpu" and p.is_pinned() for p in high)
    assert [p.data_ptr() for p in high] == host  # released by dropping the device copy, nothing copied back
    assert all(torch.equal(p.cpu(), w) for p, w in zip(experts["low"].parameters(), want, strict=True))
    placement.release()
    assert all(p.device.type == "cpu" for m in experts.values() for p in m.parameters())


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
