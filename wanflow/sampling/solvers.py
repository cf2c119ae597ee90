"""Flow-matching ODE solvers as step functions over explicit state.

Convention: time runs from 1 (noise) to 0 (data), ``x_sigma = (1 - sigma) x0 + sigma eps``, the model predicts
``v = eps - x0`` and the data prediction is ``x0_hat = x - sigma v``. In DPM/UniPC notation ``alpha = 1 - sigma``
and ``lambda = log(alpha) - log(sigma)`` (-inf at sigma 1, +inf at sigma 0).

Use::

    state = solver.init(schedule)
    for k, t in enumerate(schedule.timesteps):
        x, state = solver.step(state, model(x, t), x, k)

A step never mutates its state; it returns a new one. The math follows the reference schedulers (wan22.md §8):
coefficients are float32 scalars from the float32 sigmas, the last step (sigma 0) returns ``x0_hat``.

``dpmpp_2m``, ``res_multistep``, ``uni_pc``, ``uni_pc_bh2`` and ``euler_ancestral`` are ComfyUI's samplers of those
names (``sampling.comfy_solvers``): other solvers of the same ODE than the reference's ``dpm++`` and ``unipc`` (the
last a stochastic one), which ComfyUI workflows for Wan name; ``dpmpp_2m_sde``, ``dpmpp_2m_sde_heun``,
``dpmpp_3m_sde`` and their ``_gpu`` variants are its SDE samplers (``sampling.comfy_sde``), with Brownian noise;
``ipndm``, ``ipndm_v``, ``gradient_estimation`` and ``lms`` its steps on past derivatives (``sampling.comfy_adams``),
``er_sde`` its ER-SDE solver (``sampling.comfy_er_sde``), ``deis`` (``sampling.comfy_deis``), ``sa_solver`` and
``sa_solver_pece`` (``sampling.comfy_sa_solver``); its samplers of two or three model calls a step are in
``sampling.comfy_heun``, ``sampling.comfy_sde`` (``dpmpp_sde``) and ``sampling.comfy_seeds``.

``lcm`` is not an ODE solver: each step predicts the data and noises it afresh to the next sigma,
``(1 - sigma') x0_hat + sigma' eps_k`` (diffusers' ``FlowMatchLCMScheduler``, ComfyUI's ``lcm`` sampler: how
consistency- and DMD-distilled models are sampled). Its noise ``eps_k`` is ComfyUI's (``step_noise``): draw k of a
generator on the run's device seeded with the run's seed, so a seed gives one video on any number of ranks, as the
initial noise does, and a ComfyUI workflow's lcm its noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from wanflow.sampling.comfy_adams import gradient_estimation_step, ipndm_step, ipndm_v_step, lms_step
from wanflow.sampling.comfy_cfg_pp import CFG_PP_STEPS
from wanflow.sampling.comfy_deis import deis_step
from wanflow.sampling.comfy_er_sde import er_sde_step
from wanflow.sampling.comfy_heun import (
    dpm_2_ancestral_step,
    dpm_2_step,
    dpmpp_2s_ancestral_step,
    heun_step,
    heunpp2_step,
)
from wanflow.sampling.comfy_sa_solver import sa_solver_pece_step, sa_solver_step
from wanflow.sampling.comfy_sde import SDE_STEPS, TWO_CALLS
from wanflow.sampling.comfy_seeds import seeds_2_step, seeds_3_step
from wanflow.sampling.comfy_solvers import (
    dpmpp_2m_step,
    euler_ancestral_step,
    res_multistep_ancestral_step,
    res_multistep_step,
    uni_pc_bh2_step,
    uni_pc_step,
)
from wanflow.sampling.res4lyf import RES4LYF_STEPS
from wanflow.sampling.res4lyf import needs_model as res4lyf_needs_model
from wanflow.sampling.schedule import (
    Schedule,
    comfy_uni_pc_schedule,
    dpm_schedule,
    euler_schedule,
    moved_euler_schedule,
    unipc_schedule,
)
from wanflow.sampling.solver_state import SolverState, StepFn, Stepped, check_index, fresh_noise


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    """Half log-SNR of the flow path: log(alpha) - log(sigma)."""
    return torch.log(1 - sigma) - torch.log(sigma)


def euler_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """``x + (sigma_{k+1} - sigma_k) v``, in float32, cast back to the model output's dtype."""
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    x_next = x.float() + (sigmas[k + 1] - sigmas[k]) * velocity
    return x_next.to(velocity.dtype), SolverState(state.schedule, index=k)


def lcm_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """``(1 - sigma_{k+1}) x0_hat + sigma_{k+1} eps_k`` in float32 (``x0_hat`` itself at the last step), cast back to
    the model output's dtype."""
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    x0 = x.float() - sigmas[k] * velocity
    sigma_next = sigmas[k + 1]
    if sigma_next > 0:
        noise, state = fresh_noise(state, x, "lcm")
        x0 = (1 - sigma_next) * x0 + sigma_next * noise
    return x0.to(velocity.dtype), replace(state, index=k)


def _unipc_predict(sigmas: torch.Tensor, k: int, x0: tuple[torch.Tensor, ...], x: torch.Tensor, order: int):
    """UniP (bh2): sigma_k -> sigma_{k+1} from ``x`` with the data predictions ``x0`` (newest last)."""
    sigma_t, sigma_s = sigmas[k + 1], sigmas[k]
    lambda_s = _lambda(sigma_s)
    h = _lambda(sigma_t) - lambda_s
    alpha_t = 1 - sigma_t
    phi = torch.expm1(-h)  # also B(h) for bh2; -1 at the last step, where x_next = x0_hat exactly
    m0 = x0[-1]
    x_next = sigma_t / sigma_s * x - alpha_t * phi * m0
    if order == 2:
        r = (_lambda(sigmas[k - 1]) - lambda_s) / h
        x_next = x_next - alpha_t * phi * (0.5 * ((x0[-2] - m0) / r))
    return x_next.to(x.dtype)


def _unipc_correct(sigmas, k: int, x0: tuple[torch.Tensor, ...], last_sample, x0_new, order: int):
    """UniC (bh2): redo sigma_{k-1} -> sigma_k from ``last_sample`` now that ``x0_new`` (at sigma_k) is known."""
    sigma_t, sigma_s = sigmas[k], sigmas[k - 1]
    lambda_s = _lambda(sigma_s)
    h = _lambda(sigma_t) - lambda_s
    hh = -h
    alpha_t = 1 - sigma_t
    phi = torch.expm1(hh)  # = B(h)
    m0 = x0[-1]
    base = sigma_t / sigma_s * last_sample - alpha_t * phi * m0
    if order == 1:
        correction = 0.5 * (x0_new - m0)
    else:
        # Solve [[1, 1], [r, 1]] rho = [b1, b2] in closed form.
        r = (_lambda(sigmas[k - 2]) - lambda_s) / h
        g1 = phi / hh - 1
        b1 = g1 / phi
        b2 = 2 * (g1 / hh - 0.5) / phi
        rho0 = (b1 - b2) / (1 - r)
        rho1 = b1 - rho0
        correction = rho0 * ((x0[-2] - m0) / r) + rho1 * (x0_new - m0)
    return (base - alpha_t * phi * correction).to(last_sample.dtype)


def unipc_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """UniPC, bh2, order 2: corrector on every step after the first, order 1 at the first and last steps."""
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    x0_new = x - sigmas[k] * velocity  # from the uncorrected sample
    if state.last_sample is not None:
        x = _unipc_correct(sigmas, k, state.x0, state.last_sample, x0_new, state.last_order)
    order = min(2, state.schedule.num_steps - k, len(state.x0) + 1)
    x0 = (*state.x0, x0_new)[-2:]
    x_next = _unipc_predict(sigmas, k, x0, x, order)
    return x_next, SolverState(state.schedule, x0, last_sample=x, last_order=order, index=k)


def dpm_step(state: SolverState, velocity: torch.Tensor, x: torch.Tensor, index: int) -> Stepped:
    """DPM-Solver++(2M), midpoint: first order at the first and last steps. Sample in float32, output in v's dtype.

    On the official DPM++ grid sigma_0 = 1 (lambda = -inf), so the second step's correction term is 0 as well.
    """
    k = check_index(state, index)
    sigmas = state.schedule.sigmas
    x0_new = x - sigmas[k] * velocity
    sigma_t, sigma_s = sigmas[k + 1], sigmas[k]
    lambda_s = _lambda(sigma_s)
    h = _lambda(sigma_t) - lambda_s
    c = (1 - sigma_t) * (torch.exp(-h) - 1.0)
    x_next = sigma_t / sigma_s * x.float() - c * x0_new
    if state.x0 and k < state.schedule.num_steps - 1:
        r = (lambda_s - _lambda(sigmas[k - 1])) / h
        x_next = x_next - 0.5 * c * ((1.0 / r) * (x0_new - state.x0[-1]))
    x0 = (*state.x0, x0_new)[-2:]
    return x_next.to(velocity.dtype), SolverState(state.schedule, x0, index=k)


@dataclass(frozen=True)
class Solver:
    name: str
    step: StepFn  # (state, velocity, x, index) -> (x_next, state)
    order: int  # order of accuracy in the step size
    # ComfyUI's multistep samplers start afresh at the expert switch: ComfyUI runs each expert as its own sampler call
    # (a KSamplerAdvanced each), so the low-noise expert's first step has no history there
    restarts_at_switch: bool = False
    # it draws fresh noise at each step from the seed of its sampler call: given the low-noise expert's call a seed of
    # its own (ComfyUI's second KSamplerAdvanced's), it starts afresh there with it
    noised: bool = False
    model_calls: int = 1  # model calls a step, at most (heun, dpm_2: two; ``SolverState.pending`` between them)
    # its steps where no scheduler is named: (steps, shift, float_timesteps) -> Schedule; ComfyUI's samplers take the
    # grid of its simple scheduler (the same from sigma 1 where the steps divide 1000), the reference's solvers theirs
    grid: Callable[..., Schedule] = euler_schedule
    # whether step ``index`` needs the model's output at its start (state, index) -> bool; None: every step does
    needs_model: Callable[[SolverState, int], bool] | None = None
    # its steps read the unconditional prediction too (``SolverState.uncond``), which then runs at guidance 1 as well
    # (ComfyUI's CFG++ samplers)
    uncond: bool = False

    def calls_model(self, state: SolverState, index: int) -> bool:
        return self.needs_model is None or self.needs_model(state, index)

    def init(
        self, schedule: Schedule, seed: int | None = None, stop: int | None = None, shift: float | None = None
    ) -> SolverState:
        """A fresh state; ``stop``: the step this run of the solver ends before (a ComfyUI sampler call's end at the
        expert switch), None for the schedule's end; ``shift``: the model's (sa_solver's noise interval)."""
        return SolverState(schedule, seed=seed, stop=stop, shift=shift)


SOLVERS: dict[str, Solver] = {
    "unipc": Solver("unipc", unipc_step, 2, grid=unipc_schedule),
    "dpm++": Solver("dpm++", dpm_step, 2, grid=dpm_schedule),
    "euler": Solver("euler", euler_step, 1),
    "lcm": Solver("lcm", lcm_step, 1, noised=True),
    "dpmpp_2m": Solver("dpmpp_2m", dpmpp_2m_step, 2, restarts_at_switch=True),
    "res_multistep": Solver("res_multistep", res_multistep_step, 2, restarts_at_switch=True),
    "uni_pc": Solver("uni_pc", uni_pc_step, 3, restarts_at_switch=True, grid=comfy_uni_pc_schedule),
    "uni_pc_bh2": Solver("uni_pc_bh2", uni_pc_bh2_step, 3, restarts_at_switch=True, grid=comfy_uni_pc_schedule),
    "euler_ancestral": Solver("euler_ancestral", euler_ancestral_step, 1, noised=True),
    "ipndm": Solver("ipndm", ipndm_step, 4, restarts_at_switch=True),
    "ipndm_v": Solver("ipndm_v", ipndm_v_step, 4, restarts_at_switch=True),
    "er_sde": Solver("er_sde", er_sde_step, 3, restarts_at_switch=True, noised=True, grid=moved_euler_schedule),
    "gradient_estimation": Solver("gradient_estimation", gradient_estimation_step, 2, restarts_at_switch=True),
    "deis": Solver("deis", deis_step, 3, restarts_at_switch=True),
    "heun": Solver("heun", heun_step, 2, model_calls=2),
    "dpm_2": Solver("dpm_2", dpm_2_step, 2, model_calls=2),
    "dpm_2_ancestral": Solver("dpm_2_ancestral", dpm_2_ancestral_step, 2, noised=True, model_calls=2),
    "dpmpp_2s_ancestral": Solver("dpmpp_2s_ancestral", dpmpp_2s_ancestral_step, 2, noised=True, model_calls=2),
    "res_multistep_ancestral": Solver(
        "res_multistep_ancestral", res_multistep_ancestral_step, 2, restarts_at_switch=True, noised=True
    ),
    "lms": Solver("lms", lms_step, 4, restarts_at_switch=True),
    "heunpp2": Solver("heunpp2", heunpp2_step, 3, restarts_at_switch=True, model_calls=3),
    # RES4LYF's: noise seeded from the run's seed in every call (ComfyUI's torch seed: the first KSampler's), so not
    # ``noised`` (no call seed of its own)
    **{
        name: Solver(name, step, order, restarts_at_switch=True, model_calls=calls, needs_model=res4lyf_needs_model)
        for name, (step, order, calls) in RES4LYF_STEPS.items()
    },
    **{
        name: Solver(name, step, 3, restarts_at_switch=True, noised=True, model_calls=calls, grid=moved_euler_schedule)
        for name, step, calls in (("sa_solver", sa_solver_step, 1), ("sa_solver_pece", sa_solver_pece_step, 2))
    },
    **{
        f"seeds_{n}": Solver(
            f"seeds_{n}", step, n, restarts_at_switch=True, noised=True, model_calls=n, grid=moved_euler_schedule
        )
        for n, step in ((2, seeds_2_step), (3, seeds_3_step))
    },
    **{
        name: Solver(
            name,
            step,
            3 if name.startswith("dpmpp_3m") else 2,
            restarts_at_switch=True,
            noised=True,
            model_calls=2 if name in TWO_CALLS else 1,
            grid=moved_euler_schedule,
        )
        for name, step in SDE_STEPS.items()
    },
    **{
        name: Solver(name, step, order, restarts_at_switch=restarts, noised=noised, model_calls=calls, uncond=True)
        for name, (step, order, restarts, noised, calls) in CFG_PP_STEPS.items()
    },
}


REFERENCE_SOLVERS = ("unipc", "dpm++")  # the reference's own; the other names are ComfyUI's samplers


def get_solver(name: str) -> Solver:
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[name]


def get_schedule(solver: str, steps: int, shift: float, float_timesteps: bool = False) -> Schedule:
    """The steps ``solver`` takes where no scheduler is named: its grid (the reference's for its solvers);
    ``float_timesteps``: the DiT sees ``1000 * sigma`` unrounded (the step-distilled LoRAs' convention) instead of the
    reference's truncated integers."""
    return get_solver(solver).grid(steps, shift, float_timesteps)
