"""ComfyUI's samplers that step in sigma on the derivative ``d = (x - x0_hat) / sigma`` (on a flow model the velocity
itself) and earlier steps' derivatives: ``ipndm`` and ``ipndm_v`` (Zhang and Chen's improved PNDM, from zju-pi's
diff-sampler), linear multistep (Adams-Bashforth) steps up to fourth order, ``ipndm`` with the fixed coefficients of
equal steps, ``ipndm_v`` with those of the steps' actual lengths; ``lms`` (k-diffusion's linear multistep, fourth
order, its coefficients integrated numerically over the sigmas); and ``gradient_estimation`` (Permenter and Yuan's),
an Euler step corrected by ``(gamma - 1)`` times the change of ``d`` since the step before (gamma 2). Same
step-function convention as ``sampling.solvers``, the previous derivatives (three at most) in the state's ``carry``;
each sampler call starts afresh (an Euler step first) and returns ``x0_hat`` at sigma 0.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from wanflow.sampling.solver_state import SolverState, Stepped, check_index

MAX_ORDER = 4  # ComfyUI's: three previous derivatives kept


def _fixed(sigmas: torch.Tensor, k: int, d: torch.Tensor, past: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The step's increment, ``ipndm``: Adams-Bashforth of order ``len(past) + 1`` with equal-step coefficients."""
    dt = sigmas[k + 1] - sigmas[k]
    if not past:
        return dt * d
    if len(past) == 1:
        return dt * (3 * d - past[-1]) / 2
    if len(past) == 2:
        return dt * (23 * d - 16 * past[-1] + 5 * past[-2]) / 12
    return dt * (55 * d - 59 * past[-1] + 37 * past[-2] - 9 * past[-3]) / 24


def _variable(sigmas: torch.Tensor, k: int, d: torch.Tensor, past: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The step's increment, ``ipndm_v``: the same orders with coefficients from the steps' lengths ``h``."""
    h = sigmas[k + 1] - sigmas[k]
    if not past:
        return h * d
    h1 = sigmas[k] - sigmas[k - 1]
    c1, c2 = (2 + (h / h1)) / 2, -(h / h1) / 2
    if len(past) == 1:
        return h * (c1 * d + c2 * past[-1])
    h2 = sigmas[k - 1] - sigmas[k - 2]
    a = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
    if len(past) == 2:
        return h * ((c1 + a) * d + (c2 - (1 + h1 / h2) * a) * past[-1] + a * h1 / h2 * past[-2])
    h3 = sigmas[k - 2] - sigmas[k - 3]
    ratio = h1 * (h1 + h2) / (h2 * (h2 + h3))
    b = (
        ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2)))
        * (h * (h + h1) * (h + h1 + h2))
        / (h1 * (h1 + h2) * (h1 + h2 + h3))
    )
    c = (
        c1 + a + b,
        c2 - (1 + h1 / h2) * a - (1 + (h1 / h2) + ratio) * b,
        a * h1 / h2 + ((h1 / h2) + ratio * (1 + h2 / h3)) * b,
        -b * ratio * h1 / h2,
    )
    return h * (c[0] * d + c[1] * past[-1] + c[2] * past[-2] + c[3] * past[-3])


def _lms(sigmas: torch.Tensor, k: int, d: torch.Tensor, past: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The step's increment, ``lms``: the derivatives' Lagrange polynomial over their sigmas integrated across the step
    (scipy's ``quad``, relative tolerance 1e-4, on the float32 sigmas, as k-diffusion integrates it); newest first."""
    from scipy import integrate

    t = sigmas.numpy()
    order = len(past) + 1

    def basis(j: int):
        def fn(tau):
            prod = 1.0
            for m in range(order):
                if m != j:
                    prod *= (tau - t[k - m]) / (t[k - j] - t[k - m])
            return prod

        return fn

    coefficients = [integrate.quad(basis(j), t[k], t[k + 1], epsrel=1e-4)[0] for j in range(order)]
    return sum(c * derivative for c, derivative in zip(coefficients, (d, *reversed(past)), strict=True))


GE_GAMMA = 2.0  # ComfyUI's gradient_estimation default


def _gradient(sigmas: torch.Tensor, k: int, x: torch.Tensor, d: torch.Tensor, past: tuple) -> torch.Tensor:
    """The next sample, ``gradient_estimation``: Euler's step, then ``(gamma - 1) (d - d_prev)`` over the step too."""
    dt = sigmas[k + 1] - sigmas[k]
    x = x + d * dt
    return x if not past else x + (GE_GAMMA - 1) * (d - past[-1]) * dt


def _step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int, advance) -> Stepped:
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    sigma = sigmas[k]
    x0 = x.float() - sigma * velocity
    d = (x.float() - x0) / sigma  # (ComfyUI's derivative from its denoised output: the velocity, as it rounds it)
    past = state.carry or ()  # (the previous steps' derivatives, oldest first)
    x_next = x0 if sigmas[k + 1] == 0 else advance(sigmas, k, x.float(), d, past)
    return x_next.to(velocity.dtype), replace(state, carry=(*past, d)[-(MAX_ORDER - 1) :], index=k)


def _added(increment):
    """The next sample of an Adams-Bashforth ``increment``: ``x`` plus it."""
    return lambda sigmas, k, x, d, past: x + increment(sigmas, k, d, past)


def ipndm_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``ipndm``."""
    return _step(state, velocity, x, index, _added(_fixed))


def ipndm_v_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``ipndm_v``."""
    return _step(state, velocity, x, index, _added(_variable))


def lms_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``lms`` (order 4)."""
    return _step(state, velocity, x, index, _added(_lms))


def gradient_estimation_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``gradient_estimation``."""
    return _step(state, velocity, x, index, _gradient)
