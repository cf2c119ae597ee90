"""RES4LYF's ``res_2s`` and ``res_2s_ode`` for flow models, as the RES4LYF custom nodes run them when a KSampler names
them (ClownsharkBatwing/RES4LYF: ``sample_rk_beta`` with every option at its default; ``bong_tangent``, the scheduler
they are mostly run with, is in ``sampling.comfy_schedules``).

A step from sigma to sigma' is a two-stage exponential Runge-Kutta step in ``t = -log sigma`` (c = 0, 1/2, 1; its
phi functions evaluated with mpmath at 80 digits, as RES4LYF does), the model called at the step's start and at its
midpoint substep. ``res_2s`` adds noise at both (eta 0.5, RES4LYF's "hard" mode on a flow model: sigma_up = eta
sigma_next, the sample rescaled by ``alpha = 1 - sigma_next + sqrt(sigma_next^2 - sigma_up^2)`` towards
``sigma_down = sqrt(sigma_next^2 - sigma_up^2) / alpha`` along the stage's straight line): after the substep (its own
generator, seeded 9999) and after the step (seeded with the run's seed + 1: RES4LYF seeds with ``torch.initial_seed()
+ 1``, which is the KSampler's seed in ComfyUI, for every call of a chain). Each draw is float64 normal noise
standardised over the whole latent, then per channel and frame. Before the midpoint call its "bongmath" moves the
step's start, 100 fixed-point rounds, so that the noised midpoint lies on the step's exponential path (where sigma >
0.03 and h < 1/2). ``res_2s_ode`` is eta 0: no noise, so a chain of sampler calls equals one.

A sampler call that ends at sigma 0 steps to the model's smallest sigma instead (ComfyUI's table's first entry) and
then takes ``x - sigma_min eps`` with that step's straight-line eps, with no model call; where its last sigma already
is that smallest one, the last step is that alone and the loop's model call there is unused. Latents are float32
between the model calls, the sigmas and coefficients float64, as RES4LYF keeps them; the noised sample stays float64
until the next step, and the step returns it as the velocity's dtype.

Same step-function convention as ``sampling.solvers``; the midpoint call goes through ``state.pending``, the call's
own record (its sigmas, its noise generators, its last step) through ``state.carry``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from wanflow.sampling.comfy_schedules import flow_table
from wanflow.sampling.solver_state import SolverState, Stepped, begun, check_index

F64 = torch.float64
ETA = {"res_2s": 0.5, "res_2s_ode": 0.0}  # (the step's and the substep's alike)
SUBSTEP_SEED = 9999  # RES4LYF's: its option's default -1 plus its MAX_STEPS, whatever the run's seed
C = (0.0, 0.5, 1.0)  # the stages' fractions of the step
BONG_ROUNDS = 100
MIN_GAP = 1e-4  # a last sigma closer than this to sigma_min is not followed by a step to it


@dataclass(frozen=True)
class Carry:
    """A sampler call's record between steps."""

    sigmas: torch.Tensor  # the call's sigmas as RES4LYF steps them (float64; sigma_min before a final 0)
    steps: int  # its Runge-Kutta steps
    loop_steps: int  # the call's steps in the loop (one more where its last sigma was sigma_min, one less inserted)
    denoise_at_end: bool  # whether it ends with ``x - sigma_min eps``
    sigma_min: torch.Tensor  # the model's smallest sigma (float64)
    step_noise: torch.Tensor  # the generators' states
    substep_noise: torch.Tensor
    sample: torch.Tensor | None = None  # the last step's sample (float64 where noised) and its straight-line eps
    eps: torch.Tensor | None = None


def _start(state: SolverState, k: int, x: torch.Tensor) -> Carry:
    """The call's record at its first step: its sigmas laid out as RES4LYF lays them out."""
    if state.seed is None or state.shift is None:
        raise ValueError("res_2s draws its noise from the run's seed and steps to the model's smallest sigma: "
                         "init(schedule, seed, shift=)")  # fmt: skip
    sigma_min = flow_table(state.shift)[0].to(F64)
    stop = state.schedule.num_steps if state.stop is None else state.stop
    sigmas = state.schedule.sigmas[k : stop + 1].to(F64)
    if sigmas[-1] == 0 and sigmas[-2] < sigma_min:
        sigmas = torch.cat([sigmas[:-2], sigma_min.view(1), sigmas[-1:]])
    elif sigmas[-1] == 0 and (sigmas[-2] - sigma_min).abs() > MIN_GAP:
        sigmas = torch.cat([sigmas[:-1], sigma_min.view(1), sigmas[-1:]])
    generator = torch.Generator()
    step_noise = generator.manual_seed(state.seed + 1).get_state()
    substep_noise = generator.manual_seed(SUBSTEP_SEED).get_state()
    steps, denoise = len(sigmas) - (2 if sigmas[-1] == 0 else 1), bool(sigmas[-1] == 0 and sigmas[-2] == sigma_min)
    return Carry(sigmas, steps, stop - k, denoise, sigma_min, step_noise, substep_noise)


def _phi(j: int, z: float) -> float:
    """``phi_j(z) = (e^z - sum_{k<j} z^k / k!) / z^j`` at 80 digits, rounded to a float."""
    from mpmath import exp, factorial, mp, mpf

    with mp.workdps(80):
        z = mpf(z)
        return float((exp(z) - sum(z**k / factorial(k) for k in range(j))) / z**j)


def _tableau(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The midpoint stage's row ``(a21, 0)`` and the step's weights ``(b1, b2)``: ``a21 = c2 phi1(-c2 h)``,
    ``b2 = phi2(-h) / c2``, ``b1 = phi1(-h) - b2``."""
    from mpmath import mp, mpf

    with mp.workdps(80):
        half, whole = float(-mpf(float(h)) * mpf(C[1])), float(-mpf(float(h)) * 1)
    b2 = _phi(2, whole) / C[1]
    a = torch.tensor([C[1] * _phi(1, half), 0.0], dtype=F64)
    return a, torch.tensor([_phi(1, whole) - b2, b2], dtype=F64)


def _hard(sigma_next: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sigma_up, sigma_down, alpha) of RES4LYF's "hard" noise on a flow model (its largest sigma 1)."""
    up = sigma_next * eta
    if up >= sigma_next:
        up = sigma_next * 0.9999 if eta >= 1 else sigma_next * eta
    residual = (sigma_next**2 - up**2) ** 0.5
    alpha = (1.0 - sigma_next) + residual
    down = residual / alpha
    return torch.nan_to_num(up, 0.0), torch.nan_to_num(down, float(sigma_next)), torch.nan_to_num(alpha, 1.0)


def _h(sigma_to: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return -torch.log(sigma_to / sigma)


def _weighted(row: torch.Tensor, eps: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.einsum("i, i... -> ...", row.to(eps[0].dtype), torch.stack(eps))


def _eps(x_0, x, denoised, sigma, sub_sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, data) of a stage: the stage's eps anchored at the step's start (RES4LYF's noise anchor 1)."""
    anchored, unmoored = (x_0 - denoised) / sigma, (x - denoised) / sub_sigma
    data = x_0 - sigma * (unmoored + 1.0 * (anchored - unmoored))
    return data - x_0, data


def _along(x_0, x, sigma, sigma_at, sigma_to) -> torch.Tensor:
    """``x`` (at ``sigma_at``) moved along the straight line from ``x_0`` (at ``sigma``) to ``sigma_to``."""
    eps = (x_0 - x) / (sigma - sigma_at)
    return x_0 - sigma * eps + sigma_to * eps


def _noised(x_0, x, sigma, sigma_to, eta: float, generator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (at ``sigma_to``) noised RES4LYF's way, and the generator's state after the draw."""
    up, down, alpha = _hard(sigma_to, eta)
    eps = (x_0 - x) / (sigma - sigma_to)
    noise, generator = _draw(generator, x_0.shape)
    return alpha * (x_0 - sigma * eps + down * eps) + up * noise * 1.0, generator


def _draw(generator_state: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator()
    generator.set_state(generator_state)
    noise = torch.randn(shape, dtype=F64, generator=generator)
    noise = (noise - noise.mean()) / noise.std()
    noise = noise.sub_(noise.mean(dim=(-2, -1), keepdim=True)).div_(noise.std(dim=(-2, -1), keepdim=True))
    return noise, generator.get_state()


def _levels(carry: Carry, i: int) -> tuple:
    """Step ``i``'s sigma, next sigma, h (to its noiseless sigma_down), its substep sigmas and tableau."""
    sigma, sigma_next = carry.sigmas[i], carry.sigmas[i + 1]
    h = _h(_hard(sigma_next, 0.0)[1], sigma)
    h = h + 0.0 * (_h(sigma_next, sigma) - h)
    subs = (sigma.log().neg() + h * torch.tensor(C, dtype=F64)).neg().exp()
    return sigma, sigma_next, h, subs, *_tableau(h)


def _step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int, eta: float) -> Stepped:
    k = check_index(state, index)
    state = begun(state, k)
    carry = state.carry if state.carry is not None else _start(state, k, x)
    i = k - state.start
    if i >= carry.steps:  # (the call's last sigma was at sigma_min: no step is left; the model's output is unused)
        x_last = _denoised(carry, carry.sample, carry.eps) if carry.denoise_at_end else carry.sample
        return x_last.to(velocity.dtype), replace(state, index=k, carry=carry)
    sigma, sigma_next, h, subs, a, b = _levels(carry, i)
    if state.pending is None:
        return _midpoint(replace(state, index=k, carry=carry), velocity, x, sigma, h, subs, a, eta)
    (x_1, sigma_1), (x_0, eps_0) = state.pending, state.partial
    eps_1, _ = _eps(x_0, x_1, x_1 - sigma_1 * velocity, sigma, subs[1])  # (the model saw sigma_1 as float32)
    h_new = h * _h(subs[2], sigma) / _h(subs[2], sigma)
    x_2 = x_0 + (h_new + 0.0 * (h - h_new)) * _weighted(b, (eps_0, eps_1))
    if sigma - subs[2] > 0:
        x_2 = _along(x_0, x_2, sigma, subs[2], subs[2])
    x_next = _along(x_0, x_2.float(), sigma, _hard(sigma_next, 0.0)[1], sigma_next)
    eps = (x_0 - x_next) / (sigma - sigma_next)
    step_noise = carry.step_noise
    if eta != 0 and _hard(sigma_next, eta)[0] != 0 and sigma_next != 0:
        x_next, step_noise = _noised(x_0, x_next, sigma, sigma_next, eta, step_noise)
    carry = replace(carry, step_noise=step_noise, sample=x_next, eps=eps)
    if i == carry.loop_steps - 1 and carry.denoise_at_end:  # (sigma_min was put before the final 0)
        x_next = _denoised(carry, x_next, eps)
    return x_next.to(velocity.dtype), replace(state, carry=carry, pending=None, partial=())


def _midpoint(state: SolverState, velocity, x, sigma, h, subs, a, eta: float) -> Stepped:
    """The step's first stage, from the model's output at its start: the midpoint sample (noised, then the step's
    start moved by bongmath), where the model is called next."""
    carry, x_0 = state.carry, x.float()
    eps_0, data_0 = _eps(x_0, x_0, x_0 - state.schedule.sigmas[state.index] * velocity, sigma, subs[0])
    zero = torch.zeros_like(eps_0)
    down = _hard(subs[1], 0.0)[1]
    up_eta, down_eta, _ = _hard(subs[1], eta)
    h_new = h * _h(down, sigma) / _h(subs[1], sigma)
    h_new = h_new + 0.0 * (h - h * _h(down_eta, sigma) / _h(subs[1], sigma))
    x_1 = x_0 + h_new * _weighted(a, (eps_0, zero))
    if sigma - down > 0:
        x_1 = _along(x_0, x_1, sigma, down, subs[1])
    substep_noise = carry.substep_noise
    if not (up_eta == 0 or subs[1] == 0):
        x_1, substep_noise = _noised(x_0, x_1, sigma, subs[1], eta, substep_noise)
    x_1 = x_1.float()
    if subs[0] > carry.sigma_min and h < 1.0 / 2 and sigma > 0.03:  # (bongmath)
        for _ in range(BONG_ROUNDS):
            x_0 = x_1 - h * _weighted(a, (eps_0, zero))
            eps_0, _ = _eps(x_0, (x_0 + h * _weighted(torch.zeros(2, dtype=F64), (eps_0, zero))).float(), data_0,
                            sigma, subs[0])  # fmt: skip
    carry = replace(carry, substep_noise=substep_noise)
    return x, replace(state, carry=carry, pending=(x_1, subs[1].float()), partial=(x_0, eps_0))


def _denoised(carry: Carry, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``x - sigma_min eps``: ComfyUI's denoised output of a flow model at its smallest sigma."""
    return x - eps * carry.sigma_min.view((1,) * x.ndim).to(x).view(())


def res_2s_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """RES4LYF's ``res_2s``."""
    return _step(state, velocity, x, index, ETA["res_2s"])


def res_2s_ode_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """RES4LYF's ``res_2s_ode``."""
    return _step(state, velocity, x, index, ETA["res_2s_ode"])
