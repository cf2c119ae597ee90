"""The pipeline refuses what cannot succeed: a request whose least memory exceeds what is free (before any work),
and latents that hold NaN or Inf after the first step (broken weights), instead of a black video."""

import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.checkpoints.io import read_folder, write_folder
from wanflow.configs import DiTConfig, VAEConfig
from wanflow.pipelines import guards
from wanflow.pipelines.guards import GIB, FiniteLatents, MemoryNeed, NonFiniteLatents, check_memory, memory_need
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.sampling.hooks import Step

DIT = DiTConfig(dim=128, ffn_dim=384, text_dim=64, text_len=32, num_heads=2, num_layers=4)  # the built-ins' DiT
VAE21 = VAEConfig(base_dim=16, decoder_dim=16, num_res_blocks=1)  # stride (4, 8, 8)
VAE22 = VAEConfig(version="2.2", base_dim=16, decoder_dim=16, num_res_blocks=1, z_dim=48, patch_size=2,
                  latents_mean=(0.0,) * 48, latents_std=(1.0,) * 48)  # fmt: skip


def test_memory_need_is_the_closed_form():
    need = memory_need(DIT, VAE21, (64, 48), 9)
    # 3 latent frames x (48/8/2) x (64/8/2) = 36 tokens; batch 2 x 36 x (8*128 + 2*4*384) bytes
    assert need.tokens == 36 and need.dit_step == 2 * 36 * (1024 + 3072) == 294_912
    # clip 3*9*64*48 = 82944 values twice, finest stage 16 ch x 48 x 64 over 2*4 + 2*(2*2+1) = 18 frames, float32
    assert need.vae_decode == (2 * 82_944 + 18 * 16 * 48 * 64) * 4 == 4_202_496
    assert need.host == 2 * 82_944 * 4 and not need.tiled


def test_memory_need_follows_dtype_batch_tiles_and_the_22_vae():
    need = memory_need(DIT, VAE21, (64, 48), 9, batch=1, dit_bytes=2, vae_tile=2, pending_weights=1000)
    assert need.dit_step == 36 * (1024 + 2 * 2 * 384) + 1000
    assert need.vae_decode == (82_944 + 18 * 16 * 16 * 16) * 4 and need.tiled  # one clip, a 16x16-pixel tile
    need = memory_need(DIT, VAE22, (64, 64), 5)  # stride (4, 16, 16): 2 x 2 x 2 tokens; finest stage at 32x32
    assert need.tokens == 8 and need.vae_decode == (2 * 3 * 5 * 64 * 64 + 18 * 16 * 32 * 32) * 4


def test_check_memory_refuses_in_one_line(monkeypatch):
    need = MemoryNeed(tokens=10, dit_step=3 * GIB, vae_decode=5 * GIB, host=1 * GIB)
    monkeypatch.setattr(guards, "available_memory", lambda device: 4 * GIB)
    with pytest.raises(ValueError) as caught:
        check_memory(need, torch.device("cpu"))
    text = str(caught.value)
    assert text.startswith("this request needs at least 5.0 GiB of RAM but 4.0 GiB is free (10 DiT tokens: a DiT")
    assert text.endswith("--frame_num), or decode in tiles (--vae_tile)") and "\n" not in text
    monkeypatch.setattr(guards, "available_memory", lambda device: 5 * GIB)
    check_memory(need, torch.device("cpu"))  # fits exactly
    monkeypatch.setattr(guards, "available_memory", lambda device: None)
    check_memory(need, torch.device("cpu"))  # unknown: no check


def test_available_memory_reads_the_system():
    free = guards.available_memory(torch.device("cpu"))
    assert free is None or 0 < free < 2**50
    assert guards.available_memory(torch.device("meta")) is None


def test_finite_latents_checks_step_zero_only():
    hook = FiniteLatents()
    step0, step1 = Step(0, 3, 999, "high", 4.0), Step(1, 3, 900, "high", 4.0)
    hook.after(step0, torch.zeros(1, 4, 2, 2, 2))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteLatents, match="NaN or Inf after the first step \\(expert 'high'\\)"):
            hook.after(step0, torch.full((1, 4, 2, 2, 2), bad))
    hook.after(step1, torch.full((1, 4, 2, 2, 2), float("nan")))  # later steps: no check, no device sync


@pytest.fixture(scope="module")
def nan_ckpt(tmp_path_factory):
    root = write_official_checkpoint(tmp_path_factory.mktemp("nan"), "t2v-A14B")
    for expert in ("high_noise_model", "low_noise_model"):
        state = {k: torch.full_like(v, float("nan")) for k, v in read_folder(root / expert).items()}
        write_folder(state, root / expert, max_shard_bytes=40_000)
    return root


def test_nan_weights_stop_after_the_first_step(nan_ckpt, monkeypatch):
    pipe = WanPipeline.from_pretrained(nan_ckpt)
    steps, decoded = [], []
    monkeypatch.setattr(pipe, "decode", lambda *a: decoded.append(1))
    with pytest.raises(NonFiniteLatents, match="weights are broken"):
        pipe("x", size=(64, 64), frames=5, steps=4, seed=1, callback=steps.append)
    assert steps == [] and decoded == []  # stopped inside step 0: no callback, no decode


def test_memory_is_checked_before_any_work(nan_ckpt, monkeypatch):
    pipe = WanPipeline.from_pretrained(nan_ckpt)
    monkeypatch.setattr(pipe, "encode_prompts", lambda *a: pytest.fail("encoded before the memory check"))
    monkeypatch.setattr(guards, "available_memory", lambda device: 64 * 2**20)
    # tiny DiT (dim 24, ffn 32): 2 x 12288 x (8*24 + 8*32) bytes; tiny VAE (8 channels, 2 residual blocks): 2 clips of
    # 3 x 9 x 1024^2 values plus (2*4 + 2*(2*3 + 1)) frames of 8 x 1024^2 values, float32 -> 920 MiB
    want = r"at least 920 MiB of RAM but 64 MiB is free \(12288 DiT tokens: a DiT step 10 MiB, the VAE decode 920 MiB"
    with pytest.raises(ValueError, match=want):
        pipe("x", size=(1024, 1024), frames=9, steps=2)


def test_model_offload_counts_the_weights_still_to_come(nan_ckpt, monkeypatch):
    pipe = WanPipeline.from_pretrained(nan_ckpt, offload="model")
    expert = sum(p.nbytes for p in pipe.experts["high"].parameters())
    assert pipe._pending_weights() == 0  # on the CPU every expert is where it runs
    monkeypatch.setattr(pipe, "_on_device", lambda tensor: False)  # as on a GPU before the first step
    assert pipe._pending_weights() == expert > 0
    low = {id(p) for p in pipe.experts["low"].parameters()}
    monkeypatch.setattr(pipe, "_on_device", lambda tensor: id(tensor) in low)  # the other expert is there
    assert pipe._pending_weights() == 0  # it is dropped when the high-noise expert comes
