"""How a video longer than one window is cut into windows (the plan only; ``pipelines/long_video.py`` runs it).

Windows are counted in latent frames. The first window is a whole window. Every later one is, for the DiT, a clip
of its own: the video's latent frame 0 (the only latent of one pixel frame, as every clip the models saw begins), then
the last ``overlap`` latent frames of the window before it (given, not generated again from pixels), then
``window - 1 - overlap`` new ones; the last window is shorter when the video ends sooner. Latent frame 0 holds 1 pixel
frame and every later one 4, so an overlap of ``k`` latent frames is ``4 k`` pixel frames.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_OVERLAP_FRAMES = 16  # pixel frames (4 latent frames), as far as the window allows (see ``default_overlap``)
PROMPT_SEPARATOR = "|"  # "a | b | c": one prompt per window


def latent_frames(frames: int) -> int:
    """Latent frames of a clip of ``frames`` (4n+1) pixel frames."""
    return (frames - 1) // 4 + 1


def pixel_count(latents: int) -> int:
    return 4 * (latents - 1) + 1


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one long video."""

    window: int  # latent frames of a whole window
    overlap: int  # latent frames each window takes from the one before (1 <= overlap <= window - 2)
    total: int  # latent frames of the whole video
    prompts: tuple[str, ...]  # one per window
    anchor: float = 0.0  # 0..1: how far each window's colours are graded to window 1's (pixels only)
    first: int = 0  # latent frames of a given first window (a video being extended); 0: window 1 is made, whole

    @property
    def count(self) -> int:
        return len(self.spans())

    def spans(self) -> list[tuple[int, int]]:
        """(start, end) of the latent frames of the video each window makes; a later window is given the video's
        frame 0 and the ``overlap`` frames before ``start``."""
        spans, step = [(0, self.first or self.window)], self.window - 1 - self.overlap
        while spans[-1][1] < self.total:
            start = spans[-1][1]
            spans.append((start, min(start + step, self.total)))
        return spans

    def metadata(self) -> dict[str, object]:
        return {
            "window_frames": pixel_count(self.window),
            "window_overlap": 4 * self.overlap,
            "windows": self.count,
            "window_prompts": list(self.prompts),
            **({"window_anchor": self.anchor} if self.anchor else {}),
            **({"extended_video_frames": pixel_count(self.first)} if self.first else {}),
        }


def default_overlap(window: int) -> int:
    """``DEFAULT_OVERLAP_FRAMES`` in latent frames, at most half the window's frames after its first (at least 1)."""
    return max(1, min(DEFAULT_OVERLAP_FRAMES // 4, (window - 2) // 2))


Prompts = str | list[str] | tuple[str, ...]  # one prompt, or one per window


def plan_windows(
    frames: int | None,
    window_frames: int,
    overlap_frames: int | None,
    prompt: Prompts,
    anchor: float,
    given_frames: int | None = None,
) -> WindowPlan | None:
    """The plan for ``frames`` pixel frames in windows of ``window_frames`` (both 4n+1) overlapping by
    ``overlap_frames`` (a multiple of 4; None: the default), or None when one window holds the whole video.
    ``prompt``: one for every window, or one per window as a list or as "a | b | c" (fewer: the last one holds for the
    windows after it). A string is cut only for a video longer than one window; in one window "|" is plain text.
    ``given_frames``: the first window is a given video of that many frames, extended (``frames`` None: by one
    window's new frames); the prompts are then those of the windows after it."""
    window = latent_frames(window_frames)
    overlap = check_overlap(overlap_frames, window_frames)
    if not 0.0 <= anchor <= 1.0:
        raise ValueError(f"window_anchor is a strength from 0 (off) to 1, got {anchor}")
    if given_frames is not None:
        return _extension_plan(frames, given_frames, window, overlap or default_overlap(window), prompt, anchor)
    if frames <= window_frames:
        if isinstance(prompt, (list, tuple)) and len(prompt) != 1:
            raise ValueError(
                f"{len(prompt)} prompts for one window of {window_frames} frames: per-window prompts are for videos "
                "longer than one window (frames > window_frames)"
            )
        return None
    if window < 3:
        raise ValueError(f"window_frames {window_frames} is too short to continue from: use at least 9")
    plan = WindowPlan(window, overlap or default_overlap(window), latent_frames(frames), (), anchor)
    prompts = split_prompt(prompt)
    if len(prompts) > plan.count:
        raise ValueError(f"{len(prompts)} prompts for {plan.count} windows: give at most one prompt per window")
    per_window = tuple(prompts[min(i, len(prompts) - 1)] for i in range(plan.count))
    return WindowPlan(plan.window, plan.overlap, plan.total, per_window, anchor)


def _extension_plan(
    frames: int | None, given_frames: int, window: int, overlap: int, prompt: Prompts, anchor: float
) -> WindowPlan:
    first = latent_frames(given_frames)
    if first < 1 + overlap:
        raise ValueError(
            f"the video has {given_frames} frames; continuing it takes at least {pixel_count(1 + overlap)} (its first "
            f"frame and the window_overlap of {4 * overlap}): pass a smaller window_overlap"
        )
    total = first + window - 1 - overlap if frames is None else latent_frames(frames)
    if total <= first:
        raise ValueError(f"frame_num {frames} adds no frame to the video's {given_frames}: ask for more")
    plan = WindowPlan(window, overlap, total, (), anchor, first)
    prompts = split_prompt(prompt) if isinstance(prompt, (list, tuple)) or plan.count > 2 else [prompt]
    if len(prompts) > plan.count - 1:
        raise ValueError(f"{len(prompts)} prompts for {plan.count - 1} new windows: give at most one per window")
    new = tuple(prompts[min(i, len(prompts) - 1)] for i in range(plan.count - 1))
    return WindowPlan(window, overlap, total, (new[0], *new), anchor, first)  # (the given window's is unused)


def check_overlap(overlap_frames: int | None, window_frames: int) -> int | None:
    """``overlap_frames`` in latent frames (None stays None), or a ValueError that says what fits."""
    if overlap_frames is None:
        return None
    most = 4 * (latent_frames(window_frames) - 2)  # a later window holds frame 0, the overlap, 1 new latent at least
    if not isinstance(overlap_frames, int) or overlap_frames < 4 or overlap_frames % 4:
        raise ValueError(
            f"window_overlap is in frames, a multiple of 4 (4 frames per latent frame), got {overlap_frames!r}"
        )
    if overlap_frames > most:
        fits = f"use at most {most}, or longer windows" if most else "use longer windows"
        raise ValueError(
            f"window_overlap {overlap_frames} leaves no new frame in a window of {window_frames} frames: {fits}"
        )
    return overlap_frames // 4


def split_prompt(prompt: Prompts) -> list[str]:
    """Per-window prompts: a list as given, or a string cut at ``PROMPT_SEPARATOR`` ("a | b | c")."""
    parts = list(prompt) if isinstance(prompt, (list, tuple)) else prompt.split(PROMPT_SEPARATOR)
    if not all(isinstance(p, str) for p in parts):
        raise ValueError("per-window prompts must be strings")
    parts = [p.strip() for p in parts]
    if not parts or (len(parts) > 1 and not all(parts)):
        raise ValueError("an empty per-window prompt: write 'a | b | c' with text between the separators")
    return parts


__all__ = ["WindowPlan", "check_overlap", "latent_frames", "pixel_count", "plan_windows", "split_prompt"]
