"""Samplers: a registry from a name to a factory that readies a scheduler for ``n`` steps.

Every factory has the same signature,
``(train_scheduler, num_inference_steps, latent_shape) -> Sampler``, where ``train_scheduler`` is
the scheduler the model was trained with (``LatentDiffusionModel.make_scheduler()``: a MONAI
``DDPMScheduler`` or ``RFlowScheduler``) and ``latent_shape`` is ``(C, *spatial)`` of the latents
(rectified flow's resolution-dependent timestep shift needs it).
The schedulers themselves come from MONAI and diffusers; this module only maps the training
schedule onto them and gives them one calling convention (``Sampler``) so the synthesis loop in
``synthesizer.py`` reads the same for all of them.

==========  ==========================================  ==============================
name        scheduler                                    needs a model trained as
==========  ==========================================  ==============================
``ddpm``    MONAI ``DDPMScheduler`` (ancestral)          ``ddpm`` (noise schedule)
``ddim``    MONAI ``DDIMScheduler`` (eta = 0)            ``ddpm``
``dpm++``   diffusers ``DPMSolverMultistepScheduler``   ``ddpm``
``rflow``   MONAI ``RFlowScheduler`` (Euler)             ``rflow`` (rectified flow)
==========  ==========================================  ==============================

Two choices worth knowing:

* **Respacing.** MONAI's ``DDPMScheduler.step`` takes the previous timestep to be ``t - 1``,
  which is only right when sampling with all ``num_train_timesteps`` steps; its ``DDIMScheduler``
  steps back by ``T // n``, which differs from its own ``linspace`` timesteps when ``n`` does
  not divide ``T``. So DDPM and DDIM run on the training schedule *respaced* to the chosen
  timesteps (Nichol & Dhariwal 2021, sec. 4): a MONAI scheduler with ``n`` training steps whose
  ``alphas_cumprod`` are the training ones at those timesteps. Every step is then exact, and with
  ``n = T`` it is the plain schedule.
* **No clipping.** MONAI clips the predicted ``x0`` to ``[-1, 1]`` by default. Latents are scaled
  to unit variance, not bounded, so clipping would distort them: it is off.

Stochastic samplers (``ddpm``) draw each item's step noise from that item's own generator, so
a sample does not depend on the batch it was generated in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from diffusers import DPMSolverMultistepScheduler
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedules, RFlowScheduler
from monai.networks.schedulers.scheduler import Scheduler

from medsynth.errors import InputError
from medsynth.limits import check_steps

# Model kinds, as in ModelConfig.scheduler["kind"].
VP_KIND = "ddpm"  # variance-preserving noise schedule (epsilon / v / sample prediction)
RFLOW_KIND = "rflow"  # rectified flow (velocity prediction)

# The sampler used when none is named, per model kind.
DEFAULT_SAMPLER = {VP_KIND: "dpm++", RFLOW_KIND: "rflow"}


@NoiseSchedules.add_def("medsynth_respaced", "A training schedule restricted to a subset of its timesteps")
def _respaced_schedule(
    num_train_timesteps: int, alphas_cumprod: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(betas, alphas, alphas_cumprod) whose cumulative products are the given ones (ascending time)."""
    acp = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
    if acp.shape != (num_train_timesteps,):
        raise ValueError(f"need {num_train_timesteps} alphas_cumprod values, got shape {tuple(acp.shape)}")
    alphas = acp / torch.cat([acp.new_ones(1), acp[:-1]])
    return 1.0 - alphas, alphas, acp


class Sampler(ABC):
    """A scheduler readied for ``n`` steps, behind the one calling convention of the loop.

    Attributes:
        name: registry name.
        timesteps: ``(n,)`` model time fed to the UNet at step ``i`` (descending).

    Example:
        >>> s = make_sampler("ddim", model.make_scheduler(), "ddpm", 20, model.latent_shape)  # doctest: +SKIP
        >>> for i, t in enumerate(s.timesteps):                           # doctest: +SKIP
        ...     z = s.step(unet(z, t), i, z, generators)
    """

    name: str
    timesteps: torch.Tensor

    def begin(self, index: int) -> None:  # noqa: B027  (a hook: most samplers need nothing here)
        """Start at step ``index`` instead of 0 (image-to-image); call before ``add_noise``/``step``."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        """Noise clean latents ``x0`` to the level the sampler expects at step ``index``."""

    @abstractmethod
    def step(
        self, model_output: torch.Tensor, index: int, sample: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        """Advance ``sample`` from step ``index`` to ``index + 1``; ``generators``: one per batch item."""


class MonaiSampler(Sampler):
    """MONAI DDPM/DDIM on a respaced schedule: step ``i`` is respaced time ``n - 1 - i``."""

    def __init__(
        self, name: str, scheduler: DDPMScheduler | DDIMScheduler, model_timesteps: torch.Tensor, stochastic: bool
    ) -> None:
        self.name = name
        self.scheduler = scheduler
        self.timesteps = model_timesteps
        self.stochastic = stochastic
        # Python ints: indexing MONAI's tables with them needs no tensor ops per step.
        self._t = [int(t) for t in scheduler.timesteps]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        t = torch.full((x0.shape[0],), self._t[index], dtype=torch.long, device=x0.device)
        return self.scheduler.add_noise(x0, noise, t)

    def step(
        self, model_output: torch.Tensor, index: int, sample: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        t = self._t[index]
        if not self.stochastic:
            return self.scheduler.step(model_output, t, sample)[0]
        # MONAI draws a step's noise for the whole batch from one generator; stepping each item
        # with its own generator keeps a sample independent of the batch it is in. The step is
        # elementwise, so this costs little next to the UNet call.
        return torch.cat(
            [
                self.scheduler.step(model_output[j : j + 1], t, sample[j : j + 1], generator=g)[0]
                for j, g in enumerate(generators)
            ]
        )


class DiffusersSampler(Sampler):
    """A diffusers multistep scheduler (its step counter tracks ``index``)."""

    def __init__(self, name: str, scheduler: DPMSolverMultistepScheduler) -> None:
        self.name = name
        self.scheduler = scheduler
        self.timesteps = scheduler.timesteps
        # Setting the begin index up front also spares diffusers its timestep search (a host sync).
        scheduler.set_begin_index(0)

    def begin(self, index: int) -> None:
        self.scheduler.set_begin_index(index)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        t = self.timesteps[index : index + 1].expand(x0.shape[0])
        return self.scheduler.add_noise(x0, noise, t)

    def step(
        self, model_output: torch.Tensor, index: int, sample: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        return self.scheduler.step(model_output, self.timesteps[index], sample, return_dict=False)[0]


class RFlowSampler(Sampler):
    """MONAI's rectified-flow Euler steps from ``timesteps[i]`` to ``timesteps[i + 1]`` (then 0)."""

    def __init__(self, scheduler: RFlowScheduler) -> None:
        self.name = "rflow"
        self.scheduler = scheduler
        self.timesteps = scheduler.timesteps
        values = [t.item() for t in scheduler.timesteps]
        self._t = values
        self._next = [*values[1:], 0]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        t = torch.full((x0.shape[0],), self._t[index], dtype=self.timesteps.dtype, device=x0.device)
        return self.scheduler.add_noise(x0, noise, t)

    def step(
        self, model_output: torch.Tensor, index: int, sample: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        return self.scheduler.step(model_output, self._t[index], sample, self._next[index])[0]


# --- the registry ---------------------------------------------------------------------------

SamplerFactory = Callable[[Scheduler, int, Sequence[int]], Sampler]


@dataclass(frozen=True)
class SamplerEntry:
    """A registered sampler: its factory and the model kind it needs."""

    factory: SamplerFactory
    kind: str
    description: str


SAMPLERS: dict[str, SamplerEntry] = {}


def register(name: str, *, kind: str) -> Callable[[SamplerFactory], SamplerFactory]:
    """Add a factory to ``SAMPLERS`` under ``name``; its docstring is the description."""

    def deco(factory: SamplerFactory) -> SamplerFactory:
        SAMPLERS[name] = SamplerEntry(factory, kind, (factory.__doc__ or "").strip().splitlines()[0])
        return factory

    return deco


def _respaced(
    train: Scheduler, n: int, cls: type[DDPMScheduler] | type[DDIMScheduler], **kwargs: Any
) -> tuple[DDPMScheduler | DDIMScheduler, torch.Tensor]:
    """A MONAI scheduler of class ``cls`` on ``train``'s schedule respaced to ``n`` timesteps."""
    T = train.num_train_timesteps
    # MONAI's own spacing (linspace from T-1 to 0), so the UNet sees the timesteps MONAI would use.
    model_t = torch.linspace(T - 1, 0, n).round().long()
    sched = cls(
        num_train_timesteps=n,
        schedule="medsynth_respaced",
        alphas_cumprod=train.alphas_cumprod[model_t.flip(0)],
        # Every MONAI noise scheduler sets prediction_type (a str) in its __init__; the base class
        # does not declare it, so nn.Module's __getattr__ typing would claim a Tensor.
        prediction_type=cast(str, train.prediction_type),
        clip_sample=False,
        **kwargs,
    )
    sched.set_timesteps(n)
    return sched, model_t


@register("ddpm", kind=VP_KIND)
def ddpm(train: Scheduler, num_inference_steps: int, latent_shape: Sequence[int]) -> Sampler:
    """Ancestral sampling, Ho et al. 2020 (arXiv:2006.11239), respaced as Nichol & Dhariwal 2021 (arXiv:2102.09672)."""
    sched, model_t = _respaced(train, num_inference_steps, DDPMScheduler, variance_type="fixed_small")
    return MonaiSampler("ddpm", sched, model_t, stochastic=True)


@register("ddim", kind=VP_KIND)
def ddim(train: Scheduler, num_inference_steps: int, latent_shape: Sequence[int]) -> Sampler:
    """Deterministic DDIM (eta = 0), Song et al. 2021 (arXiv:2010.02502)."""
    sched, model_t = _respaced(train, num_inference_steps, DDIMScheduler, set_alpha_to_one=True)
    return MonaiSampler("ddim", sched, model_t, stochastic=False)


@register("dpm++", kind=VP_KIND)
def dpmpp(train: Scheduler, num_inference_steps: int, latent_shape: Sequence[int]) -> Sampler:
    """DPM-Solver++(2M), Lu et al. 2022 (arXiv:2211.01095), through diffusers."""
    # The training betas are passed as they are, so any MONAI schedule (linear, scaled-linear,
    # cosine, custom) maps exactly; diffusers' own schedule names are not needed.
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=train.num_train_timesteps,
        trained_betas=train.betas.detach().cpu().numpy(),
        prediction_type=str(train.prediction_type),
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="linspace",
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    sched.set_timesteps(num_inference_steps)
    return DiffusersSampler("dpm++", sched)


@register("rflow", kind=RFLOW_KIND)
def rflow(train: Scheduler, num_inference_steps: int, latent_shape: Sequence[int]) -> Sampler:
    """Rectified-flow Euler integration, Liu et al. 2023 (arXiv:2209.03003), MONAI RFlowScheduler."""
    # A fresh scheduler with the training one's settings: set_timesteps mutates it.
    if not isinstance(train, RFlowScheduler):
        raise TypeError(f"rflow sampling needs a model trained with RFlowScheduler, not {type(train).__name__}")
    sched = RFlowScheduler(
        num_train_timesteps=train.num_train_timesteps,
        use_discrete_timesteps=train.use_discrete_timesteps,
        sample_method=train.sample_method,
        use_timestep_transform=train.use_timestep_transform,
        transform_scale=train.transform_scale,
        steps_offset=train.steps_offset,
        base_img_size_numel=train.base_img_size_numel,
        spatial_dim=train.spatial_dim,
    )
    numel = int(torch.tensor(list(latent_shape[1:])).prod())
    sched.set_timesteps(num_inference_steps, input_img_size_numel=numel)
    return RFlowSampler(sched)


def available_samplers(kind: str | None = None) -> list[str]:
    """Registered sampler names, optionally only those for a model ``kind``."""
    return [name for name, e in SAMPLERS.items() if kind is None or e.kind == kind]


def check_sampler(name: str, kind: str) -> SamplerEntry:
    """The registry entry for ``name``, or an ``InputError`` naming the allowed samplers.

    Raises:
        InputError: unknown name, or a sampler for another model kind (e.g. ``rflow`` on a DDPM model).
    """
    entry = SAMPLERS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise InputError(
            f"sampler {name!r} is unknown; choose one of {available_samplers(kind)} for this model "
            f"(all samplers: {available_samplers()})"
        )
    if entry.kind != kind:
        raise InputError(
            f"sampler {name!r} needs a model trained as {entry.kind!r}, but this model was trained as "
            f"{kind!r}; choose one of {available_samplers(kind)}"
        )
    return entry


def make_sampler(
    name: str, train: Scheduler, kind: str, num_inference_steps: int, latent_shape: Sequence[int]
) -> Sampler:
    """A ready ``Sampler`` named ``name`` for a model trained with ``train`` (kind ``kind``).

    Args:
        name: a key of ``SAMPLERS``.
        train: the model's training scheduler (``model.make_scheduler()``).
        kind: ``"ddpm"`` or ``"rflow"`` (``model.config.scheduler["kind"]``).
        num_inference_steps: number of UNet evaluations (one per step).
        latent_shape: ``(C, *spatial)`` of the latents.

    Raises:
        InputError: unknown sampler, wrong kind, or steps out of range.
    """
    entry = check_sampler(name, kind)
    steps = check_steps(num_inference_steps, train.num_train_timesteps)
    return entry.factory(train, steps, tuple(latent_shape))
