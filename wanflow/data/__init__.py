"""Synthetic training data for the built-in models."""

from wanflow.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    HELD_OUT,
    SHAPES,
    Clip,
    all_combos,
    combo_clips,
    first_frame,
    held_out_clips,
    render,
    render_batch,
    sample_clips,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DIRECTIONS",
    "HELD_OUT",
    "SHAPES",
    "Clip",
    "all_combos",
    "combo_clips",
    "first_frame",
    "held_out_clips",
    "render",
    "render_batch",
    "sample_clips",
]
