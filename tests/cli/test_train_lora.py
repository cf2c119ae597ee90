"""``wanflow train-lora`` on the command line: the built-in model without --ckpt_dir, its files, the one-line errors,
and no torch import until the command runs."""

import subprocess
import sys

from safetensors import safe_open

from tests.training.lora_helpers import write_data
from wanflow.cli import main


def test_train_lora_on_the_builtin_model(tmp_path, capsys):
    data = write_data(tmp_path / "data", clips=2)
    out = tmp_path / "loras" / "bar"
    argv = ["train-lora", str(data), "--task", "t2v-A14B", "--out", str(out), "--steps", "2", "--rank", "2"]
    assert main([*argv, "--expert", "high", "--checkpoint_every", "1"]) == 0
    assert "bar_high_noise.safetensors (2 steps, last loss" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["bar.ckpt", "bar_high_noise.safetensors"]
    with safe_open(out.parent / "bar_high_noise.safetensors", "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("diffusion_model.blocks.3.cross_attn.o.lora_down.weight").shape == (2, 128)
    assert meta["wanflow_task"] == "t2v-A14B" and meta["wanflow_trigger_words"].startswith("zorb")
    assert main([*argv, "--expert", "high"]) == 2  # the checkpoint exists: --resume or another --out
    assert "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--expert", "high", "--steps", "3", "--resume"]) == 0
    assert "(3 steps" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    data = write_data(tmp_path / "data", clips=1)
    argv = ["train-lora", str(data), "--task", "t2v-A14B", "--out", str(tmp_path / "x")]
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wanflow: error: --resume: no checkpoint") and err.count("\n") == 1
    assert main([*argv, "--frames", "6"]) == 2
    assert "4n + 1" in capsys.readouterr().err
    assert main([*argv, "--size", "40*40"]) == 2
    assert "multiple of 16" in capsys.readouterr().err


def test_the_command_imports_torch_only_when_it_runs():
    code = "import sys, wanflow.cli; wanflow.cli.build_parser('train-lora'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
