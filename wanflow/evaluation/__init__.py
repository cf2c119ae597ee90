"""Scoring generated videos of the synthetic dataset with a plain image-processing detector."""

from wanflow.evaluation.detect import Detection, detect, format_scores, hue_distance, score

__all__ = ["Detection", "detect", "format_scores", "hue_distance", "score"]
