"""ComfyUI's SEEDS samplers (Gonzalez et al. 2023: stochastic explicit exponential derivative-free solvers, on the data
prediction) for flow models: ``seeds_2``, two model calls a step (the second at half the step in the half log-SNR),
and ``seeds_3``, three (at a third and two thirds), eta 1. They step in the half log-SNR ``lambda = -logit(sigma)``
(``comfy_sde.half_log_snr``) with the first sigma moved off 1 (``schedule.offset_first_sigma``), each stage an
exponential-integrator step from the step's start with the stages' data predictions so far. Their noise is fresh
draws from the sampler call's seed (ComfyUI's default noise sampler, drawn as lcm's), one a stage: the noise of the
stage before decays over the next segment and a new draw tops it up to the variance the path needs there. The last
step (to sigma 0) returns ``x0_hat`` after one call. Same step-function convention as ``sampling.solvers``; a step's
later calls go through ``state.pending`` (``sampling.comfy_heun`` says how the loop drives them).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from wanflow.sampling.comfy_sde import half_log_snr
from wanflow.sampling.solver_state import SolverState, Stepped, check_index, fresh_noise

ETA = 1.0  # ComfyUI's default, and s_noise 1 (KSampler passes no others)


def _phi_1(h: torch.Tensor) -> torch.Tensor:
    """``h phi_1(h)``."""
    return torch.expm1(h)


def _phi_2(h: torch.Tensor) -> torch.Tensor:
    """``h phi_2(h)``."""
    return (torch.expm1(h) - h) / h


def _at(lambda_s: torch.Tensor, lambda_t: torch.Tensor, r: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma, alpha) at fraction ``r`` of the step in the half log-SNR."""
    lam = torch.lerp(lambda_s, lambda_t, r)
    sigma = lam.neg().sigmoid()
    return sigma, sigma * lam.exp()


def _noised(state: SolverState, x: torch.Tensor, carried: torch.Tensor | None, segment: torch.Tensor, sigma, name):
    """``x`` plus the stage's noise at ``sigma`` and that noise: ``carried`` (the stage before's, None at the first)
    decayed over the ``segment`` (``(r_before - r) h eta``), topped up with a fresh draw."""
    fresh, state = fresh_noise(state, x, name)
    if carried is None:
        noise = segment.mul(2).expm1().neg().sqrt() * fresh
    else:
        noise = carried * segment.exp() + segment.mul(2).expm1().neg().sqrt() * fresh
    return x + noise * sigma, noise, state


def _step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int, fractions: tuple[float, ...]):
    """One call of a SEEDS step whose stages sit at ``fractions`` of the step (then 1): the step's first call, or the
    call at the stage ``state.pending`` names."""
    name = f"seeds_{len(fractions) + 1}"
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    if state.pending is None:
        denoised = x.float() - sigma * velocity
        if sigma_next == 0:
            return denoised.to(velocity.dtype), replace(state, index=k)
        state, done, noise = replace(state, index=k), (denoised,), None
    else:
        (x_stage, sigma_stage), (noise, *done) = state.pending, state.partial
        done = (*done, x_stage - sigma_stage * velocity)
    lambda_s, lambda_t = half_log_snr(sigma), half_log_snr(sigma_next)
    h = lambda_t - lambda_s
    h_eta = h * (ETA + 1)
    stage = len(done)  # (the stage to form: 1 .. len(fractions), then the step's end)
    r = fractions[stage - 1] if stage <= len(fractions) else 1.0
    r_before = fractions[stage - 2] if stage >= 2 else 0.0
    sigma_r, alpha_r = _at(lambda_s, lambda_t, r) if r < 1 else (sigma_next, sigma_next * lambda_t.exp())
    x_r = sigma_r / sigma * (-r * h * ETA).exp() * x.float() - _combined(alpha_r, done, r, h_eta, fractions)
    x_r, noise, state = _noised(state, x_r, noise, (r_before - r) * h * ETA, sigma_r, name)
    if r == 1:
        return x_r.to(velocity.dtype), replace(state, pending=None, partial=())
    return x, replace(state, pending=(x_r, sigma_r), partial=(noise, *done))


def _combined(alpha: torch.Tensor, done: tuple[torch.Tensor, ...], r: float, h_eta: torch.Tensor, fractions: tuple):
    """``alpha`` times the stage's data predictions weighted by ``h phi`` at fraction ``r``, as SEEDS-2 and SEEDS-3
    weigh them (in their order of operations)."""
    if len(done) == 1:  # (the first stage: an exponential Euler step)
        return alpha * _phi_1(-r * h_eta) * done[0]
    if len(fractions) == 1:  # SEEDS-2's end: the second prediction, lerped with weight 1 / (2 r_1)
        return alpha * _phi_1(-h_eta) * torch.lerp(done[0], done[1], 1 / (2 * fractions[0]))
    r_1, r_2 = fractions
    if len(done) == 2:  # SEEDS-3's second stage
        a_2 = r_2 / r_1 * _phi_2(-r_2 * h_eta)
        return alpha * ((_phi_1(-r_2 * h_eta) - a_2) * done[0] + a_2 * done[1])
    b_3 = _phi_2(-h_eta) / r_2  # SEEDS-3's end, on the first and third predictions
    return alpha * ((_phi_1(-h_eta) - b_3) * done[0] + b_3 * done[2])


def seeds_2_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``seeds_2`` (r 1/2)."""
    return _step(state, velocity, x, index, (0.5,))


def seeds_3_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``seeds_3`` (r 1/3 and 2/3)."""
    return _step(state, velocity, x, index, (1.0 / 3, 2.0 / 3))
