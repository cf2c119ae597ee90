"""ComfyUI's ``er_sde``: Cui et al.'s extended reverse-time SDE solver (ER-SDE-Solver-3, arXiv 2309.06169) as ComfyUI
runs it on a flow model. Same step-function convention as ``sampling.solvers``.

In ``lambda = sigma / (1 - sigma)`` (the inverse of the flow's signal-to-noise ratio; ComfyUI moves a first sigma of 1
off 1, ``schedule.offset_first_sigma``): an exponential Euler step whose noise share follows the solver's
noise scaler ``f(l) = l (e^(l^0.3) + 10)``, then second- and third-stage corrections from the previous data
predictions' divided differences, with the integrals of ``1 / f`` taken over 200 points as ComfyUI takes them, and
fresh noise drawn as its lcm's (``solver_state.fresh_noise``). Up to third order; each sampler call starts afresh.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from wanflow.sampling.solver_state import SolverState, Stepped, check_index, fresh_noise

MAX_STAGE = 3
POINTS = 200.0  # ComfyUI's integration points


def _scaler(x: torch.Tensor) -> torch.Tensor:
    """ComfyUI's default noise scaler of ER-SDE."""
    return x * ((x**0.3).exp() + 10.0)


def _lambdas(sigmas: torch.Tensor) -> torch.Tensor:
    """``sigma / alpha`` as ComfyUI forms it on a flow model: ``exp(-half log-SNR)``, the half log-SNR
    ``-logit(sigma)``."""
    return sigmas.logit().exp()


def er_sde_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``er_sde`` (s_noise 1, max_stage 3), in float32; ``x0_hat`` at sigma 0."""
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    denoised = x.float() - sigmas[k] * velocity
    history = (*state.x0, denoised)[-MAX_STAGE:]
    if sigmas[k + 1] == 0:
        return denoised.to(velocity.dtype), replace(state, x0=history, index=k)
    lam = _lambdas(sigmas)
    lam_s, lam_t = lam[k], lam[k + 1]
    alpha_s, alpha_t = sigmas[k] / lam_s, sigmas[k + 1] / lam_t
    r = _scaler(lam_t) / _scaler(lam_s)
    x_next = alpha_t / alpha_s * r * x.float() + alpha_t * (1 - r) * denoised
    stage = min(MAX_STAGE, len(state.x0) + 1)
    if stage >= 2:
        dt = lam_t - lam_s
        step = -dt / POINTS
        positions = lam_t + torch.arange(0, POINTS, dtype=torch.float32, device=x.device) * step
        scaled = _scaler(positions)
        d = (denoised - state.x0[-1]) / (lam_s - lam[k - 1])
        x_next = x_next + alpha_t * (dt + torch.sum(1 / scaled) * step * _scaler(lam_t)) * d
        if stage >= 3:
            d_old = (state.x0[-1] - state.x0[-2]) / (lam[k - 1] - lam[k - 2])  # (the previous step's d, as it was)
            u = (d - d_old) / ((lam_s - lam[k - 2]) / 2)
            s_u = torch.sum((positions - lam_s) / scaled) * step
            x_next = x_next + alpha_t * ((dt**2) / 2 + s_u * _scaler(lam_t)) * u
    noise, state = fresh_noise(state, x, "er_sde")
    spread = (lam_t**2 - lam_s**2 * r**2).sqrt().nan_to_num(nan=0.0)
    x_next = x_next + alpha_t * noise * spread
    return x_next.to(velocity.dtype), replace(state, x0=history, index=k)
