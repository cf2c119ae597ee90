import torch

from tests.sync import HostTransfers
from tests.tiny.dit import TINY_TI2V
from wanflow.models.dit import TokenTimesteps, WanDiT
from wanflow.pipelines.core import Conditioning, Sampler, denoise, model_timesteps, twice
from wanflow.sampling.solvers import get_schedule, get_solver


def test_t2v_timesteps_are_one_per_sample():
    t = model_timesteps(937, torch.zeros(2, 16, 3, 4, 6), None, (1, 2, 2))
    assert t.dtype == torch.int64 and t.tolist() == [937, 937]


def test_ti2v_timesteps_are_factored_with_frame0_at_zero():
    latents = torch.zeros(1, 48, 3, 4, 6)  # 3 frames of 2 x 3 tokens
    t = model_timesteps(937, latents, torch.zeros(1, 48, 1, 4, 6), (1, 2, 2))
    assert isinstance(t, TokenTimesteps)
    assert t.values.tolist() == [[0.0, 937.0]]
    assert t.index.tolist() == [[0] * 6 + [1] * 12]
    assert t.dense().tolist() == [[0.0] * 6 + [937.0] * 12]  # the reference's (B, L) form


def test_ti2v_timesteps_are_built_without_reading_the_device():
    """On the meta device a host copy or a data-dependent op fails; only fill kernels run."""
    t = model_timesteps(500, torch.zeros(2, 48, 3, 4, 6, device="meta"), torch.zeros(1), (1, 2, 2))
    assert t.values.device.type == "meta" and t.values.shape == (2, 2) and t.index.shape == (2, 18)


def test_cfg_batch_doubles_both_forms():
    tt = TokenTimesteps(torch.tensor([[0.0, 5.0]]), torch.tensor([[0, 1, 1]]))
    both = twice(tt)
    assert both.values.tolist() == [[0.0, 5.0]] * 2 and both.index.tolist() == [[0, 1, 1]] * 2
    assert twice(torch.tensor([7])).tolist() == [7, 7]


def test_denoise_loop_never_waits_for_the_device():
    """TI2V with an image (per-token timesteps, frame 0 re-imposed), CFG batched, UniPC: the whole loop on meta."""
    with torch.device("meta"):
        model = WanDiT(TINY_TI2V)
        noise, frame0 = torch.randn(1, 48, 3, 8, 8), torch.randn(1, 48, 1, 8, 8)
        context = torch.randn(1, 7, TINY_TI2V.text_dim)
    cond = Conditioning(context, context, frame0=frame0)
    schedule = get_schedule("unipc", 3, 5.0)
    with HostTransfers() as transfers:
        out = denoise(lambda name: model, noise, cond, Sampler(schedule, get_solver("unipc"), None, 5.0))
    assert out.shape == noise.shape and out.device.type == "meta"
    assert transfers.seen == []
