"""``wanflow evaluate`` shows one progress bar over every video of the run, and the generations inside it draw none."""

import argparse
import io
import sys
from types import SimpleNamespace

from wanflow.cli.evaluate import add_arguments, run
from wanflow.data.shapes import HELD_OUT, combo_clips, render
from wanflow.evaluation.evaluate import evaluate_case, video_count
from wanflow.io.video import from_uint8
from wanflow.pipelines.progress import Progress, TqdmProgress, default_progress


class Recorder(Progress):
    def __init__(self):
        self.events = []

    def start(self, stage, total):
        self.events.append(("start", stage, total))

    def advance(self, stage, **info):
        self.events.append(("advance", stage))


class DrawingPipe:
    """Draws the clip its prompt names, and keeps the keywords of every call."""

    task = SimpleNamespace(size=(48, 48), frames=9)

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, **keywords):
        self.calls.append(type(default_progress()))  # what a real pipeline would report to
        words = prompt.split()
        combo = (words[1], words[2], "still" if words[3] == "staying" else words[4])
        clip = combo_clips(keywords["seed"], [combo], 1, 48, 48, 9)[0]
        return SimpleNamespace(frames=from_uint8(render(clip, 9, 48, 48)))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_each_video_advances_the_run_and_the_calls_stay_silent(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())  # where a call draws bars by default
    pipe, progress = DrawingPipe(), Recorder()
    result = evaluate_case(pipe, with_image=False, per_combo=2, progress=progress)
    assert video_count(2) == 2 * len(HELD_OUT) == result.scores["n"]
    assert progress.events == [("advance", "videos")] * video_count(2)
    assert pipe.calls == [Progress] * video_count(2)  # the silent base class
    assert type(default_progress()) is TqdmProgress  # and bars again after the run


def test_the_command_draws_one_bar_over_the_run(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--vae_only", "--cases", "t2v", "i2v", "--per_combo", "1"])) == 0
    err = capsys.readouterr().err
    total = 2 * len(HELD_OUT)
    assert "videos" in err and f"{total}/{total}" in err and f"{total + 1}/" not in err
