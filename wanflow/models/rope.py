"""3D rotary position embedding of the Wan DiT.

The head dim d is read as d/2 complex pairs ``(x[2k], x[2k+1])``. The pairs are split between the frame, height
and width axes as ``d/2 - 2*(d//6)``, ``d//6``, ``d//6`` (22/21/21 for d = 128). Axis ``a`` with ``n_a`` pairs has
frequencies ``theta ** (-2j / (2 n_a))``; a token at (f, h, w) is rotated by ``pos_a * freq_j`` on its axis's pairs.
Angles are computed in float64 (as the reference) and kept as float32 cos/sin tables.

RIFLEx (Zhao et al. 2025, arXiv 2502.15894; thu-ml/RIFLEx): for videos longer than the model was trained on, the frame
axis's ``k``-th frequency (1-based; its "intrinsic" one, whose period the trained length nears) is lowered to
``0.9 * 2 pi / F`` for a grid of F frames, so that no frame position goes round that frequency's circle within the
video (the repeated motion of long videos). ``riflex=0``: the reference's frequencies.
"""

from __future__ import annotations

import math

import torch


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (frame, height, width)."""
    half = head_dim // 2
    hw = head_dim // 6
    return half - 2 * hw, hw, hw


def axis_frequencies(pairs: int, theta: float = 10000.0, device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse frequencies (float64) of one axis with ``pairs`` complex slots."""
    dim = 2 * pairs
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


def check_riflex(k: int, head_dim: int) -> None:
    """RIFLEx's ``k`` names one of the frame axis's frequencies (1-based) or is 0 (off)."""
    pairs = axis_pairs(head_dim)[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= pairs:
        raise ValueError(f"riflex is the frame frequency to lower: 1..{pairs} at head dim {head_dim}, 0 off; got {k!r}")


def frame_frequencies(
    pairs: int, frames: int, theta: float, riflex: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The frame axis's inverse frequencies, RIFLEx's ``k``-th lowered for ``frames`` frames (``riflex=k``)."""
    freqs = axis_frequencies(pairs, theta, device)
    if riflex:
        freqs[riflex - 1] = 0.9 * 2 * math.pi / frames
    return freqs


def rope_angles(
    head_dim: int,
    grid: tuple[int, int, int],
    theta: float = 10000.0,
    device: torch.device | str | None = None,
    riflex: int = 0,
) -> torch.Tensor:
    """Rotation angles (float64) for every token of a (F, H, W) grid in raster order: (F*H*W, head_dim/2);
    ``riflex``: RIFLEx's frame frequency to lower for the grid's F frames (0: none)."""
    check_riflex(riflex, head_dim)
    parts = []
    for axis, (pairs, size) in enumerate(zip(axis_pairs(head_dim), grid, strict=True)):
        positions = torch.arange(size, dtype=torch.float64, device=device)
        if axis == 0:
            freqs = frame_frequencies(pairs, size, theta, riflex, device)  # (the frames: RIFLEx's axis)
        else:
            freqs = axis_frequencies(pairs, theta, device)
        angle = positions[:, None] * freqs[None]  # (size, p)
        shape = [1, 1, 1, pairs]
        shape[axis] = size
        parts.append(angle.view(shape).expand(*grid, pairs))
    return torch.cat(parts, dim=-1).reshape(-1, head_dim // 2)


def rope_tables(
    head_dim: int,
    grid: tuple[int, int, int],
    theta: float = 10000.0,
    device: torch.device | str | None = None,
    riflex: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (cos, sin), each (L, head_dim/2), computed on ``device`` (no host copy: no sync in the step loop)."""
    angles = rope_angles(head_dim, grid, theta, device, riflex)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of ``x`` (B, L, N, d) by the tables (L, d/2); math in float32, output float32.

    One complex product (the reference's form) instead of separate real and imaginary parts: one pass over x.
    """
    pairs = torch.view_as_complex(x.float().contiguous().unflatten(-1, (-1, 2)))  # (B, L, N, d/2) complex64
    return torch.view_as_real(pairs * torch.complex(cos, sin)[None, :, None]).flatten(-2)
