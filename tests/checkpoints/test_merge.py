"""``wanflow convert SRC DST --lora_high F:S --lora_low F``: the LoRAs merged into the new folder's experts for good,
in either layout; the folder then makes the frames of the original with the same LoRAs merged at load, bit for bit,
and records what it holds; a LoRA that does not fit stops the command before anything is written."""

import json

import torch
from safetensors.torch import save_file

from tests.tiny.checkpoint import TINY_DITS, write_official_checkpoint
from tests.tiny.lora import make_lora
from tests.tiny.single_files import SMALL_T2V
from wanflow.checkpoints.layouts import DEFAULTS_FILE, detect_layout
from wanflow.cli import main
from wanflow.pipelines.pipeline import WanPipeline

TASK = "t2v-A14B"
RUN = dict(size=(64, 64), frames=5, steps=4, guide_scale=(3.0, 4.0), seed=3)
PROMPT = "a red circle moving right"


def loras(root):
    paths = []
    for fmt, seed in (("wan", 5), ("kohya", 6)):
        state, _ = make_lora(fmt, TINY_DITS[TASK], seed)
        save_file(state, root / f"{fmt}.safetensors")
        paths.append(str(root / f"{fmt}.safetensors"))
    return paths


def test_convert_merges_loras_into_each_expert_in_either_layout(tmp_path, capsys):
    src = write_official_checkpoint(tmp_path / "src", TASK, seed=7)
    high, low = loras(tmp_path)
    expected = WanPipeline.from_pretrained(src)
    plain = expected(PROMPT, **RUN).frames
    expected.load_lora(high, 0.7, expert="high", merge=True)
    expected.load_lora(low, 1.0, expert="low", merge=True)
    merged = expected(PROMPT, **RUN).frames
    assert (merged - plain).abs().max() > 1e-3
    for to in ("diffusers", "official"):  # (official -> official: a copy, then the merge)
        dst = tmp_path / to
        assert main(["convert", str(src), str(dst), "--to", to, "--lora_high", f"{high}:0.7", "--lora_low", low]) == 0
        assert detect_layout(dst).kind == to
        assert torch.equal(WanPipeline.from_pretrained(dst)(PROMPT, **RUN).frames, merged)
        record = json.loads((dst / DEFAULTS_FILE).read_text())["merged_loras"]
        assert record == {"high": [f"{high}:0.7"], "low": [f"{low}:1"]}
        assert f"merged into the high expert: {high}:0.7" in capsys.readouterr().out
        assert main(["info", str(dst)]) == 0
        assert f"  LoRAs merged into the low expert: {low}:1" in capsys.readouterr().out
    assert torch.equal(WanPipeline.from_pretrained(src)(PROMPT, **RUN).frames, plain)  # the source untouched


def test_a_lora_that_does_not_fit_stops_before_anything_is_written(tmp_path, capsys):
    src = write_official_checkpoint(tmp_path / "src", TASK, seed=7)
    state, _ = make_lora("wan", SMALL_T2V, 1)  # made for a 256-wide DiT
    save_file(state, tmp_path / "wide.safetensors")
    assert main(["convert", str(src), str(tmp_path / "dst"), "--lora_high", str(tmp_path / "wide.safetensors")]) == 2
    assert "wide.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()
