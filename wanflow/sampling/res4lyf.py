"""RES4LYF's ``res_2s``, ``res_3s`` and ``res_2m`` (and their ``_ode`` forms) for flow models, as the RES4LYF
custom nodes run them when a KSampler names them (ClownsharkBatwing/RES4LYF: ``sample_rk_beta`` with every option at
its default; ``bong_tangent``, the scheduler they are mostly run with, is in ``sampling.comfy_schedules``).

A step from sigma to sigma' is an exponential Runge-Kutta step in ``t = -log sigma`` (its phi functions evaluated
with mpmath at 80 digits, as RES4LYF does), the model called at each stage: ``res_2s`` two stages (c = 0, 1/2),
``res_3s`` three (c = 0, 1/2, 1), ``res_2m`` a two-step method of one call a step that reuses the previous step's
first data prediction (its first two steps are res_2s steps; a step of ``log(sigma / sigma') >= 1`` is an
exponential Euler step below sigma 0.1, a res_2s one above). The noised forms add noise after each stage (eta 0.5,
RES4LYF's "hard" mode on a flow model: sigma_up = eta sigma_next, the sample rescaled by ``alpha = 1 - sigma_next +
sqrt(sigma_next^2 - sigma_up^2)`` towards ``sigma_down = sqrt(sigma_next^2 - sigma_up^2) / alpha`` along the stage's
straight line): after each substep (one generator, seeded 9999) and after the step (seeded with the run's seed + 1:
RES4LYF seeds with ``torch.initial_seed() + 1``, which is the KSampler's seed in ComfyUI, for every call of a chain).
Each draw is float64 normal noise standardised over the whole latent, then per channel and frame. After each noised
substep its "bongmath" moves the step's start (and the stages before), 100 fixed-point rounds, so that the noised
stage lies on the step's exponential path (where sigma > 0.03 and h < 1/2). The ``_ode`` forms are eta 0.

A sampler call that ends at sigma 0 steps to the model's smallest sigma instead (ComfyUI's table's first entry) and
then takes ``x - sigma_min eps`` with that step's straight-line eps, with no model call; where its last sigma already
is that smallest one, the last step is that alone, and the loop makes no model call there (``needs_model``).
Latents are float32 between the model calls, the sigmas and coefficients float64, as RES4LYF keeps them; the noised
sample stays float64 until the next step, and the step returns it as the velocity's dtype.

Same step-function convention as ``sampling.solvers``; a step's later calls go through ``state.pending``, the call's
own record (its sigmas, its noise generators, its last step, the step's stages) through ``state.carry``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from wanflow.sampling.comfy_schedules import flow_table
from wanflow.sampling.solver_state import SolverState, Stepped, begun, check_index

F64 = torch.float64
ETA = {"": 0.5, "_ode": 0.0}  # (the step's and the substep's alike)
# (its order, its model calls a step at most: res_2m's first steps are res_2s's)
METHODS = {"res_2s": (2, 2), "res_3s": (3, 3), "res_2m": (2, 2)}
SUBSTEP_SEED = 9999  # RES4LYF's: its option's default -1 plus its MAX_STEPS, whatever the run's seed
BONG_ROUNDS = 100
MIN_GAP = 1e-4  # a last sigma closer than this to sigma_min is not followed by a step to it


@dataclass(frozen=True)
class Tableau:
    """An exponential Runge-Kutta step: the stages' rows ``a``, the weights ``b``, the stages' fractions ``c`` (then
    1), and whether its second row is the previous step's (``recycled``: res_2m's multistep steps)."""

    a: torch.Tensor  # float64 (rows, cols)
    b: torch.Tensor  # float64 (cols,)
    c: torch.Tensor  # float64 (rows + 1,)
    recycled: int = 0

    @property
    def rows(self) -> int:
        return self.a.shape[0]

    @property
    def calls(self) -> int:
        return self.rows - self.recycled

    def weights(self, row: int) -> torch.Tensor:
        return self.a[row] if row < self.rows else self.b


class _Phi:
    """``phi(j, i)``: ``phi_j(-h c_i)`` (``c_i`` the i-th fraction, from 1; 0 where it is 0), ``phi(j)``:
    ``phi_j(-h)``; the argument formed at 80 digits and rounded to a float, the series at 80 digits."""

    def __init__(self, h: torch.Tensor, c: list[float]):
        from mpmath import mpf

        self.h, self.c = mpf(float(h)), [mpf(ci) for ci in c]

    def __call__(self, j: int, i: int = 0) -> float:
        from mpmath import exp, factorial, mp, mpf

        c = 1 if i == 0 else self.c[i - 1]
        if c == 0:
            return 0
        with mp.workdps(80):
            z = mpf(float(-self.h * c))
            return float((exp(z) - sum(z**k / factorial(k) for k in range(j))) / z**j)


def _res_2s(h: torch.Tensor, c2: float = 0.5, recycled: int = 0) -> Tableau:
    phi = _Phi(h, [0, c2])
    b2 = phi(2) / c2
    a = torch.tensor([[0, 0], [c2 * phi(1, 2), 0]], dtype=F64)
    return Tableau(a, torch.tensor([phi(1) - b2, b2], dtype=F64), torch.tensor([0, c2, 1], dtype=F64), recycled)


def _res_3s(h: torch.Tensor, c2: float = 0.5, c3: float = 1.0) -> Tableau:
    c = [0, c2, c3]
    phi = _Phi(h, c)
    gamma = (3 * (c3**3) - 2 * c3) / (c2 * (2 - 3 * c2))
    a32 = gamma * c2 * phi(2, 2) + (c3**2 / c2) * phi(2, 3)
    b3 = (1 / (gamma * c2 + c3)) * phi(2)
    a, b = [[0, 0, 0], [0, 0, 0], [0, a32, 0]], [0, gamma * b3, b3]
    for i in range(3):  # (each row's first weight: the rest of phi_1 at its fraction)
        a[i][0] = c[i] * phi(1, i + 1) - sum(a[i])
    b[0] = phi(1) - sum(b)
    return Tableau(torch.tensor(a, dtype=F64), torch.tensor(b, dtype=F64), torch.tensor([*c, 1], dtype=F64))


EULER = Tableau(torch.tensor([[0.0]], dtype=F64), torch.tensor([1.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))


def _tableau(method: str, h: torch.Tensor, sigmas: torch.Tensor, i: int) -> Tableau:
    """The step ``i`` of a call on ``sigmas`` as RES4LYF takes it."""
    if method == "res_3s":
        return _res_3s(h)
    if method == "res_2m":
        h_plain = -torch.log(sigmas[i + 1] / sigmas[i])
        if h_plain >= 1.0:  # (RES4LYF's fallback: an exponential Euler step low down)
            return EULER if sigmas[i] < 0.1 else _res_2s(h)
        if i >= 2:  # (after its two res_2s steps: the previous step's data prediction as the second stage)
            return _res_2s(h, c2=(torch.log(sigmas[i] / sigmas[i - 1]) / h_plain).item(), recycled=1)
    return _res_2s(h)


@dataclass(frozen=True)
class Stages:
    """A step between its model calls: its levels and tableau, its start, the stages' points, eps and data."""

    row: int  # the stage whose model output comes next
    levels: tuple  # (sigma, sigma_next, h, the stages' sigmas, the tableau)
    x_0: torch.Tensor
    xs: tuple
    eps: tuple
    data: tuple


@dataclass(frozen=True)
class Carry:
    """A sampler call's record between steps and model calls."""

    sigmas: torch.Tensor  # the call's sigmas as RES4LYF steps them (float64; sigma_min before a final 0)
    steps: int  # its Runge-Kutta steps
    loop_steps: int  # the call's steps in the loop (one more where its last sigma was sigma_min, one less inserted)
    denoise_at_end: bool  # whether it ends with ``x - sigma_min eps``
    sigma_min: torch.Tensor  # the model's smallest sigma (float64)
    step_noise: torch.Tensor  # the generators' states
    substep_noise: torch.Tensor
    sample: torch.Tensor | None = None  # the last step's sample (float64 where noised) and its straight-line eps
    eps: torch.Tensor | None = None
    data: torch.Tensor | None = None  # the last step's first data prediction (res_2m's second stage)
    stages: Stages | None = None


def _laid_out(state: SolverState, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The call from step ``k`` as RES4LYF lays it out: (its sigmas, float64, sigma_min put before a final 0 or in
    place of a last sigma under it; the model's smallest sigma; its Runge-Kutta steps)."""
    if state.seed is None or state.shift is None:
        raise ValueError("RES4LYF's samplers draw their noise from the run's seed and step to the model's smallest "
                         "sigma: init(schedule, seed, shift=)")  # fmt: skip
    sigma_min = flow_table(state.shift)[0].to(F64)
    stop = state.schedule.num_steps if state.stop is None else state.stop
    sigmas = state.schedule.sigmas[k : stop + 1].to(F64)
    if sigmas[-1] == 0 and sigmas[-2] < sigma_min:
        sigmas = torch.cat([sigmas[:-2], sigma_min.view(1), sigmas[-1:]])
    elif sigmas[-1] == 0 and (sigmas[-2] - sigma_min).abs() > MIN_GAP:
        sigmas = torch.cat([sigmas[:-1], sigma_min.view(1), sigmas[-1:]])
    return sigmas, sigma_min, len(sigmas) - (2 if sigmas[-1] == 0 else 1)


def _start(state: SolverState, k: int, device: torch.device) -> Carry:
    """The call's record at its first step: its sigmas (``_laid_out``), its noise generators on the latents'
    ``device``."""
    sigmas, sigma_min, steps = _laid_out(state, k)
    generator = torch.Generator(device=device)
    step_noise = generator.manual_seed(state.seed + 1).get_state()
    substep_noise = generator.manual_seed(SUBSTEP_SEED).get_state()
    stop = state.schedule.num_steps if state.stop is None else state.stop
    denoise = bool(sigmas[-1] == 0 and sigmas[-2] == sigma_min)
    return Carry(sigmas, steps, stop - k, denoise, sigma_min, step_noise, substep_noise)


def _hard(sigma_next: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sigma_up, sigma_down, alpha) of RES4LYF's "hard" noise on a flow model (its largest sigma 1), for eta < 1."""
    up = sigma_next * eta
    residual = (sigma_next**2 - up**2) ** 0.5
    alpha = (1.0 - sigma_next) + residual
    return up, residual / alpha, alpha


def _h(sigma_to: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return -torch.log(sigma_to / sigma)


def _weighted(row: torch.Tensor, eps: tuple | list) -> torch.Tensor:
    return torch.einsum("i, i... -> ...", row.to(eps[0].device, eps[0].dtype), torch.stack(list(eps)))


def _eps(x_0, x, denoised, sigma, sub_sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, data) of a stage: the stage's eps anchored at the step's start (RES4LYF's noise anchor 1)."""
    anchored, unmoored = (x_0 - denoised) / sigma, (x - denoised) / sub_sigma
    data = x_0 - sigma * (unmoored + (anchored - unmoored))
    return data - x_0, data


def _along(x_0, x, sigma, sigma_at, sigma_to) -> torch.Tensor:
    """``x`` (at ``sigma_at``) moved along the straight line from ``x_0`` (at ``sigma``) to ``sigma_to``."""
    eps = (x_0 - x) / (sigma - sigma_at)
    return x_0 - sigma * eps + sigma_to * eps


def _noised(x_0, x, sigma, sigma_to, eta: float, generator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (at ``sigma_to``) noised RES4LYF's way, and the generator's state after the draw."""
    up, down, alpha = _hard(sigma_to, eta)
    eps = (x_0 - x) / (sigma - sigma_to)
    noise, generator = _draw(generator, x_0.shape, x_0.device)
    return alpha * (x_0 - sigma * eps + down * eps) + up * noise, generator


def _draw(generator_state: torch.Tensor, shape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """RES4LYF's gaussian noise: float64, from a generator on the latents' device (as its noise generators are),
    standardised over the whole latent, then per channel and frame."""
    generator = torch.Generator(device=device)
    generator.set_state(generator_state)
    noise = torch.randn(shape, dtype=F64, generator=generator, device=device)
    noise = (noise - noise.mean()) / noise.std()
    noise = noise.sub_(noise.mean(dim=(-2, -1), keepdim=True)).div_(noise.std(dim=(-2, -1), keepdim=True))
    return noise, generator.get_state()


def _levels(method: str, carry: Carry, i: int) -> tuple:
    """Step ``i``'s sigma, next sigma, h (to its noiseless sigma_down), its stages' sigmas and tableau."""
    sigma, sigma_next = carry.sigmas[i], carry.sigmas[i + 1]
    h = _h(_hard(sigma_next, 0.0)[1], sigma)
    tableau = _tableau(method, h, carry.sigmas, i)
    return sigma, sigma_next, h, (sigma.log().neg() + h * tableau.c).neg().exp(), tableau


def _step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int, method: str, eta: float) -> Stepped:
    k = check_index(state, index)
    state = begun(state, k)
    carry = state.carry if state.carry is not None else _start(state, k, x.device)
    i = k - state.start
    if i >= carry.steps:  # (the call's last sigma was at sigma_min: no step is left; ``needs_model`` said so)
        x_last = _denoised(carry, carry.sample, carry.eps) if carry.denoise_at_end else carry.sample
        return x_last.to(velocity.dtype), replace(state, index=k, carry=carry)
    if state.pending is None:  # (the step's first call, at its start)
        levels = _levels(method, carry, i)
        x_0, tableau = x.float(), levels[4]
        zero = torch.zeros_like(x_0)
        eps = [zero] * tableau.a.shape[1]
        if tableau.recycled:
            eps[1] = carry.data - x_0
        stages = Stages(0, levels, x_0, (x_0,) + (zero,) * tableau.rows, tuple(eps), (zero,) * tableau.rows)
        denoised, state = x_0 - state.schedule.sigmas[k] * velocity, replace(state, index=k)
    else:
        stages = carry.stages
        denoised = state.pending[0] - state.pending[1] * velocity  # (the model saw the stage's sigma as float32)
    carry, x_next, stages = _stage(carry, stages, denoised, eta)
    if stages is not None:  # (the next stage's model call)
        pending = (stages.xs[stages.row], stages.levels[3][stages.row].float())
        return x, replace(state, carry=replace(carry, stages=stages), pending=pending)
    if i == carry.loop_steps - 1 and carry.denoise_at_end:  # (sigma_min was put before the final 0)
        x_next = _denoised(carry, x_next, carry.eps)
    return x_next.to(velocity.dtype), replace(state, carry=carry, pending=None)


def _stage(carry: Carry, stages: Stages, denoised: torch.Tensor, eta: float):
    """The model's output at stage ``stages.row``: the next stage's point (substep noise and bongmath as RES4LYF
    adds them), or at the step's end its sample (step noise added): (carry, the step's sample or None, the stages
    awaiting the next call or None)."""
    r, (sigma, sigma_next, h, subs, tableau), x_0 = stages.row, stages.levels, stages.x_0
    xs, eps, data = list(stages.xs), list(stages.eps), list(stages.data)
    eps[r], data[r] = _eps(x_0, xs[r], denoised, sigma, subs[r])
    sub_next = subs[r + 1 + tableau.recycled]
    down, up_eta = sub_next, 0.0
    if sub_next > 0 and r < tableau.rows - 1 - tableau.recycled:  # (a substep inside the step: noised)
        down, up_eta = _hard(sub_next, 0.0)[1], _hard(sub_next, eta)[0]
    h_new = h * _h(down, sigma) / _h(sub_next, sigma) if _h(sub_next, sigma) != 0 else h
    point = x_0 + h_new * _weighted(tableau.weights(r + 1 + tableau.recycled), eps)
    if sigma - down > 0:
        point = _along(x_0, point, sigma, down, sub_next)
    substep_noise = carry.substep_noise
    if not (up_eta == 0 or sub_next == 0):
        point, substep_noise = _noised(x_0, point, sigma, sub_next, eta, substep_noise)
    xs[r + 1] = point.float()
    carry = replace(carry, substep_noise=substep_noise)
    if subs[r] > carry.sigma_min and h < 1.0 / 2 and sigma > 0.03 and r < tableau.rows - 1 and not tableau.recycled:
        for _ in range(BONG_ROUNDS):  # (bongmath: the step's start, and the stages before, back onto its path)
            x_0 = xs[r + 1] - h * _weighted(tableau.a[r + 1], eps)
            for j in range(r + 1):
                xs[j] = (x_0 + h * _weighted(tableau.a[j], eps)).float()
            for j in range(r + 1):
                eps[j], _ = _eps(x_0, xs[j], data[j], sigma, subs[j])
    if r + 1 < tableau.calls:
        return carry, None, Stages(r + 1, stages.levels, x_0, tuple(xs), tuple(eps), tuple(data))
    x_next = _along(x_0, xs[tableau.calls], sigma, _hard(sigma_next, 0.0)[1], sigma_next)
    step_eps = (x_0 - x_next) / (sigma - sigma_next)
    step_noise = carry.step_noise
    if eta != 0 and _hard(sigma_next, eta)[0] != 0 and sigma_next != 0:
        x_next, step_noise = _noised(x_0, x_next, sigma, sigma_next, eta, step_noise)
    carry = replace(carry, step_noise=step_noise, sample=x_next, eps=step_eps, data=data[0], stages=None)
    return carry, x_next, None


def _denoised(carry: Carry, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``x - sigma_min eps``: ComfyUI's denoised output of a flow model at its smallest sigma."""
    return x - eps * carry.sigma_min.view((1,) * x.ndim).to(x).view(())


def needs_model(state: SolverState, index: int) -> bool:
    """Whether step ``index`` of a call takes the model's output: not where the call's last sigma was the model's
    smallest already (RES4LYF makes no call there: the step is its denoise alone)."""
    start = index if state.index is None else state.start
    steps = state.carry.steps if state.carry is not None else _laid_out(state, start)[2]
    return index - start < steps


def _sampler(method: str, form: str):
    def step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
        return _step(state, velocity, x, index, method, ETA[form])

    return step


RES4LYF_STEPS = {f"{method}{form}": (_sampler(method, form), *METHODS[method]) for method in METHODS for form in ETA}
