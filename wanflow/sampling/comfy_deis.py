"""ComfyUI's ``deis``: Zhang and Chen's DEIS (arXiv 2204.13902) in its "tab" form, as zju-pi's diff-sampler computes
it and ComfyUI runs it on any model, a flow model included.

Each step adds to ``x`` the derivative ``d = (x - x0_hat) / sigma`` of this step and of up to two before it, weighted
by the integral over the step of the Lagrange polynomials through their times, against DEIS's integrand
``-0.5 (d log alpha / dt) / sqrt(alpha (1 - alpha))``. The times and alphas are those of the VP process EDM's
constants define (sigma 0.002 to 80, epsilon 1e-3), whatever the model's own sigmas; the integrals are sums over
10000 points, the derivative of ``log alpha`` taken by autograd: all as ComfyUI computes them, in float32, over the
sigmas of the sampler call (a KSamplerAdvanced's share of the steps). The first step of a call, and the last (to
sigma 0), are Euler steps.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from wanflow.sampling.solver_state import SolverState, Stepped, begun, check_index

MAX_ORDER = 3  # ComfyUI's: two previous derivatives kept
POINTS = 10000  # the integrals' sample points
VP_EPSILON, VP_SIGMA_MIN, VP_SIGMA_MAX = 1e-3, 0.002, 80  # EDM's VP process (80 an integer, as ComfyUI has it)


def _vp_betas() -> tuple[torch.Tensor, torch.Tensor]:
    """(beta_min, beta_d) of the VP process, 0-dim tensors as ComfyUI computes them: numpy's log of ``sigma^2 + 1``,
    in float32 for sigma_min (a float) and in float64 for sigma_max (the integer 80), so both betas are float64; the
    float32 operations they join take them rounded to float32."""
    log_min = torch.tensor(np.log((torch.tensor(VP_SIGMA_MIN) ** 2 + 1).numpy()))  # (float32)
    log_max = torch.tensor(np.log((torch.tensor(VP_SIGMA_MAX) ** 2 + 1).numpy()))  # (float64)
    beta_d = 2 * (log_min / VP_EPSILON - log_max) / (VP_EPSILON - 1)
    return log_max - 0.5 * beta_d, beta_d


def vp_times(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the VP times of ``sigmas``, beta_0, beta_1)."""
    beta_min, beta_d = _vp_betas()
    t = ((beta_min**2 + 2 * beta_d * (sigmas.cpu() ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def _integrand(beta_0: torch.Tensor, beta_1: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """DEIS's integrand at ``taus``, ``d log alpha / dt`` by autograd."""
    with torch.inference_mode(False), torch.enable_grad():
        taus = taus.clone().requires_grad_(True)
        alpha = torch.exp(-0.5 * taus**2 * (beta_1.clone() - beta_0.clone()) - taus * beta_0.clone())
        alpha.log().sum().backward()
        slope = taus.grad
    return -0.5 * slope / torch.sqrt(alpha.detach() * (1 - alpha.detach()))


def coefficients(call_sigmas: torch.Tensor, i: int) -> list[torch.Tensor]:
    """The weights of step ``i`` of a sampler call over ``call_sigmas``: this step's derivative's, then the earlier
    ones', newest first (order ``min(i + 1, 3)``)."""
    t, beta_0, beta_1 = vp_times(call_sigmas)
    order = min(i + 1, MAX_ORDER)
    t_cur, t_next = t[i], t[i + 1]
    taus = torch.linspace(t_cur, t_next, POINTS)
    dtau = (t_next - t_cur) / POINTS
    nodes = t[[i - k for k in range(order)]]
    integrand = _integrand(beta_0, beta_1, taus)
    weights = []
    for j in range(order):
        poly = 1
        for k in range(order):
            if k != j:
                poly = poly * ((taus - nodes[k]) / (nodes[j] - nodes[k]))
        weights.append(torch.sum(integrand * poly) * dtau)
    return weights


def deis_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``deis`` (max order 3, "tab"); the state's ``x0`` holds the previous derivatives here."""
    k = check_index(state, index)
    state = begun(state, k)
    sigmas = state.schedule.sigmas
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    x0 = x.float() - sigma * velocity
    d = (x.float() - x0) / sigma  # (its derivative from its denoised output, as it rounds it)
    past = state.x0[-(MAX_ORDER - 1) :]
    if not past or sigma_next <= 0:
        x_next = x.float() + (sigma_next - sigma) * d
    else:
        stop = None if state.stop is None else state.stop + 1
        weights = coefficients(sigmas[state.start : stop], k - state.start)
        x_next = x.float() + weights[0] * d
        for w, earlier in zip(weights[1:], reversed(past), strict=True):
            x_next = x_next + w * earlier
    return x_next.to(velocity.dtype), replace(state, x0=(*past, d)[-(MAX_ORDER - 1) :], index=k)
