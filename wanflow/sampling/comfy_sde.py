"""ComfyUI's SDE samplers for flow models: ``dpmpp_2m_sde`` (midpoint), ``dpmpp_2m_sde_heun`` and ``dpmpp_3m_sde``
(Lu et al.'s DPM-Solver++ multistep, second and third order, on the SDE with eta 1), ``dpmpp_sde`` (the singlestep
stochastic DPM-Solver++, two model calls a step), and their ``_gpu`` variants.
Same step-function convention as ``sampling.solvers``.

On a flow model ComfyUI runs them in the half log-SNR ``lambda = log((1 - sigma) / sigma)``, with the first sigma moved
off 1 (``schedule.offset_first_sigma``). Their noise is a Brownian motion over sigma, not fresh draws: each
sampler call builds a Brownian tree (torchsde's ``BrownianTree``, the one ComfyUI builds, seeded with the call's seed,
spanning the call's positive sigmas; up to 1 where the first sigma was moved) and each step takes its increment over
the step, scaled to unit variance. The tree lives on the CPU, so one seed gives one video on any device; the ``_gpu``
variants build it on the run's device, as ComfyUI's do (checked here on the CPU only). Each sampler call starts afresh
(two KSamplerAdvanced nodes split the A14B experts' steps).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import replace

import torch

from wanflow.sampling.comfy_solvers import vp_ancestral
from wanflow.sampling.solver_state import SolverState, Stepped, begun, check_index

ETA = 1.0  # ComfyUI's default (KSampler passes no other)


class BrownianNoise:
    """ComfyUI's ``BrownianTreeNoiseSampler`` for one seed: ``noise(sigma, sigma_next)`` is the tree's increment
    between the two, divided by ``sqrt(|sigma - sigma_next|)``."""

    def __init__(self, like: torch.Tensor, sigma_min: torch.Tensor, sigma_max: torch.Tensor, seed: int, cpu: bool):
        import torchsde  # (only these samplers need it)

        self.cpu, self.device = cpu, like.device
        w0 = torch.zeros(like.shape, dtype=torch.float32, device="cpu" if cpu else like.device)
        t0, t1 = (s.detach().to(w0.device) for s in (sigma_min, sigma_max))
        with _quiet():
            self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        low, high = sigma_next.detach(), sigma.detach()  # (sorted: sigmas fall)
        low, high = (low.cpu().float(), high.cpu().float()) if self.cpu else (low.to(self.device), high.to(self.device))
        with _quiet():
            w = self.tree(low, high)
        scale = (sigma_next - sigma).abs().sqrt().to(self.device)  # (the schedule's sigmas live on the CPU)
        return -w.to(device=self.device, dtype=sigma.dtype) / scale


@contextmanager
def _quiet():
    """torchsde warns where a query's end and the tree's differ in the last float32 digit (the first and last
    sigmas); harmless, and said at every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Should have (ta>=t0|tb<=t1)", category=UserWarning)
        yield


def half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``sigma_tohalf_log_snr`` on a flow model: ``log((1 - sigma) / sigma)`` as ``-logit(sigma)``."""
    return sigma.logit().neg()


def _noise(state: SolverState, x: torch.Tensor, cpu: bool) -> BrownianNoise:
    """The sampler call's Brownian tree, built at its first noised step over the call's positive sigmas (from step
    ``state.start`` to ``state.stop``; up to 1 where the schedule's first sigma stands in for 1)."""
    if state.noise_tree is not None:
        return state.noise_tree
    if state.seed is None:
        raise ValueError("the SDE samplers draw their noise from the run's seed: init(schedule, seed)")
    sigmas = state.schedule.sigmas
    call = sigmas[state.start : (len(sigmas) if state.stop is None else state.stop + 1)]
    top = torch.ones((), dtype=torch.float32) if state.start == 0 and state.schedule.first_moved else call.max()
    return BrownianNoise(x, call[call > 0].min(), top, state.seed, cpu)


def sde_step(
    state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int, order: int, heun: bool, cpu: bool
) -> Stepped:
    """One step of DPM-Solver++(2M or 3M) SDE from ComfyUI's k-diffusion samplers, in float32, their operations in
    their order: ``x0_hat`` at sigma 0. ``cpu``: the Brownian tree on the CPU (else on ``x``'s device)."""
    k = check_index(state, index)
    state = begun(state, k)
    sigmas = state.schedule.sigmas
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    denoised = x.float() - sigma * velocity
    history = (*state.x0, denoised)[-3:]
    if sigma_next == 0:
        return denoised.to(velocity.dtype), replace(state, x0=history, index=k)
    lam = half_log_snr
    lambda_s, lambda_t = lam(sigma), lam(sigma_next)
    h = lambda_t - lambda_s
    h_eta = h * (ETA + 1)
    alpha_t = sigma_next * lambda_t.exp()
    x_next = sigma_next / sigma * (-h * ETA).exp() * x.float() + alpha_t * (-h_eta).expm1().neg() * denoised
    if state.x0:
        h_1 = lambda_s - lam(sigmas[k - 1])  # (the previous step's h, as it was computed)
        if order == 3 and len(state.x0) >= 2:
            h_2 = lam(sigmas[k - 1]) - lam(sigmas[k - 2])
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - state.x0[-1]) / r0
            d1_1 = (state.x0[-1] - state.x0[-2]) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            phi_3 = phi_2 / h_eta - 0.5
            x_next = x_next + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
        elif order == 3:
            d = (denoised - state.x0[-1]) / (h_1 / h)
            x_next = x_next + (alpha_t * (h_eta.neg().expm1() / h_eta + 1)) * d
        elif heun:
            x_next = x_next + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / (h_1 / h)) * (
                denoised - state.x0[-1]
            )
        else:
            x_next = x_next + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / (h_1 / h)) * (denoised - state.x0[-1])
    tree = _noise(state, x, cpu)
    x_next = x_next + tree(sigma, sigma_next) * sigma_next * (-2 * h * ETA).expm1().neg().sqrt()
    return x_next.to(velocity.dtype), replace(state, x0=history, index=k, noise_tree=tree)


def dpmpp_sde_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int, cpu: bool) -> Stepped:
    """ComfyUI's ``dpmpp_sde`` (DPM-Solver++ stochastic, r 1/2, eta 1) on a flow model, in the half log-SNR: two model
    calls a step (the second at the mid half log-SNR, ``state.pending``), each half an ancestral step with the
    Brownian tree's noise; ``x0_hat`` at sigma 0."""
    k = check_index(state, index)
    state = begun(state, k)
    sigmas = state.schedule.sigmas
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    lambda_s, lambda_t = half_log_snr(sigma), half_log_snr(sigma_next)
    alpha_s, alpha_t = sigma * lambda_s.exp(), sigma_next * lambda_t.exp()
    tree = _noise(state, x, cpu) if sigma_next > 0 else state.noise_tree
    if state.pending is None:
        denoised = x.float() - sigma * velocity
        if sigma_next == 0:
            return denoised.to(velocity.dtype), replace(state, index=k)
        lambda_s1 = lambda_s + 0.5 * (lambda_t - lambda_s)
        sigma_s1 = lambda_s1.neg().sigmoid()
        alpha_s1 = sigma_s1 * lambda_s1.exp()
        down, up = vp_ancestral(lambda_s.neg().exp(), lambda_s1.neg().exp())
        h = down.log().neg() - lambda_s
        x_2 = (alpha_s1 / alpha_s) * (-h).exp() * x.float() - alpha_s1 * (-h).expm1() * denoised
        x_2 = x_2 + alpha_s1 * tree(sigma, sigma_s1) * up
        return x, replace(state, index=k, pending=(x_2, sigma_s1), noise_tree=tree)
    x_2, sigma_s1 = state.pending  # (its r of 1/2 weighs the first data prediction 0: the second alone takes the step)
    denoised_2 = x_2 - sigma_s1 * velocity
    down, up = vp_ancestral(lambda_s.neg().exp(), lambda_t.neg().exp())
    h = down.log().neg() - lambda_s
    x_next = (alpha_t / alpha_s) * (-h).exp() * x.float() - alpha_t * (-h).expm1() * denoised_2
    x_next = x_next + alpha_t * tree(sigma, sigma_next) * up
    return x_next.to(velocity.dtype), replace(state, pending=None)


def _sampler(order: int, heun: bool, cpu: bool):
    def step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
        return sde_step(state, velocity, x, index, order, heun, cpu)

    return step


# ComfyUI's names: DPM-Solver++(2M) SDE with the midpoint or Heun's correction, DPM-Solver++(3M) SDE (2M at its second
# step), all first order at their first step; DPM-Solver++ SDE (two model calls a step)
SDE_STEPS = {
    f"{name}{gpu}": _sampler(order, heun, cpu=not gpu)
    for name, order, heun in (("dpmpp_2m_sde", 2, False), ("dpmpp_2m_sde_heun", 2, True), ("dpmpp_3m_sde", 3, False))
    for gpu in ("", "_gpu")
} | {
    f"dpmpp_sde{gpu}": (lambda cpu: lambda state, v, x, index: dpmpp_sde_step(state, v, x, index, cpu))(not gpu)
    for gpu in ("", "_gpu")
}
TWO_CALLS = ("dpmpp_sde", "dpmpp_sde_gpu")  # (of ``SDE_STEPS``: two model calls a step)
