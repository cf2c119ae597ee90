"""The command line's entry: ``--help`` and ``--version`` answer without loading torch (each command's module is
imported only when that command runs)."""

import subprocess
import sys

import wanflow

PROBE = """
import sys
from wanflow.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    print("exit", e.code)
print("torch loaded" if "torch" in sys.modules else "torch not loaded")
"""


def run(*argv: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    return out.stdout.strip().splitlines()


def test_help_and_version_do_not_load_torch():
    lines = run("--help")
    assert "generate" in lines[1] and lines[-2:] == ["exit 0", "torch not loaded"]
    assert run("--version") == [f"wanflow {wanflow.__version__}", "exit 0", "torch not loaded"]


def test_a_command_loads_only_when_chosen():
    assert run("generate", "--help")[-1] == "torch loaded"  # its choices come from the registries
    lines = run("nonsense")
    assert lines[-2:] == ["exit 2", "torch not loaded"]
