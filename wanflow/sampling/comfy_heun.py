"""ComfyUI's samplers of two or three model calls a step: ``heun`` (Karras et al.'s Algorithm 2 without churn: an
Euler step to the next sigma, the model again there, the two derivatives averaged) and ``dpm_2`` (DPM-Solver-2: the
model again at the geometric mid sigma, whose derivative takes the whole step), k-diffusion's unchanged on a flow
model; the ancestral ``dpm_2_ancestral`` and ``dpmpp_2s_ancestral`` in ComfyUI's forms for flow models (its ``_RF``
functions, eta 1): the step down to ``sigma_down = sigma'^2 / sigma``, then the latents rescaled to sigma' and fresh
noise of the variance the path lacks there (as its ``euler_ancestral``), drawn as lcm's; and ``heunpp2`` (Heun++,
three calls a step). The last step (to sigma 0) is an Euler step of one call.

A step function of these returns with ``state.pending = (x, sigma)`` after its first call: the loop evaluates the
same expert there (at timestep ``1000 sigma``, as ComfyUI feeds it) and calls the step function again with that
velocity, which completes the step or asks for the next call likewise. Derivatives are ``d = (x - x0_hat) / sigma``,
as ComfyUI rounds them.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from wanflow.sampling.comfy_solvers import flow_ancestral
from wanflow.sampling.solver_state import SolverState, Stepped, begun, check_index, fresh_noise


def _derivative(x: torch.Tensor, sigma: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """k-diffusion's ``to_d`` from the flow model's denoised output ``x - sigma v``."""
    return (x - (x - sigma * velocity)) / sigma


def _two_calls(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int, mid) -> Stepped:
    """A step of two calls; ``mid(sigma, sigma_next) -> (sigma of the second call, its step to it, the step that the
    second derivative takes, whether the two derivatives are averaged)``."""
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    if state.pending is None:  # (the step's first call)
        d = _derivative(x.float(), sigma, velocity)
        if sigma_next == 0:
            return (x.float() + d * (sigma_next - sigma)).to(velocity.dtype), replace(state, index=k)
        sigma_2, dt_1, _, _ = mid(sigma, sigma_next)
        return x, replace(state, index=k, pending=(x.float() + d * dt_1, sigma_2), partial=(d,))
    (x_2, sigma_2), (d,) = state.pending, state.partial
    d_2 = _derivative(x_2, sigma_2, velocity)
    _, _, dt, average = mid(sigma, sigma_next)
    x_next = x.float() + ((d + d_2) / 2 if average else d_2) * dt
    return x_next.to(velocity.dtype), replace(state, pending=None, partial=())


def _heun(sigma: torch.Tensor, sigma_next: torch.Tensor):
    dt = sigma_next - sigma
    return sigma_next, dt, dt, True


def _dpm_2(sigma: torch.Tensor, sigma_next: torch.Tensor):
    sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
    return sigma_mid, sigma_mid - sigma, sigma_next - sigma, False


def heun_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``heun``."""
    return _two_calls(state, velocity, x, index, _heun)


def dpm_2_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``dpm_2``."""
    return _two_calls(state, velocity, x, index, _dpm_2)


def heunpp2_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``heunpp2`` (from sd-webui-samplers-scheduler): Euler steps to the next two sigmas with the model
    called at each, the three derivatives weighted by those sigmas over three times the call's first sigma (two
    derivatives over twice it on the call's second last step; Euler on its last), the weighted derivative taking the
    step. Three model calls a step, so it reads its call's sigmas: from its first step to its stop."""
    k = check_index(state, index)
    state = begun(state, k)
    sigmas = state.schedule.sigmas
    first, end = sigmas[state.start], sigmas[-1 if state.stop is None else state.stop]
    sigma, dt = sigmas[k], sigmas[k + 1] - sigmas[k]
    if state.pending is None:
        d = _derivative(x.float(), sigma, velocity)
        if sigmas[k + 1] == end:
            return (x.float() + d * dt).to(velocity.dtype), replace(state, index=k)
        return x, replace(state, index=k, pending=(x.float() + d * dt, sigmas[k + 1]), partial=(d,))
    (x_2, sigma_2), done = state.pending, state.partial
    done = (*done, _derivative(x_2, sigma_2, velocity))
    if len(done) == 2 and sigmas[k + 2] != end:  # (Heun++: an Euler step on to the sigma after, called there)
        return x, replace(state, pending=(x_2 + done[1] * (sigmas[k + 2] - sigmas[k + 1]), sigmas[k + 2]), partial=done)
    w = len(done) * first
    w_2 = sigmas[k + 1] / w
    if len(done) == 2:
        d_prime = done[0] * (1 - w_2) + done[1] * w_2
    else:
        w_3 = sigmas[k + 2] / w
        d_prime = (1 - w_2 - w_3) * done[0] + w_2 * done[1] + w_3 * done[2]
    return (x.float() + d_prime * dt).to(velocity.dtype), replace(state, pending=None, partial=())


def _renoised(state: SolverState, x: torch.Tensor, ancestral: tuple, sampler: str) -> Stepped:
    """``x`` at sigma_down rescaled to sigma' and renoised there (``flow_ancestral``'s ``ancestral``); the step done."""
    _, rescale, renoise = ancestral
    noise, state = fresh_noise(state, x, sampler)
    return rescale * x + noise * 1.0 * renoise, replace(state, pending=None, partial=())


def _ancestral_levels(state: SolverState, index: int) -> tuple[int, torch.Tensor, torch.Tensor, tuple]:
    """(the step, its sigma, the next, ``flow_ancestral``'s coefficients between them) of an ancestral step."""
    k = check_index(state, index)
    sigma, sigma_next = state.schedule.sigmas[k], state.schedule.sigmas[k + 1]
    return k, sigma, sigma_next, flow_ancestral(sigma, sigma_next)


def dpm_2_ancestral_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``dpm_2_ancestral`` on a flow model (``sample_dpm_2_ancestral_RF``, eta 1): DPM-Solver-2 down to
    ``sigma_down`` (its second call at their geometric mid sigma), then renoised to sigma'."""
    k, sigma, _, ancestral = _ancestral_levels(state, index)
    sigma_down = ancestral[0]
    if state.pending is None:
        d = _derivative(x.float(), sigma, velocity)
        if sigma_down == 0:
            return (x.float() + d * (sigma_down - sigma)).to(velocity.dtype), replace(state, index=k)
        sigma_mid = sigma.log().lerp(sigma_down.log(), 0.5).exp()
        return x, replace(state, index=k, pending=(x.float() + d * (sigma_mid - sigma), sigma_mid))
    x_2, sigma_mid = state.pending
    x_next = x.float() + _derivative(x_2, sigma_mid, velocity) * (sigma_down - sigma)
    x_next, state = _renoised(state, x_next, ancestral, "dpm_2_ancestral")
    return x_next.to(velocity.dtype), state


def _half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """``log((1 - sigma) / sigma)`` as this sampler of ComfyUI's forms it (its SDE ones take ``-logit``)."""
    return ((1 - sigma) / sigma).log()


def dpmpp_2s_ancestral_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``dpmpp_2s_ancestral`` on a flow model (``sample_dpmpp_2s_ancestral_RF``, eta 1): DPM-Solver++(2S)
    down to ``sigma_down``, its second call at the mid point in the half log-SNR (0.9999 from sigma 1), on the data
    predictions; then renoised to sigma'."""
    k, sigma, sigma_next, ancestral = _ancestral_levels(state, index)
    sigma_down = ancestral[0]
    if state.pending is None:
        if sigma_next == 0:
            d = _derivative(x.float(), sigma, velocity)
            return (x.float() + d * (sigma_down - sigma)).to(velocity.dtype), replace(state, index=k)
        if sigma == 1.0:
            sigma_s = torch.tensor(0.9999)
        else:
            lam, lam_down = _half_log_snr(sigma), _half_log_snr(sigma_down)
            sigma_s = (((lam + 0.5 * (lam_down - lam)).exp() + 1) ** -1).to(sigma.dtype)
        ratio = sigma_s / sigma
        denoised = x.float() - velocity * sigma
        return x, replace(state, index=k, pending=(ratio * x.float() + (1 - ratio) * denoised, sigma_s))
    u, sigma_s = state.pending
    denoised_2 = u - velocity * sigma_s
    ratio = sigma_down / sigma
    x_next, state = _renoised(state, ratio * x.float() + (1 - ratio) * denoised_2, ancestral, "dpmpp_2s_ancestral")
    return x_next.to(velocity.dtype), state
