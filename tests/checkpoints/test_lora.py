"""LoRA files: every dialect read into one canonical form whose dense deltas equal the ones computed by hand from the
raw factors; detection from the keys; skipped and unknown keys; every bad input a clear error naming what is wrong."""

import logging

import pytest
import torch
from safetensors.torch import save_file

from tests.tiny.dit import TINY_T2V, TINY_TI2V
from tests.tiny.lora import FORMATS, RANK, make_lora
from wanflow.checkpoints.io import CheckpointError
from wanflow.checkpoints.lora import LoraError, LowRank, check_fits, parse_lora, read_lora, read_lora_file
from wanflow.models.dit import WanDiT
from wanflow.runtime.lora import param_shapes

DETECTED = {  # format -> words the detected description must hold
    "wan": ("Wan/ComfyUI keys, official names", "LoRA down/up", "alpha"),
    "wan-ab": ("Wan/ComfyUI keys, official names", "LoRA A/B", "alpha"),
    "kohya": ("kohya/musubi keys, official names", "LoRA down/up"),
    "fun": ("VideoX-Fun keys, official names",),
    "diffusers": ("diffusers keys, diffusers names", "LoRA A/B"),
    "peft": ("PEFT keys, official names", "LoRA A/B"),
    "comfyui": ("ComfyUI keys, official names",),
    "loha": ("kohya/musubi keys", "LoHa", "alpha"),
    "lokr": ("LyCORIS keys, diffusers names", "LoKr", "alpha"),
    "lightx2v": ("Wan/ComfyUI keys", "LoRA down/up", "diff", "diff_b", "diff_m"),
}


def shapes_of(cfg):
    with torch.device("meta"):
        return param_shapes(WanDiT(cfg))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_deltas_computed_by_hand(fmt):
    state, expected = make_lora(fmt, TINY_T2V, seed=1)
    lora = parse_lora(state, fmt)
    shapes = shapes_of(TINY_T2V)
    assert sorted(lora.deltas) == sorted(expected)
    for name, want in expected.items():
        (delta,) = lora.deltas[name]
        torch.testing.assert_close(delta.delta(shapes[name]), want.reshape(shapes[name]), rtol=1e-6, atol=1e-7)
    assert all(word in lora.format for word in DETECTED[fmt]), lora.format
    check_fits(lora, shapes, TINY_T2V.num_layers)  # every delta fits the tiny DiT


def test_alpha_scales_by_alpha_over_rank_and_its_absence_by_one():
    down, up = torch.randn(8, 24), torch.randn(24, 8)
    with_alpha = parse_lora({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
                             "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
                             "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(1.0)})  # fmt: skip
    (d,) = with_alpha.deltas["blocks.0.self_attn.q.weight"]
    assert isinstance(d, LowRank) and d.scale == 1.0 / 8 and d.rank == 8  # the Lightning files: 8 / 64 = 0.125
    plain = parse_lora({"blocks.0.self_attn.q.lora_A.weight": down, "blocks.0.self_attn.q.lora_B.weight": up})
    assert plain.deltas["blocks.0.self_attn.q.weight"][0].scale == 1.0


def test_wan21_image_branch_keys_are_skipped_and_counted_in_one_line(caplog):
    state, expected = make_lora("wan", TINY_T2V)
    for i in range(2):
        for name in ("k_img", "v_img"):
            state[f"diffusion_model.blocks.{i}.cross_attn.{name}.lora_down.weight"] = torch.randn(RANK, 24)
            state[f"diffusion_model.blocks.{i}.cross_attn.{name}.lora_up.weight"] = torch.randn(24, RANK)
    state["diffusion_model.img_emb.proj.1.lora_down.weight"] = torch.randn(RANK, 24)
    with caplog.at_level(logging.WARNING):
        lora = parse_lora(state, "l.safetensors")
    assert len(lora.skipped) == 9 and sorted(lora.deltas) == sorted(expected)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "skipped 9 keys" in lines[0]


def test_unknown_key_is_an_error_naming_it():
    state, _ = make_lora("kohya", TINY_T2V)
    state["lora_unet_blocks_0_self_attn_qq.lora_down.weight"] = torch.randn(RANK, 24)
    with pytest.raises(LoraError, match=r"lora_unet_blocks_0_self_attn_qq\.lora_down\.weight"):
        parse_lora(state)
    with pytest.raises(LoraError, match=r"1 key\(s\) match no module.*model.weights"):
        parse_lora({"model.weights": torch.zeros(1)})
    full_checkpoint = {"blocks.0.self_attn.q.weight": torch.zeros(24, 24)}  # not a LoRA at all
    with pytest.raises(LoraError, match=r"blocks\.0\.self_attn\.q\.weight"):
        parse_lora(full_checkpoint)


def test_rank_mismatch_and_missing_pair_name_the_module():
    down, up = torch.randn(4, 24), torch.randn(24, 8)
    with pytest.raises(LoraError, match=r"blocks.1.ffn.0: rank mismatch, down \(4, 24\) and up \(24, 8\)"):
        parse_lora({"blocks.1.ffn.0.lora_down.weight": down, "blocks.1.ffn.0.lora_up.weight": up})
    with pytest.raises(LoraError, match=r"blocks\.1\.ffn\.0 has a lora_down factor but no lora_up"):
        parse_lora({"blocks.1.ffn.0.lora_down.weight": down})
    with pytest.raises(LoraError, match="DoRA"):
        parse_lora({"blocks.1.ffn.0.lora_down.weight": down, "blocks.1.ffn.0.lora_up.weight": up.T[:4].T,
                    "blocks.1.ffn.0.dora_scale": torch.ones(24)})  # fmt: skip


def test_lora_for_another_model_size_names_the_module():
    wide, _ = make_lora("wan", TINY_T2V.replace(dim=48, num_heads=4))
    with pytest.raises(LoraError, match=r"blocks.0.self_attn.q: rank-4 .*another model size.*24 wide"):
        check_fits(parse_lora(wide, "wide"), shapes_of(TINY_T2V), 2)
    deep, _ = make_lora("wan", TINY_T2V.replace(num_layers=3))
    with pytest.raises(LoraError, match=r"blocks.2.self_attn.q.weight is not a parameter.*2 blocks"):
        check_fits(parse_lora(deep, "deep"), shapes_of(TINY_T2V), 2)
    ti2v = shapes_of(TINY_TI2V)  # same width, other patch embedding / head: the lightx2v head delta does not fit
    with pytest.raises(LoraError, match=r"head\.head"):
        check_fits(parse_lora(make_lora("lightx2v", TINY_T2V)[0]), ti2v, 2)


def test_files_wrong_type_truncated_and_per_expert_folder(tmp_path):
    state, _ = make_lora("wan", TINY_T2V)
    save_file(state, tmp_path / "good.safetensors", metadata={"ss_network_dim": "4"})
    lora = read_lora_file(tmp_path / "good.safetensors")
    assert lora.metadata == {"ss_network_dim": "4"} and lora.ranks == [RANK]
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04\x95 not safetensors")
    for bad in ("cut.safetensors", "pickle.pt"):
        with pytest.raises(CheckpointError, match="not a safetensors file, or a truncated one"):
            read_lora(tmp_path / bad)
    with pytest.raises(LoraError, match="not found"):
        read_lora(tmp_path / "missing.safetensors")
    folder = tmp_path / "Wan2.2-Lightning"
    folder.mkdir()
    save_file(state, folder / "high_noise_model.safetensors")
    save_file(make_lora("kohya", TINY_T2V)[0], folder / "low_noise_model.safetensors")
    both = read_lora(folder)
    assert set(both) == {"high", "low"} and "kohya" in both["low"].format
    with pytest.raises(LoraError, match="folder without"):
        read_lora(tmp_path)
