"""ComfyUI's CFG++ samplers (Chung et al. 2024, arXiv 2406.08070): each step lands on the guided data prediction but
leaves it along the unconditional one's noise direction, so that guidance does not push the sample off the data
manifold. Same step-function convention as ``sampling.solvers``, with the step's unconditional velocity in
``SolverState.uncond`` (the loop runs the unconditional pass at guidance 1 too for these solvers: ``Solver.uncond``).

In ComfyUI's terms, with ``x0 = x - sigma v`` the guided data prediction and ``u0 = x - sigma v_u`` the
unconditional one: ``euler_cfg_pp`` steps ``x' = x0 + sigma' (x - u0) / sigma``; ``euler_ancestral_cfg_pp`` does so in
the VP process of the flow (``alpha = sigma e^lambda``, the half log-SNR) with k-diffusion's ancestral step and fresh
noise; ``dpmpp_2m_cfg_pp``, ``res_multistep_cfg_pp`` (``_ancestral``), ``gradient_estimation_cfg_pp`` and
``dpmpp_2s_ancestral_cfg_pp`` are their samplers with the unconditional prediction in the places CFG++ puts it
(k-diffusion's functions, which ComfyUI does not adapt to flow models for these: its VP ancestral step at eta 1). The
operations are ComfyUI's, in its order, so that the samples are its own.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from wanflow.sampling.comfy_adams import GE_GAMMA
from wanflow.sampling.comfy_sde import half_log_snr
from wanflow.sampling.comfy_solvers import vp_ancestral
from wanflow.sampling.solver_state import SolverState, Stepped, check_index, fresh_noise


def _predictions(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor):
    """(the guided data prediction, the unconditional one) of the step's model call, float32."""
    if state.uncond is None:
        raise ValueError("a CFG++ sampler needs the step's unconditional prediction (SolverState.uncond)")
    return x.float() - sigma * velocity, x.float() - sigma * state.uncond


def _levels(state: SolverState, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    k = check_index(state, index)
    return k, state.schedule.sigmas[k], state.schedule.sigmas[k + 1]


def _neg_log(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def _euler_ancestral(state: SolverState, velocity, x, index: int, eta: float, name: str) -> Stepped:
    k, sigma, sigma_next = _levels(state, index)
    x0, u0 = _predictions(state, velocity, x, sigma)
    if sigma_next == 0:
        return x0.to(velocity.dtype), replace(state, index=k)
    alpha, alpha_next = sigma * half_log_snr(sigma).exp(), sigma_next * half_log_snr(sigma_next).exp()
    d = (x.float() - alpha * u0) / sigma
    down, up = vp_ancestral(sigma / alpha, sigma_next / alpha_next) if eta else (sigma_next / alpha_next, 0.0)
    x_next = alpha_next * x0 + alpha_next * down * d
    if eta:
        noise, state = fresh_noise(state, x, name)
        x_next = x_next + alpha_next * noise * up
    return x_next.to(velocity.dtype), replace(state, index=k)


def euler_cfg_pp_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``euler_cfg_pp`` (its ``euler_ancestral_cfg_pp`` at eta 0)."""
    return _euler_ancestral(state, velocity, x, index, 0.0, "euler_cfg_pp")


def euler_ancestral_cfg_pp_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``euler_ancestral_cfg_pp`` (eta 1)."""
    return _euler_ancestral(state, velocity, x, index, 1.0, "euler_ancestral_cfg_pp")


def dpmpp_2m_cfg_pp_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``dpmpp_2m_cfg_pp``: DPM-Solver++(2M) in ``t = -log sigma`` whose history is the unconditional
    prediction; first order at a call's first step and at sigma 0."""
    k, sigma, sigma_next = _levels(state, index)
    x0, u0 = _predictions(state, velocity, x, sigma)
    h = _neg_log(sigma_next) - _neg_log(sigma)
    if not state.x0 or sigma_next == 0:
        mix = -torch.exp(-h) * u0
    else:
        r = (_neg_log(sigma) - _neg_log(state.schedule.sigmas[k - 1])) / h
        mix = -torch.exp(-h) * u0 - torch.expm1(-h) * (1 / (2 * r)) * (x0 - state.x0[-1])
    x_next = x0 + mix + torch.exp(-h) * x.float()
    return x_next.to(velocity.dtype), replace(state, x0=(u0,), index=k)


def _res_multistep(state: SolverState, velocity, x, index: int, eta: float, name: str) -> Stepped:
    k, sigma, sigma_next = _levels(state, index)
    x0, u0 = _predictions(state, velocity, x, sigma)
    down, up = vp_ancestral(sigma, sigma_next) if eta else (sigma_next, 0.0)
    if down == 0 or not state.x0:
        x_next = x0 + (x.float() - u0) / sigma * down
    else:
        sigma_prev = state.schedule.sigmas[k - 1]
        down_prev = vp_ancestral(sigma_prev, sigma)[0] if eta else sigma
        t, t_old, t_next, t_prev = (_neg_log(s) for s in (sigma, down_prev, down, sigma_prev))
        h = t_next - t
        c2 = (t_prev - t_old) / h
        phi1 = torch.expm1(-h) / -h
        phi2 = (phi1 - 1.0) / -h
        b1, b2 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0), torch.nan_to_num(phi2 / c2, nan=0.0)
        shifted = x.float() + (x0 - u0)
        x_next = torch.exp(-h) * shifted + h * (b1 * u0 + b2 * state.x0[-1])
    if eta and sigma_next > 0:
        noise, state = fresh_noise(state, x, name)
        x_next = x_next + noise * 1.0 * up
    return x_next.to(velocity.dtype), replace(state, x0=(u0,), index=k)


def res_multistep_cfg_pp_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``res_multistep_cfg_pp``."""
    return _res_multistep(state, velocity, x, index, 0.0, "res_multistep_cfg_pp")


def res_multistep_ancestral_cfg_pp_step(
    state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int
) -> Stepped:
    """ComfyUI's ``res_multistep_ancestral_cfg_pp`` (eta 1)."""
    return _res_multistep(state, velocity, x, index, 1.0, "res_multistep_ancestral_cfg_pp")


def gradient_estimation_cfg_pp_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``gradient_estimation_cfg_pp``: the CFG++ Euler step, then ``(gamma - 1) (d - d_prev)`` over the
    step, ``d`` from the unconditional prediction."""
    k, sigma, sigma_next = _levels(state, index)
    x0, u0 = _predictions(state, velocity, x, sigma)
    d = (x.float() - u0) / sigma
    if sigma_next == 0:
        x_next = x0
    else:
        x_next = x0 + d * sigma_next
        if state.carry is not None:
            x_next = x_next + (GE_GAMMA - 1) * (d - state.carry) * (sigma_next - sigma)
    return x_next.to(velocity.dtype), replace(state, carry=d, index=k)


def dpmpp_2s_ancestral_cfg_pp_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``dpmpp_2s_ancestral_cfg_pp`` (eta 1): DPM-Solver++(2S) down to k-diffusion's ``sigma_down``, its
    second call at the mid point in ``t = -log sigma``, each move from ``x + x0 - u0`` (the second with the second
    call's unconditional prediction, which ComfyUI's function reads there); then fresh noise times ``sigma_up``."""
    k, sigma, sigma_next = _levels(state, index)
    down, up = vp_ancestral(sigma, sigma_next)
    t, t_next = _neg_log(sigma), _neg_log(down)
    h = t_next - t
    if state.pending is None:
        x0, u0 = _predictions(state, velocity, x, sigma)
        if down == 0:
            x_next = x0 + (x.float() - u0) / sigma * down
            return x_next.to(velocity.dtype), replace(state, index=k)
        s = t + 0.5 * h
        x_2 = (s.neg().exp() / t.neg().exp()) * (x.float() + (x0 - u0)) - (-h * 0.5).expm1() * x0
        return x, replace(state, index=k, pending=(x_2, s.neg().exp()), partial=(x0,))
    x_2, sigma_s = state.pending
    denoised_2, u0_2 = _predictions(state, velocity, x_2, sigma_s)
    x_next = (t_next.neg().exp() / t.neg().exp()) * (x.float() + (state.partial[0] - u0_2)) - (-h).expm1() * denoised_2
    state = replace(state, pending=None, partial=())
    if sigma_next > 0:
        noise, state = fresh_noise(state, x, "dpmpp_2s_ancestral_cfg_pp")
        x_next = x_next + noise * 1.0 * up
    return x_next.to(velocity.dtype), state


# name -> (step, order, restarts at the switch (a history), draws fresh noise, model calls a step), as their
# non-CFG++ forms in ``sampling.solvers``
CFG_PP_STEPS = {
    "euler_cfg_pp": (euler_cfg_pp_step, 1, False, False, 1),
    "euler_ancestral_cfg_pp": (euler_ancestral_cfg_pp_step, 1, False, True, 1),
    "dpmpp_2m_cfg_pp": (dpmpp_2m_cfg_pp_step, 2, True, False, 1),
    "res_multistep_cfg_pp": (res_multistep_cfg_pp_step, 2, True, False, 1),
    "res_multistep_ancestral_cfg_pp": (res_multistep_ancestral_cfg_pp_step, 2, True, True, 1),
    "gradient_estimation_cfg_pp": (gradient_estimation_cfg_pp_step, 2, True, False, 1),
    "dpmpp_2s_ancestral_cfg_pp": (dpmpp_2s_ancestral_cfg_pp_step, 2, False, True, 2),
}
