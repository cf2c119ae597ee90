"""The small built-in models that wanflow trains itself (``wanflow/training/builtin.py``), one per task.

Each folder is a checkpoint in the official layout, loaded by the same code as the published weights, with a
``wanflow.json`` holding the model's own sampling defaults (it was trained at a small size).
"""

from __future__ import annotations

from pathlib import Path

from wanflow.tasks import TASKS

ROOT = Path(__file__).parent
FOLDERS = {name: task.builtin for name, task in TASKS.items()}  # task name -> folder under ROOT


def builtin_checkpoint(task: str) -> Path:
    """The built-in checkpoint folder for ``task``; a clear error if it is not installed."""
    if task not in FOLDERS:
        raise ValueError(f"no built-in model for task {task!r}; choose one of {sorted(FOLDERS)}")
    path = ROOT / FOLDERS[task]
    if not (path / "wanflow.json").is_file():
        raise ValueError(
            f"the built-in {task} model is not installed ({path}); pass --ckpt_dir with downloaded "
            "weights, or rebuild it with `wanflow train-builtin`"
        )
    return path
