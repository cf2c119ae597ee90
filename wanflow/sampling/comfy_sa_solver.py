"""ComfyUI's SA-Solver (Xue et al. 2023, stochastic Adams) for flow models: ``sa_solver`` and ``sa_solver_pece``.

Each step predicts the next sample from the data predictions of up to the last three steps (an Adams predictor in
the half log-SNR ``lambda = -logit(sigma)``, its weights the integrals of their Lagrange polynomials against the SDE's
exponential, solved as a Vandermonde system), and the model is called at that prediction; the next step first
corrects the sample it started from with the new prediction as well (up to four; the predictor's noise added again),
then predicts on. ``sa_solver_pece`` calls the model once more at the corrected sample (``state.pending``) and uses
that prediction instead. Noise (tau 1) is added between the sigmas of 20% and 80% of the model's timesteps (ComfyUI's
default interval, which needs the run's shift: ``SolverState.shift``), fresh draws from the sampler call's seed as
lcm's; outside it the steps are deterministic. The orders fall near the end of a call that ends at sigma 0; the last
step returns ``x0_hat``. The first sigma is moved off 1 (``schedule.offset_first_sigma``).

As ComfyUI's function does, a sampler call that ends above sigma 0 (a KSamplerAdvanced before the expert switch)
hands on the corrected sample of its last step's start, not the prediction at its end.

Same step-function convention as ``sampling.solvers``: the loop's latents are the predictions the model is called at;
the state's ``last_sample`` is the corrected sample, its ``x0`` the data predictions (at most four).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from wanflow.sampling.comfy_sde import half_log_snr
from wanflow.sampling.schedule import percent_to_sigma
from wanflow.sampling.solver_state import SolverState, Stepped, begun, check_index, fresh_noise

PREDICTOR_ORDER, CORRECTOR_ORDER = 3, 4  # ComfyUI's defaults
ETA = 1.0  # (and s_noise 1: ComfyUI's defaults)
NOISE_FROM, NOISE_TO = 0.2, 0.8  # the noisy interval: the sigmas at these fractions of the model's timesteps


def _exponential_integrals(s: torch.Tensor, t: torch.Tensor, order: int, tau: float) -> torch.Tensor:
    """``(1 + tau^2) int_s^t exp((1 + tau^2) x) x^p dx`` for p < ``order``, with ``exp((1 + tau^2) t)`` taken out:
    by parts, each power from the ones below it (a lower triangular matrix of signed factorial ratios)."""
    scale = 1 + tau**2
    p = torch.arange(order, dtype=s.dtype, device=s.device)
    ends = t**p - s**p * (-scale * (t - s)).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_factorial = (p + 1).lgamma()
    log_ratio = log_factorial.unsqueeze(1) - log_factorial.unsqueeze(0)
    if tau > 0:
        log_ratio = log_ratio - depth * math.log(scale)
    signs = torch.where(depth % 2 == 0, 1.0, -1.0)
    return (log_ratio.exp() * signs).tril() @ ends


def _weights(sigma_to: torch.Tensor, lambdas: torch.Tensor, lambda_s: torch.Tensor, lambda_t, tau: float):
    """The weights of the data predictions at ``lambdas`` for a step from ``lambda_s`` to ``lambda_t``: the integrals
    of their Lagrange basis (the Vandermonde system's solution), times ``alpha_t = sigma_t exp(lambda_t)``."""
    integrals = _exponential_integrals(lambda_s, lambda_t, lambdas.shape[0], tau)
    basis = torch.linalg.solve(torch.vander(lambdas, lambdas.shape[0], increasing=True).T, integrals)
    return sigma_to * lambda_t.exp() * basis


def _tau(sigma: torch.Tensor, shift: float | None) -> float:
    """The noise strength at ``sigma``: ``ETA`` inside the noisy interval, else 0."""
    if shift is None:
        raise ValueError("sa_solver adds noise between sigmas of the model's shift: init(..., shift=)")
    return ETA if percent_to_sigma(NOISE_FROM, shift) >= sigma.item() >= percent_to_sigma(NOISE_TO, shift) else 0.0


def _combined(predictions: tuple[torch.Tensor, ...], weights: torch.Tensor) -> torch.Tensor:
    weights = weights.to(predictions[0].device)  # (worked out on the schedule's CPU sigmas)
    return torch.tensordot(torch.stack(list(predictions), dim=1), weights, dims=([1], [0]))


def _left(state: SolverState, k: int) -> int | None:
    """The steps of the call left after step ``k`` where it ends at sigma 0 (the orders fall towards its end), else
    None."""
    stop = state.schedule.num_steps if state.stop is None else state.stop
    return stop - 1 - k if state.schedule.sigmas[stop] == 0 else None


def _step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int, pece: bool) -> Stepped:
    k = check_index(state, index)
    state = begun(state, k)
    sigmas = state.schedule.sigmas
    if state.pending is not None:  # (PECE: the model again at the corrected sample)
        corrected = state.pending[0]
        predictions = (*state.x0[:-1], corrected - sigmas[k] * velocity)
        return _predict(replace(state, pending=None, x0=predictions), corrected, k)
    predictions = (*state.x0, x.float() - sigmas[k] * velocity)[-max(PREDICTOR_ORDER, CORRECTOR_ORDER) :]
    state, left = replace(state, index=k, x0=predictions), _left(state, k)
    order = 0 if k == state.start or (sigmas[k + 1] == 0 and not pece) else min(CORRECTOR_ORDER, len(predictions))
    order = order if left is None else min(order, left + 1)
    if order == 0:
        return _predict(state, x.float(), k)
    lambdas = half_log_snr(sigmas)
    tau = _tau(sigmas[k], state.shift)  # (the last predictor's)
    weights = _weights(sigmas[k], lambdas[k - order + 1 : k + 1], lambdas[k - 1], lambdas[k], tau)
    h = lambdas[k] - lambdas[k - 1]
    corrected = sigmas[k] / sigmas[k - 1] * (-(tau**2) * h).exp() * state.last_sample
    corrected = corrected + _combined(predictions[-order:], weights)
    if tau > 0:
        corrected = corrected + state.last_noise  # (the noise the last predictor added)
    if pece:
        return x, replace(state, pending=(corrected, sigmas[k]))
    return _predict(state, corrected, k)


def _predict(state: SolverState, x: torch.Tensor, k: int) -> Stepped:
    """The predictor from the corrected sample ``x`` of step ``k``: the next prediction, the state keeping ``x`` and
    the noise added; ``x0_hat`` at sigma 0."""
    sigmas, predictions, left = state.schedule.sigmas, state.x0, _left(state, k)
    if sigmas[k + 1] == 0:
        return predictions[-1], replace(state, last_sample=x)
    order = min(PREDICTOR_ORDER, len(predictions))
    order = order if left is None else min(order, left)
    lambdas = half_log_snr(sigmas)
    tau = _tau(sigmas[k + 1], state.shift)
    weights = _weights(sigmas[k + 1], lambdas[k - order + 1 : k + 1], lambdas[k], lambdas[k + 1], tau)
    h = lambdas[k + 1] - lambdas[k]
    x_next = sigmas[k + 1] / sigmas[k] * (-(tau**2) * h).exp() * x + _combined(predictions[-order:], weights)
    noise = None
    if tau > 0:
        fresh, state = fresh_noise(state, x, "sa_solver")
        noise = fresh * sigmas[k + 1] * (-2 * tau**2 * h).expm1().neg().sqrt()
        x_next = x_next + noise
    state = replace(state, last_sample=x, last_noise=noise)
    if state.stop is not None and k + 1 == state.stop and not sigmas[k + 1] == 0:
        return x, state  # (ComfyUI's function returns the corrected sample where its call ends above sigma 0)
    return x_next, state


def sa_solver_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``sa_solver`` (predictor order 3, corrector order 4, tau 1 between 20% and 80%)."""
    x_next, state = _step(state, velocity, x, index, pece=False)
    return x_next.to(velocity.dtype), state


def sa_solver_pece_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """ComfyUI's ``sa_solver_pece``: the model called again at each corrected sample."""
    x_next, state = _step(state, velocity, x, index, pece=True)
    return x_next.to(velocity.dtype), state
