"""ComfyUI's samplers for flow models: other solvers of the same ODE than the reference's ``dpm++`` and ``unipc``,
which ComfyUI workflows for Wan name. Same step-function convention as ``sampling.solvers``.

ComfyUI runs k-diffusion's samplers on Wan unchanged: they integrate ``dx/dsigma = (x - x0_hat) / sigma``, which is
the flow ODE, in ``t = -log sigma``. Each ComfyUI sampler call starts afresh (two KSamplerAdvanced nodes split the
A14B experts' steps): these solvers ``restart_at_switch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from wanflow.sampling.solver_state import SolverState, Stepped, begun, check_index, fresh_noise

UNI_PC_LAST_SIGMA = 0.001  # ComfyUI's uni_pc integrates to this sigma where its sigmas end at 0


def _neg_log(sigma: torch.Tensor) -> torch.Tensor:
    """k-diffusion's time ``t = -log(sigma)``."""
    return -torch.log(sigma)


def dpmpp_2m_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``dpmpp_2m``: k-diffusion's DPM-Solver++(2M) in ``t = -log sigma`` (not the flow half log-SNR of
    ``dpm++``), first order at the first step and ``x0_hat`` itself at sigma 0. Sample in float32."""
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    x0 = x.float() - sigma * velocity
    if sigma_next == 0:
        x_next = x0
    else:
        h = _neg_log(sigma_next) - _neg_log(sigma)
        d = x0
        if state.x0:
            half_r = 0.5 * h / (_neg_log(sigma) - _neg_log(sigmas[k - 1]))  # 1 / (2 r)
            d = (1 + half_r) * x0 - half_r * state.x0[-1]
        x_next = sigma_next / sigma * x.float() - torch.expm1(-h) * d
    return x_next.to(velocity.dtype), replace(state, x0=(x0,), index=k)


def flow_ancestral(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ComfyUI's ancestral step on a flow model at eta 1 (its ``_RF`` samplers): (``sigma_down = sigma'^2 / sigma``,
    the latents' rescale from it to sigma' ``(1 - sigma') / (1 - sigma_down)``, and the fresh noise's scale, the
    deviation the path lacks there ``sqrt(sigma'^2 - sigma_down^2 (1 - sigma')^2 / (1 - sigma_down)^2)``), in
    ComfyUI's float32 operations."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * 1.0)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise


def vp_ancestral(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k-diffusion's ancestral step at eta 1 (``get_ancestral_step``), which ComfyUI also takes on flow models for
    res_multistep_ancestral and, on ``exp(-lambda)``, for dpmpp_sde: (sigma_down, sigma_up), ``sigma_up = min(s',
    s' sqrt(s^2 - s'^2) / s)``, ``sigma_down = sqrt(s'^2 - sigma_up^2)``."""
    up = min(sigma_next, 1.0 * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - up**2) ** 0.5, up


def euler_ancestral_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``euler_ancestral`` on a flow model (its ``sample_euler_ancestral_RF``, eta 1): an Euler step down
    to ``sigma_down``, rescaled to sigma', and fresh noise of the variance the path lacks there (``flow_ancestral``);
    ``x0_hat`` at sigma 0. The noise is ComfyUI's noise sampler's (``fresh_noise``), as lcm's."""
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    x0 = x.float() - sigma * velocity
    if sigma_next == 0:
        return x0.to(velocity.dtype), replace(state, index=k)
    sigma_down, rescale, renoise = flow_ancestral(sigma, sigma_next)
    ratio = sigma_down / sigma
    x_next = ratio * x.float() + (1 - ratio) * x0
    noise, state = fresh_noise(state, x, "euler_ancestral")
    x_next = rescale * x_next + noise * renoise
    return x_next.to(velocity.dtype), replace(state, index=k)


def res_multistep_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``res_multistep`` (Zhang et al.'s second-order RES multistep, arXiv 2308.02157, deterministic): an
    Euler step first and at sigma 0, else ``e^-h x + h (b1 x0_hat + b2 x0_prev)`` in ``t = -log sigma`` with
    ``b1 = phi1(-h) - phi2(-h) / c2``, ``b2 = phi2(-h) / c2``, ``c2`` the previous step's length over this one's."""
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    x0 = x.float() - sigma * velocity
    if sigma_next == 0 or not state.x0:
        x_next = x.float() + (sigma_next - sigma) * velocity
    else:
        t = _neg_log(sigma)
        h = _neg_log(sigma_next) - t
        c2 = (_neg_log(sigmas[k - 1]) - t) / h
        phi1 = torch.expm1(-h) / -h
        phi2 = (phi1 - 1) / -h
        b1, b2 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0), torch.nan_to_num(phi2 / c2, nan=0.0)
        x_next = torch.exp(-h) * x.float() + h * (b1 * x0 + b2 * state.x0[-1])
    return x_next.to(velocity.dtype), replace(state, x0=(x0,), index=k)


def res_multistep_ancestral_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``res_multistep_ancestral`` (eta 1): ``res_multistep``'s step down to the ancestral ``sigma_down``
    (in ``t = -log sigma``, its earlier step from the earlier ``sigma_down``), then fresh noise times ``sigma_up``
    (ComfyUI's noise sampler's, as lcm's); k-diffusion's VP ancestral step, which ComfyUI does not adapt to flow
    models for this sampler. An Euler step first and at sigma 0."""
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    x0 = x.float() - sigma * velocity
    down, up = vp_ancestral(sigma, sigma_next)
    if down == 0 or not state.x0:
        x_next = x.float() + (x.float() - x0) / sigma * (down - sigma)
    else:
        t, t_old, t_next, t_prev = (_neg_log(s) for s in (sigma, vp_ancestral(sigmas[k - 1], sigma)[0], down,
                                                          sigmas[k - 1]))  # fmt: skip
        h = t_next - t
        c2 = (t_prev - t_old) / h
        phi1 = torch.expm1(-h) / -h
        phi2 = (phi1 - 1.0) / -h
        b1, b2 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0), torch.nan_to_num(phi2 / c2, nan=0.0)
        x_next = torch.exp(-h) * x.float() + h * (b1 * x0 + b2 * state.x0[-1])
    if sigma_next > 0:
        noise, state = fresh_noise(state, x, "res_multistep_ancestral")
        x_next = x_next + noise * 1.0 * up
    return x_next.to(velocity.dtype), replace(state, x0=(x0,), index=k)


# ---------------------------------------------------------------- uni_pc, uni_pc_bh2
#
# ComfyUI's UniPC (comfy/extra_samplers/uni_pc.py) runs the data-prediction UniPC of Zhao et al. (arXiv 2302.04867)
# on a VP process it makes of the sigmas: alpha = 1 / sqrt(1 + sigma^2), lambda = -log(sigma) (k-diffusion's time
# again), its sample x / sqrt(1 + sigma^2). Order min(3, steps - 1), lower orders for the first and the last
# steps, no corrector on the last one; a sigma of 0 is replaced by 0.001, where it stops. Its coefficients are computed
# in float32 from those formulas (lambda loses digits near sigma 0), the right-hand side of the corrector's system in
# float64; both as ComfyUI does, so that a workflow's samples are ComfyUI's.


def _vp(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha, std, lambda) of the VP process ComfyUI's uni_pc makes of ``sigma``, computed as it does (float32)."""
    log_alpha = 0.5 * torch.log(1 / (sigma * sigma + 1))
    one_minus = 1.0 - torch.exp(2.0 * log_alpha)
    return torch.exp(log_alpha), torch.sqrt(one_minus), log_alpha - 0.5 * torch.log(one_minus)


def _uni_pc_time(state: SolverState, i: int) -> torch.Tensor:
    sigma = state.schedule.sigmas[i]
    return torch.full_like(sigma, UNI_PC_LAST_SIGMA) if sigma == 0 else sigma


@dataclass(frozen=True)
class _Update:
    """One UniPC update, from step k to k + 1: its predictor, and its corrector once the data prediction at k + 1 is
    known."""

    base: torch.Tensor  # the first-order update of the sample
    coef: torch.Tensor  # alpha_{k+1} B(h)
    m0: torch.Tensor  # the data prediction at step k
    d1s: list[torch.Tensor]  # the divided differences of the older data predictions
    rhos_p: torch.Tensor
    rhos_c: torch.Tensor

    def predict(self) -> torch.Tensor:
        if not self.d1s:
            return self.base
        return self.base - self.coef * sum(rho * d for rho, d in zip(self.rhos_p, self.d1s, strict=True))

    def correct(self, x0_next: torch.Tensor) -> torch.Tensor:
        residual = sum((r * d for r, d in zip(self.rhos_c[:-1], self.d1s, strict=True)), torch.zeros_like(self.base))
        return self.base - self.coef * (residual + self.rhos_c[-1] * (x0_next - self.m0))


def _uni_pc_update(state: SolverState, x: torch.Tensor, k: int, order: int, bh2: bool) -> _Update:
    """The update of sample ``x`` from step ``k`` to ``k + 1``, of ``order``, by the data predictions ``state.x0``
    (newest at step ``k``)."""
    t_prev = [_uni_pc_time(state, k - i) for i in range(order)]  # newest first
    alpha_t, std_t, lambda_t = _vp(_uni_pc_time(state, k + 1))
    _, std_0, lambda_0 = _vp(t_prev[0])
    h = lambda_t - lambda_0
    m0 = state.x0[-1]
    rks = [(_vp(t)[2] - lambda_0) / h for t in t_prev[1:]]
    d1s = [(state.x0[-1 - i] - m0) / rk for i, rk in enumerate(rks, 1)]
    hh = -h
    r = torch.stack([torch.stack([*rks, torch.ones_like(h)]) ** i for i in range(order)])
    b = _uni_pc_b(hh, order, bh2)
    return _Update(
        base=(std_t / std_0) * x - (alpha_t * torch.expm1(hh)) * m0,
        coef=alpha_t * (torch.expm1(hh) if bh2 else hh),
        m0=m0,
        d1s=d1s,
        rhos_p=torch.tensor([0.5]) if order <= 2 else torch.linalg.solve(r[:-1, :-1], b[:-1]),
        rhos_c=torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r, b),
    )


def _uni_pc_b(hh: torch.Tensor, order: int, bh2: bool) -> torch.Tensor:
    """The corrector's right-hand side ``b_i = i! phi_{i+1}(hh) / B(h)``, by the recurrence ComfyUI runs in float64
    (its terms nearly cancel for the short steps of high-shift schedules), as float32."""
    hh64 = hh.double()
    phi = torch.expm1(hh64) / hh64 - 1
    b_h = torch.expm1(hh64) if bh2 else hh64
    b = []
    for i in range(1, order + 1):
        b.append(phi * math.factorial(i) / b_h)
        phi = phi / hh64 - 1 / math.factorial(i + 1)
    return torch.stack(b).float()


def _uni_pc_orders(state: SolverState, k: int) -> int:
    """The order of the update from step ``k`` to ``k + 1``: ComfyUI's ``min(3, steps - 1)`` for the call's steps,
    lower while the history fills and for the last two steps. A one-step call takes a first-order step (ComfyUI's
    takes none: order 0 returns its input)."""
    n = state.stop - state.start
    j = k + 1 - state.start  # (the update's number in the call, from 1)
    order = min(3, n - 1)
    return max(1, j if j < order else min(order, n + 1 - j))


def _uni_pc_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int, bh2: bool) -> Stepped:
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    alpha, std, _ = _vp(sigmas[k])
    vp_sample = x.float() / torch.sqrt(1.0 + sigmas[k] ** 2.0)  # (the sample scaled to the VP process)
    x0 = (vp_sample - std * velocity.float()) / alpha  # (x0_hat as ComfyUI computes it, with its float32 std)
    if state.last_sample is None:  # (the call's first step)
        state = replace(begun(state, k), stop=state.stop or state.schedule.num_steps)
        sample = vp_sample
    else:  # (the corrector of the update that led here, now that x0 here is known)
        sample = _uni_pc_update(state, state.last_sample, k - 1, state.last_order, bh2).correct(x0)
    state = replace(state, x0=(*state.x0, x0)[-3:], index=k)
    order = _uni_pc_orders(state, k)
    predicted = _uni_pc_update(state, sample, k, order, bh2).predict()
    if k + 1 == state.stop:  # (the call's last step: back from the VP process, no corrector)
        predicted = predicted / _vp(_uni_pc_time(state, k + 1))[0]
        if sigmas[k + 1] == 0:  # (ComfyUI then divides by 1 - sigmas[-1] for flow models, with the 0.001 it set)
            predicted = predicted / (1.0 - UNI_PC_LAST_SIGMA)
        return predicted.to(velocity.dtype), replace(state, last_sample=None)
    model_input = predicted * (sigmas[k + 1] ** 2 + 1.0) ** 0.5
    return model_input.to(velocity.dtype), replace(state, last_sample=sample, last_order=order)


def uni_pc_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``uni_pc``: UniPC with B(h) = h (bh1)."""
    return _uni_pc_step(state, velocity, x, index, bh2=False)


def uni_pc_bh2_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``uni_pc_bh2``: UniPC with B(h) = e^h - 1."""
    return _uni_pc_step(state, velocity, x, index, bh2=True)
