"""The argument types the commands share (``wanflow/cli/parsers.py``), and that each command takes them."""

import argparse

import pytest

from wanflow.cli import calibrate_cache, generate, train_lora
from wanflow.cli.parsers import nonnegative_int, parse_guide, parse_size, positive_int, str2bool


@pytest.mark.parametrize(("text", "size"), [("480*272", (480, 272)), ("480x272", (480, 272)), (" 64 X 32 ", (64, 32))])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["big", "480*", "*272", "-4*4", "4.5*4", "4*4*4"])
def test_bad_sizes(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"size must look like WIDTH\*HEIGHT"):
        parse_size(text)


def test_numbers_and_booleans():
    assert (nonnegative_int("0"), positive_int("3"), str2bool("Yes"), str2bool("0")) == (0, 3, True, False)
    assert parse_guide("3,4") == (3.0, 4.0) and parse_guide("5") == (5.0,)
    for parse, text in ((nonnegative_int, "-1"), (positive_int, "0"), (str2bool, "maybe"), (parse_guide, "1,2,3")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


@pytest.mark.parametrize("command", [generate, train_lora, calibrate_cache])
def test_every_command_with_a_size_takes_the_same_spellings(command, capsys):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    required = ["clips", "--task", "t2v-A14B", "--out", "x"] if command is train_lora else []
    assert parser.parse_args([*required, "--size", " 64 X 32 "]).size == (64, 32)
    with pytest.raises(SystemExit):
        parser.parse_args([*required, "--size", "big"])
    assert "size must look like WIDTH*HEIGHT" in capsys.readouterr().err
