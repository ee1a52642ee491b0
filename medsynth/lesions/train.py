"""Training the lesion model on lesion crops, through the shared step loop (``training.loop``).

Each step draws a class-balanced batch of examples (``BatchOrder`` over ``balanced_items``, so
ten CT nodules are seen as often as three hundred MR masses), augments each crop with its own
drawn ``AugmentParams``, noises the whole crop and regresses the UNet output on the objective's
target (``training.diffusion.training_target``: epsilon, v or the flow velocity). The loss is
weighted towards the hole (the mask dilated by the model's margin): the surroundings are
given, so what the model must learn is the lesion and its edge; the rest keeps a small weight
(``outside_weight``) so the prediction stays sane over the whole crop.

Condition dropout for classifier-free guidance: with probability ``cond_drop`` both tokens are
null, and each token alone with ``token_drop`` (as stage 2 of the whole-image model).

Everything random comes from generators derived from (seed, step, micro-batch), and the loop's
checkpoints hold weights, EMA, optimizer and RNG state, so a resumed run equals an
uninterrupted one bit for bit on CPU. Why the loop is reused as it is: ``run_stage`` takes any
``StageSpec`` (modules, optimizers, a ``train_step``), so the lesion model needs no adapter,
only its own ``RunContext`` with a one-process ``DistContext``.

Example:
    >>> model, summary = train_lesion_model(examples, config, steps=2000, batch_size=16, lr=2e-4,
    ...                                     seed=0, work_dir="work/lesion")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from medsynth.digest import sha256_json
from medsynth.distributed import DistContext
from medsynth.errors import InputError
from medsynth.lesions.crops import AugmentParams, LesionExample, augment, draw_augment
from medsynth.lesions.model import LesionModel, LesionModelConfig, holes_of, lesion_inputs
from medsynth.seeding import derive_seed, numpy_rng, torch_generator
from medsynth.training.diffusion import sample_train_timesteps, training_target
from medsynth.training.distributed import BatchOrder, balanced_items
from medsynth.training.loop import RunContext, StageSpec, make_ema, run_stage

STAGE = "lesion"
Batch = tuple[torch.Tensor, torch.Tensor, list[tuple[str, ...]], list[str]]


def training_batch(
    examples: Sequence[LesionExample], indices: Sequence[int], rng: np.random.Generator | None, crop_size: Sequence[int]
) -> Batch:
    """Crops, masks and labels of ``examples[indices]``; augmented from ``rng``, plain centre crops with None.

    Returns:
        ``(crops (B, C, *crop), masks (B, *crop) bool, pathologies, modalities)``.
    """
    crops, masks = [], []
    for i in indices:
        ex = examples[i]
        params = draw_augment(rng, ex.mask.ndim) if rng is not None else AugmentParams()
        image, mask = augment(ex, params, crop_size)
        crops.append(torch.from_numpy(image))
        masks.append(torch.from_numpy(mask))
    return (
        torch.stack(crops),
        torch.stack(masks),
        [examples[i].pathology for i in indices],
        [examples[i].modality for i in indices],
    )


def weighted_loss(
    model: LesionModel,
    batch: Batch,
    g: torch.Generator,
    *,
    outside_weight: float,
    cond_drop: float = 0.0,
    token_drop: float = 0.0,
) -> torch.Tensor:
    """The hole-weighted diffusion loss of one batch (noise, timesteps and dropout drawn from ``g``).

    Weight 1 inside the hole, ``outside_weight`` elsewhere, normalised by the total weight so the
    loss scale does not depend on the lesion's size.
    """
    crops, masks, pathologies, modalities = batch
    device = model.device
    crops, masks = crops.to(device), masks.to(device)
    b = crops.shape[0]
    holes = holes_of(masks, model.config.margin)
    surroundings, mask_channel = lesion_inputs(crops, masks, holes)
    scheduler = model.make_scheduler()
    noise = torch.randn(crops.shape, generator=g, device=device)
    # training_target and sample_train_timesteps read only ``.config.scheduler``, which a lesion
    # model has in the same form as a LatentDiffusionModel.
    objective = cast(Any, model)
    t = sample_train_timesteps(objective, b, g, device)
    x_t = scheduler.add_noise(crops, noise, t)
    drop_p = drop_m = None
    if cond_drop or token_drop:
        both = torch.rand(b, generator=g, device=device) < cond_drop
        drop_p = both | (torch.rand(b, generator=g, device=device) < token_drop)
        drop_m = both | (torch.rand(b, generator=g, device=device) < token_drop)
    context = model.context(pathologies, modalities, drop_p, drop_m)
    pred = model(x_t, t, surroundings, mask_channel, context)
    target = training_target(objective, scheduler, crops, noise, t)
    w = torch.where(holes, 1.0, float(outside_weight)).unsqueeze(1).to(pred.dtype)
    return (w * (pred.float() - target.float()).pow(2)).sum() / (w.sum() * crops.shape[1])


@torch.no_grad()
def lesion_loss(
    model: LesionModel,
    examples: Sequence[LesionExample],
    *,
    seed: int = 0,
    outside_weight: float = 0.1,
    batch_size: int = 16,
) -> float:
    """Mean hole-weighted loss over plain centre crops with fixed noise: comparable between calls.

    The validation loss of training, and a quick check that a model has learned anything.
    """
    was_training = model.training
    model.eval()
    g = torch_generator(seed, "lesion-val", device=model.device)
    total, n = 0.0, 0
    for lo in range(0, len(examples), batch_size):
        idx = list(range(lo, min(lo + batch_size, len(examples))))
        batch = training_batch(examples, idx, None, model.config.crop_size)
        total += float(weighted_loss(model, batch, g, outside_weight=outside_weight)) * len(idx)
        n += len(idx)
    model.train(was_training)
    return total / max(n, 1)


def examples_digest(examples: Sequence[LesionExample]) -> str:
    """SHA-256 over every example's crop, mask and labels: a checkpoint resumes only on the same data."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(np.ascontiguousarray(ex.image, np.float32).tobytes())
        h.update(np.packbits(ex.mask).tobytes())
        h.update(f"{ex.key}|{ex.image.shape}".encode())
    return h.hexdigest()


def _check_examples(examples: Sequence[LesionExample], config: LesionModelConfig, what: str) -> None:
    if not examples and what == "examples":
        raise InputError("train_lesion_model: no lesion examples; the training data needs masks of lesion classes")
    for i, ex in enumerate(examples):
        if ex.mask.ndim != config.spatial_dims or ex.image.shape[0] != config.channels:
            raise InputError(
                f"{what}[{i}]: a {ex.mask.ndim}D crop with {ex.image.shape[0]} channel(s) does not fit a "
                f"{config.spatial_dims}D lesion model with {config.channels}"
            )
        unknown = [p for p in ex.pathology if p not in config.pathologies]
        if unknown or ex.modality not in config.modalities:
            raise InputError(
                f"{what}[{i}]: class {ex.key} is outside the lesion model's vocabulary "
                f"(pathologies {config.pathologies}, modalities {config.modalities})"
            )


def train_lesion_model(
    examples: Sequence[LesionExample],
    config: LesionModelConfig,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    work_dir: str | Path,
    val_examples: Sequence[LesionExample] = (),
    warmup_steps: int = 50,
    min_lr_ratio: float = 0.05,
    weight_decay: float = 1e-2,
    grad_clip: float | None = 1.0,
    ema_decay: float = 0.999,
    cond_drop: float = 0.1,
    token_drop: float = 0.1,
    outside_weight: float = 0.1,
    checkpoint_every: int = 250,
    val_every: int = 250,
    log_every: int = 50,
    early_stopping_patience: int = 0,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[LesionModel, dict[str, Any]]:
    """Train a ``LesionModel`` on lesion examples; checkpoints under ``work_dir/checkpoints/lesion``.

    Args:
        examples: training crops (``crops.lesion_examples``); ~10 a class is enough to start.
        config: the model to build (its crop, spacing, vocabularies, UNet and schedule).
        steps, batch_size, lr, seed: the run; the batch is drawn class-balanced, with repeats.
        work_dir: checkpoints (exact resume) go to ``work_dir/checkpoints/lesion``.
        val_examples: held-out crops for the validation loss (``lesion_loss``) and early stopping.
        ema_decay: the returned weights are the EMA's (``loop.make_ema``, with warm-up).
        cond_drop, token_drop: classifier-free dropout of both / each condition token.
        outside_weight: loss weight outside the hole (1 inside).
        resume: continue from a checkpoint made with the same settings and data.

    Returns:
        ``(model, summary)``: the EMA model in eval mode, and the loop's summary (steps done,
        last losses, best validation loss, seconds per step).

    Raises:
        InputError: no examples, examples that do not fit the config, or a checkpoint of other settings.
    """
    _check_examples(examples, config, "examples")
    _check_examples(val_examples, config, "val_examples")
    settings = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "warmup_steps": warmup_steps,
        "min_lr_ratio": min_lr_ratio,
        "weight_decay": weight_decay,
        "grad_clip": grad_clip,
        "ema_decay": ema_decay,
        "cond_drop": cond_drop,
        "token_drop": token_drop,
        "outside_weight": outside_weight,
        "val_every": val_every,
        "early_stopping_patience": early_stopping_patience,
    }
    arch = {k: v for k, v in config.to_dict().items() if k != "medsynth_version"}
    fingerprint = sha256_json(
        {
            "config": arch,
            "settings": settings,
            "examples": examples_digest(examples),
            "val": examples_digest(val_examples),
        }
    )[:16]
    dist = DistContext(device=torch.device(device))
    run = RunContext(
        dist=dist,
        work_dir=Path(work_dir),
        seed=seed,
        fingerprints={STAGE: fingerprint},
        checkpoint_every=checkpoint_every,
        val_every=val_every,
        sample_every=max(steps, 1) + 1,
        log_every=log_every,
        early_stopping_patience=early_stopping_patience,
        progress=progress,
        log=log,
    )
    # Initialisation from a derived seed inside fork_rng: the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "lesion-init"))
        model = LesionModel(config).to(run.device)
    model.train()
    ema = make_ema(model, ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    items = balanced_items([ex.key for ex in examples])
    # A class-balanced epoch may be shorter than a batch (ten examples, batch 16): repeat it.
    items = items * -(-batch_size // len(items))
    order = BatchOrder(len(examples), batch_size, 1, dist, seed=seed, items=items)

    def train_step(step: int) -> dict[str, float]:
        opt.zero_grad(set_to_none=True)
        g = torch_generator(seed, "lesion-step", step, device=run.device)
        batch = training_batch(examples, order(step, 0), numpy_rng(seed, "lesion-augment", step), config.crop_size)
        loss = weighted_loss(model, batch, g, outside_weight=outside_weight, cond_drop=cond_drop, token_drop=token_drop)
        run.backward(loss)
        run.step(opt, model.parameters(), grad_clip)
        run.scaler.update()
        return {"mse": float(loss.detach())}

    def validate() -> float:
        net = cast(LesionModel, ema.module)
        return lesion_loss(net, val_examples, seed=seed, outside_weight=outside_weight, batch_size=batch_size)

    spec = StageSpec(
        name=STAGE,
        steps=steps,
        modules={"lesion": model},
        optimizers={"lesion": opt},
        base_lrs={"lesion": lr},
        warmup_steps=warmup_steps,
        min_lr_ratio=min_lr_ratio,
        train_step=train_step,
        ema=ema,
        ema_source=model,
        validate=validate if len(val_examples) else None,
    )
    summary = run_stage(spec, run, resume=resume)
    model.load_state_dict(ema.module.state_dict())
    return model.eval(), summary
