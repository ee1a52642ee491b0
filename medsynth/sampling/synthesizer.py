"""``Synthesizer``: conditioned sampling from a latent diffusion model, diffusers-style.

The loop, top to bottom, for one batch:

1. draw each sample's initial latent noise from its own seed (``derive_seed(seed, i)``);
2. build the cross-attention context once: ``[null; condition]`` for classifier-free guidance;
3. for each step: one batched UNet call on ``[z; z]``, ``eps = eps_u + g (eps_c - eps_u)``,
   then the sampler's step (stochastic samplers use each sample's own generator);
4. decode the latents (whole, or slab by slab within ``max_memory``: the same result) and turn each into a ``Scan``
   in modality units (HU for CT) on the output grid (the model grid unless ``shape``/``spacing`` say otherwise), with its seed and settings in the metadata.

Because every random draw belongs to one sample, results do not depend on ``batch_size``
(beyond float rounding of batched convolutions).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medsynth.conditions import Vocabulary
from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.limits import check_guidance, check_seed, check_steps, positive_int
from medsynth.models.ldm import LatentDiffusionModel
from medsynth.sampling.grid import plan_grid, to_output_grid, work_preprocessing
from medsynth.sampling.memory import parse_memory
from medsynth.sampling.precision import autocast, check_precision
from medsynth.sampling.samplers import (
    DEFAULT_SAMPLER,
    Sampler,
    check_sampler,
    make_sampler,
)
from medsynth.sampling.tiling import check_window, decode_plan, decode_tiled, encode_tiled
from medsynth.seeding import derive_seed, torch_generator

DEFAULT_STEPS = 20

Pathology = str | Sequence[str]


def _request_seeds(num_samples: object, seed: object) -> list[int]:
    """The per-sample seeds ``derive_seed(seed, i)`` of a request for ``num_samples`` samples, checked."""
    n = positive_int("num_samples", num_samples)
    check_seed(seed)
    return [derive_seed(seed, i) for i in range(n)]


class Synthesizer:
    """Generate synthetic scans from a ``LatentDiffusionModel``.

    Args:
        model: a loaded model, or a model directory / ``"builtin:<name>"`` to load.
        device: where to sample (default: the model's device).
        max_memory: memory budget of decoding (and of encoding in ``variation``): bytes, or a
            string such as ``"4GB"`` or ``"512MiB"``; default half the free memory of ``device``
            (RAM, or GPU memory on CUDA) when the call starts. A whole decode is used when it
            fits, else the autoencoder runs slab by slab with whole-volume GroupNorm statistics,
            so the result is the same either way (``medsynth.sampling.tiling``). A budget too
            small for slabs of one latent row is refused here, naming the minimum.
        decode_window: latent rows per slab, by hand (``None``: chosen from ``max_memory``).
        shape: the output grid's shape (array order); default the model's grid. At the model's
            spacing every side must be a multiple of the autoencoder's downsampling.
        spacing: the output grid's spacing in mm; default the model's. Another spacing is
            sampled at the model's spacing over the same field of view and resampled
            (``medsynth.sampling.grid``).
        allow_fov_extrapolation: sample a field of view (shape x spacing) outside the ones the
            model was trained on (``model.trained_fov``) instead of refusing it; the scans then
            carry ``metadata["fov_extrapolated"] = True``.
        precision: ``"fp32"`` (default), or ``"bf16"``/``"fp16"`` to run the UNet under
            ``torch.autocast`` (faster on a GPU; the sampler's arithmetic and the decode stay
            float32). Outputs differ from fp32 by rounding: docs/performance.md has the measure.
        compile: run the UNet through ``torch.compile`` (the first batch pays the compilation).

    Example:
        >>> synth = Synthesizer(load_model("builtin:phantom-2d"))          # doctest: +SKIP
        >>> scans = synth(pathology="nodule", modality="CT", num_samples=16,
        ...               num_inference_steps=20, guidance_scale=3.0, sampler="dpm++",
        ...               seed=0, batch_size=16)                          # doctest: +SKIP
        >>> scans[0].metadata["seed"], scans[0].spacing                   # doctest: +SKIP
    """

    def __init__(
        self,
        model: LatentDiffusionModel | str | Path,
        *,
        device: str | torch.device | None = None,
        max_memory: int | str | None = None,
        decode_window: int | None = None,
        shape: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
        allow_fov_extrapolation: bool = False,
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        if not isinstance(model, LatentDiffusionModel):
            from medsynth.models.artifact import load_model

            model = load_model(model)
        self.device = torch.device(device) if device is not None else model.device
        self.model = model.to(self.device).eval()
        self.max_memory = parse_memory(max_memory)
        self.decode_window = check_window(decode_window)
        self.kind: str = model.config.scheduler["kind"]
        self.precision = check_precision(precision)
        self._denoise = torch.compile(model.forward) if compile else model.forward
        self.grid = plan_grid(model.config, shape, spacing, allow_fov_extrapolation=allow_fov_extrapolation)
        self._work = work_preprocessing(model, self.grid)
        self.check_budget(1)

    # -- public API ------------------------------------------------------------------------------

    def check_budget(self, batch_size: int) -> None:
        """Raise a one-line ``InputError`` if ``max_memory`` cannot decode ``batch_size`` latents.

        A budget too small for even one-row slabs is refused before sampling, not after it
        (the decode holds the batch's finished outputs too, so the need grows with the batch).
        No-op without ``max_memory`` (the free memory is only known when decoding) or with a
        hand-set ``decode_window`` (it runs as asked).
        """
        if self.max_memory is not None and self.decode_window is None:
            decode_plan(self.model, self.latent_shape, max_memory=self.max_memory, batch=batch_size)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """``(latent_channels, *spatial)`` of the latents sampled for the output grid."""
        return (self.model.latent_shape[0], *(n // self.model.downsampling for n in self.grid.work_shape))

    @property
    def default_sampler(self) -> str:
        """The sampler used when none is named: ``dpm++`` (or ``rflow`` for rectified-flow models)."""
        return DEFAULT_SAMPLER[self.kind]

    @property
    def default_guidance_scale(self) -> float:
        """The guidance used when none is named: the model's ``config.default_guidance_scale``."""
        return self.model.config.default_guidance_scale

    def __call__(
        self,
        pathology: Pathology,
        modality: str | None = None,
        *,
        num_samples: int = 1,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        seed: int = 0,
        batch_size: int = 16,
    ) -> list[Scan]:
        """``num_samples`` scans of one condition; sample ``i`` is seeded by ``derive_seed(seed, i)``.

        Args:
            pathology: a label of ``model.pathologies``, or a list of them (one scan, several findings).
            modality: a label of ``model.modalities``; may be left out for a one-modality model.
            num_samples: how many scans.
            num_inference_steps: UNet evaluations per sample (1 .. the training timesteps).
            guidance_scale: classifier-free guidance ``g`` in ``[0, 20]``; 1 = conditional only
                (one UNet pass per step), 0 = unconditional; default ``default_guidance_scale``.
            sampler: ``"ddpm"``, ``"ddim"``, ``"dpm++"`` or ``"rflow"``; default ``default_sampler``.
            seed: request seed; per-sample seeds are derived from it.
            batch_size: samples per UNet call (memory/speed only; results do not depend on it).

        Returns:
            ``num_samples`` scans on the output grid (``self.grid``), in modality units (CT in HU), with metadata
            ``pathology`` (``"|"``-joined), ``seed`` (the per-sample seed), ``sampler``, ``synthetic``.

        Raises:
            InputError: an unknown pathology, modality or sampler, or a setting out of range.
        """
        seeds = _request_seeds(num_samples, seed)
        return self.generate(
            [pathology] * len(seeds),
            [modality] * len(seeds),
            seeds,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
            batch_size=batch_size,
        )

    def generate(
        self,
        pathologies: Sequence[Pathology],
        modalities: Sequence[str | None],
        seeds: Sequence[int],
        *,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        batch_size: int = 16,
    ) -> list[Scan]:
        """One scan per ``(pathology, modality, seed)``: the low-level call with explicit per-sample seeds.

        Sample ``j`` depends only on its own condition, seed and the settings, never on the other
        items or on ``batch_size``, so a protocol runner can regenerate any case alone (pass the
        per-sample seed recorded in a scan's metadata to get that scan again).

        Raises:
            InputError: as ``__call__``; also lists of different lengths.
        """
        if not (len(pathologies) == len(modalities) == len(seeds)):
            raise InputError(
                f"generate: got {len(pathologies)} pathologies, {len(modalities)} modalities and "
                f"{len(seeds)} seeds; need one of each per sample"
            )
        if not seeds:
            raise InputError("generate: no samples requested; give at least one (pathology, modality, seed)")
        labels = [self._check_pathology(p) for p in pathologies]
        mods = [self._check_modality(m) for m in modalities]
        for s in seeds:
            check_seed(s)
        settings = self._check_settings(sampler, num_inference_steps, guidance_scale, batch_size)
        return self._sample(labels, mods, [int(s) for s in seeds], settings)

    def variation(
        self,
        scan: Scan,
        *,
        strength: float = 0.5,
        pathology: Pathology | None = None,
        modality: str | None = None,
        num_samples: int = 1,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        seed: int = 0,
        batch_size: int = 16,
    ) -> list[Scan]:
        """Image-to-image variations of ``scan`` (SDEdit, Meng et al. 2022, arXiv:2108.01073).

        The scan is resampled to the working grid (the model grid unless ``shape``/``spacing``
        were given) and normalised (``preprocessing.to_model``),
        encoded (posterior mean), noised to the level of step ``n - int(n * strength)`` and
        denoised for the remaining ``int(n * strength)`` steps under the (possibly new) condition.
        ``strength=0`` returns the autoencoder's reconstruction; ``strength=1`` is almost a fresh
        sample. The returned scans are on the **output grid** (``self.grid``: the model's spacing
        and size unless set, canonical axial orientation, centred at the origin), not on the input
        scan's grid.

        Args:
            scan: the source scan (its dimensionality must match the model's).
            strength: in ``[0, 1]``: how far from ``scan`` the variations may move.
            pathology: condition for the variations; default the scan's ``metadata["pathology"]``.
            modality: default ``scan.modality`` (a different one translates between modalities).
            num_samples, num_inference_steps, guidance_scale, sampler, seed, batch_size: as ``__call__``.

        Raises:
            InputError: a bad strength, a scan the model cannot take, or the settings of ``__call__``.
        """
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 <= strength <= 1.0:
            raise InputError(f"strength={strength!r}: expected a number in [0, 1] (0 = reconstruction, 1 = new sample)")
        if pathology is None:
            found = scan.metadata.get("pathology")
            if not found:
                raise InputError(
                    "variation: the scan has no metadata['pathology']; pass pathology= "
                    f"(one or more of {self.model.pathologies})"
                )
            pathology = str(found).split("|")
        label = self._check_pathology(pathology)
        mod = self._check_modality(modality if modality is not None else scan.modality)
        seeds = _request_seeds(num_samples, seed)
        settings = self._check_settings(sampler, num_inference_steps, guidance_scale, batch_size)
        with torch.inference_mode():
            x = self._work.to_model(scan).unsqueeze(0).to(self.device)
            z0 = encode_tiled(self.model, x, window=self.decode_window, max_memory=self.max_memory)
        n = len(seeds)
        return self._sample([label] * n, [mod] * n, seeds, settings, z0=z0, strength=strength)

    # -- the loop ------------------------------------------------------------------------------

    def _sample(
        self,
        pathologies: list[list[str]],
        modalities: list[str],
        seeds: list[int],
        settings: dict[str, Any],
        *,
        z0: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> list[Scan]:
        """One scan per item, ``settings["batch_size"]`` items per batch; ``z0``: SDEdit's source latent."""
        size = settings["batch_size"]
        self.check_budget(min(size, len(seeds)))
        scans: list[Scan] = []
        for lo in range(0, len(seeds), size):
            hi = lo + size
            scans += self._sample_batch(pathologies[lo:hi], modalities[lo:hi], seeds[lo:hi], settings, z0, strength)
        return scans

    @torch.inference_mode()
    def _sample_batch(
        self,
        pathologies: list[list[str]],
        modalities: list[str],
        seeds: list[int],
        settings: dict[str, Any],
        z0: torch.Tensor | None,
        strength: float,
    ) -> list[Scan]:
        model, device, b = self.model, self.device, len(seeds)
        sampler: Sampler = make_sampler(
            settings["sampler"], model.make_scheduler(), self.kind, settings["steps"], self.latent_shape
        )
        steps = len(sampler.timesteps)
        # SDEdit runs the last int(n * strength) steps (diffusers' img2img convention).
        start = steps - int(steps * strength) if z0 is not None else 0

        # 1. Per-sample randomness. The initial noise is drawn on the CPU, so it is the same on
        #    every device; step noise (DDPM) needs generators on the device that draws it.
        noise = torch.stack(
            [torch.randn(self.latent_shape, generator=torch_generator(s, "initial-noise")) for s in seeds]
        ).to(device)
        step_gens = [torch_generator(s, "step-noise", device=device) for s in seeds]
        if z0 is None:
            z = noise
        elif start < steps:
            sampler.begin(start)
            z = sampler.add_noise(z0.expand(b, *z0.shape[1:]), noise, start)
        else:  # strength 0: nothing to denoise
            z = z0.expand(b, *z0.shape[1:]).clone()

        # 2. Context once per batch: [null; condition] when guiding, one UNet pass when g == 1.
        g = settings["guidance_scale"]
        cond = model.context(pathologies, modalities)
        guided = g != 1.0
        context = torch.cat([model.conditioner.null(b).to(cond), cond]) if guided else cond
        timesteps = sampler.timesteps.to(device)
        if timesteps.is_floating_point():  # rectified flow without discrete timesteps
            timesteps = timesteps.float()

        # 3. Denoise. The timestep goes in as shape (1,): the UNet broadcasts its embedding over
        #    the batch (as MONAI's own inferer does), so it is computed once per step, not per item.
        for i in range(start, steps):
            t = timesteps[i : i + 1]
            with autocast(device, self.precision):
                out = self._denoise(torch.cat([z, z]) if guided else z, t, context).float()
            if guided:
                out_u, out_c = out.chunk(2)
                out = out_u + g * (out_c - out_u)
            z = sampler.step(out, i, z, step_gens)

        # 4. Decode and wrap as Scans in modality units on the output grid.
        x = self._decode(z)
        meta = {"synthetic": True, "source_format": "synthetic", "sampler": sampler.name}
        if self.grid.fov_extrapolated:
            meta["fov_extrapolated"] = True
        return [
            to_output_grid(
                self._work.from_model(x[j], modalities[j], pathology="|".join(pathologies[j]), seed=seeds[j], **meta),
                self.grid,
                model,
            )
            for j in range(b)
        ]

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return decode_tiled(self.model, z, window=self.decode_window, max_memory=self.max_memory)

    # -- argument checks (all before any work, so nothing is half done) -------------------------

    def _check_pathology(self, pathology: object) -> list[str]:
        labels = [pathology] if isinstance(pathology, str) else pathology
        if not isinstance(labels, Sequence) or isinstance(labels, str) or not labels:
            raise InputError(
                f"pathology={pathology!r}: expected a label or a non-empty list of labels from {self.model.pathologies}"
            )
        unknown = self._vocabulary.unknown_pathologies(labels)
        if unknown:
            raise InputError(unknown[0].message())
        return [str(label) for label in labels]

    def _check_modality(self, modality: object) -> str:
        if modality is None:
            if len(self.model.modalities) == 1:
                return self.model.modalities[0]
            raise InputError(f"modality is required for this model; choose one of {self.model.modalities}")
        # Modality codes are upper-case DICOM codes; Scan and the conditioner compare them so.
        unknown = self._vocabulary.unknown_modality(modality)
        if unknown is not None:
            raise InputError(unknown.message())
        return str(modality).upper()

    @property
    def _vocabulary(self) -> Vocabulary:
        return Vocabulary.of(self.model.pathologies, self.model.modalities)

    def _check_settings(
        self, sampler: str | None, steps: object, guidance_scale: object, batch_size: object
    ) -> dict[str, Any]:
        name = self.default_sampler if sampler is None else sampler
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        check_sampler(name, self.kind)
        n = check_steps(steps, int(self.model.config.scheduler["num_train_timesteps"]))
        return {
            "sampler": name,
            "steps": n,
            "guidance_scale": check_guidance(guidance_scale, self.default_guidance_scale),
            "batch_size": positive_int("batch_size", batch_size),
        }
