"""Stage 2: conditioned diffusion in the autoencoder's latent space.

The latents of the training set are encoded once (posterior mean and sigma) with the
trained autoencoder; each step draws ``z = mu + sigma * eps``, scales it by
``scale_factor = 1 / std(z)`` (computed once over the training set), noises it, and regresses
the UNet output on the target of the configured objective:

* ``ddpm`` + ``epsilon``: the noise; ``ddpm`` + ``v_prediction``: ``scheduler.get_velocity``;
* ``rflow``: the flow velocity ``z0 - noise`` (MONAI ``RFlowScheduler`` convention, where
  ``x_t = (1 - t/T) z0 + (t/T) noise``).

Condition dropout for classifier-free guidance: with probability ``cond_drop`` both tokens are
replaced by their null embeddings, and each token is also dropped alone with ``token_drop``.
The UNet and the conditioner are trained together and averaged together in the EMA.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler, Scheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medsynth.models.conditioning import Conditioner
from medsynth.models.ldm import LatentDiffusionModel
from medsynth.seeding import torch_generator
from medsynth.training.config import Stage2Config
from medsynth.training.distributed import BatchOrder, balanced_items, class_keys, mean_across_ranks, wrap
from medsynth.training.loop import RunContext, StageSpec, make_ema, save_grid_png

Labels = Sequence[str | Sequence[str]]


class Denoiser(nn.Module):
    """Conditioner + UNet as one module, so that DDP and the EMA see both."""

    def __init__(self, unet: nn.Module, conditioner: Conditioner) -> None:
        super().__init__()
        self.unet = unet
        self.conditioner = conditioner

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        pathologies: Labels,
        modalities: Sequence[str],
        drop_pathology: torch.Tensor | None = None,
        drop_modality: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ctx = self.conditioner(pathologies, modalities, drop_pathology, drop_modality)
        return self.unet(z_t, timesteps=t, context=ctx)


@torch.no_grad()
def encode_dataset(model: LatentDiffusionModel, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior ``(mu, sigma)`` of every image, unscaled, with the autoencoder in eval mode."""
    ae = model.autoencoder
    if not len(x):
        shape = (0, *model.latent_shape)
        return torch.zeros(shape, device=x.device), torch.ones(shape, device=x.device)
    was_training = ae.training
    ae.eval()
    mus, sigmas = [], []
    for i in range(0, len(x), batch_size):
        mu, sigma = ae.encode(x[i : i + batch_size])
        mus.append(mu)
        sigmas.append(sigma)
    ae.train(was_training)
    return torch.cat(mus), torch.cat(sigmas)


def compute_scale_factor(mu: torch.Tensor, sigma: torch.Tensor, seed: int) -> float:
    """``1 / std`` of sampled latents over the training set (Rombach et al. 2022, sec. 4.3 / app. G)."""
    g = torch_generator(seed, "scale_factor", device=mu.device)
    z = mu + sigma * torch.randn(mu.shape, generator=g, device=mu.device, dtype=mu.dtype)
    return float(1.0 / z.float().std())


def sample_train_timesteps(
    model: LatentDiffusionModel, n: int, g: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Uniform training timesteps from ``g`` (RFlowScheduler's own sampler uses the global RNG)."""
    cfg = model.config.scheduler
    T = int(cfg["num_train_timesteps"])
    if cfg["kind"] == "rflow" and not cfg.get("use_discrete_timesteps", True):
        return torch.rand(n, generator=g, device=device) * T
    return torch.randint(0, T, (n,), generator=g, device=device).long()


def training_target(
    model: LatentDiffusionModel, scheduler: Scheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the UNet regresses on, for the model's objective."""
    cfg = model.config.scheduler
    if cfg["kind"] == "rflow":
        return z0 - noise
    if cfg["prediction_type"] == "v_prediction":
        return scheduler.get_velocity(z0, noise, t)
    return noise


@torch.no_grad()
def preview_samples(
    model: LatentDiffusionModel,
    denoiser: Denoiser,
    pathologies: Labels,
    modalities: Sequence[str],
    *,
    steps: int,
    guidance: float,
    seed: int,
    decode: bool = True,
) -> torch.Tensor:
    """A few guided samples for the training previews (deterministic DDIM, or Euler for rflow).

    The full samplers live in ``medsynth.sampling``; this small loop only shows progress (and
    makes fine-tuning's prior-preservation latents, ``decode=False``: scaled latents).
    """
    device = next(denoiser.parameters()).device
    n = len(pathologies)
    cfg = model.config.scheduler
    g = torch_generator(seed, "preview", device=device)
    z = torch.randn((n, *model.latent_shape), generator=g, device=device)
    sched: RFlowScheduler | DDIMScheduler
    if cfg["kind"] == "rflow":
        sched = cast(RFlowScheduler, model.make_scheduler())  # SCHEDULER_KINDS["rflow"] makes one
        sched.set_timesteps(steps, device=device, input_img_size_numel=int(torch.tensor(model.latent_shape[1:]).prod()))
    else:
        extra = {} if cfg["schedule"] == "cosine" else {"beta_start": cfg["beta_start"], "beta_end": cfg["beta_end"]}
        sched = DDIMScheduler(
            num_train_timesteps=int(cfg["num_train_timesteps"]),
            schedule=cfg["schedule"],
            prediction_type=cfg["prediction_type"],
            clip_sample=False,
            **extra,
        )
        sched.set_timesteps(steps, device=device)
    cond = denoiser.conditioner(pathologies, modalities)
    ctx = torch.cat([denoiser.conditioner.null(n), cond])
    timesteps = list(sched.timesteps)
    for i, t in enumerate(timesteps):
        tt = torch.full((2 * n,), int(t), device=device, dtype=torch.long)
        out_u, out_c = denoiser.unet(torch.cat([z, z]), timesteps=tt, context=ctx).chunk(2)
        out = out_u + guidance * (out_c - out_u)
        if isinstance(sched, RFlowScheduler):
            nxt = timesteps[i + 1] if i + 1 < len(timesteps) else None
            z, _ = sched.step(out, t, z, nxt)
        else:
            z, _ = sched.step(out, t, z)
    return model.decode(z) if decode else z


def build_stage2(
    model: LatentDiffusionModel,
    train: tuple[torch.Tensor, torch.Tensor, Labels, Sequence[str]],
    val: tuple[torch.Tensor, torch.Tensor, Labels, Sequence[str]],
    cfg: Stage2Config,
    run: RunContext,
    *,
    name: str = "stage2",
    param_groups: list[dict[str, Any]] | None = None,
    prior: tuple[torch.Tensor, torch.Tensor, Labels, Sequence[str]] | None = None,
    prior_weight: float = 1.0,
    prior_batch_size: int | None = None,
) -> tuple[StageSpec, Denoiser]:
    """The diffusion stage as a ``StageSpec``; also returns the EMA denoiser (weights to ship).

    Args:
        model: the model, with a trained autoencoder and ``config.scale_factor`` set.
        train, val: ``(mu, sigma, pathologies, modalities)``: unscaled latent posteriors and labels.
        name: the stage's name (checkpoint folder, fingerprint key); fine-tuning uses its own.
        param_groups: AdamW parameter groups (default: every parameter of UNet and conditioner);
            fine-tuning passes only what it trains.
        prior: like ``train``, a second set whose loss is added at ``prior_weight`` every step
            (DreamBooth's prior preservation; ``prior_batch_size`` items a micro-batch).
    """
    denoiser = Denoiser(model.unet, model.conditioner)
    wrapped = wrap(denoiser, run.dist)
    ema = make_ema(denoiser, cfg.ema_decay)
    groups = param_groups if param_groups is not None else [{"params": list(denoiser.parameters())}]
    trained = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = model.make_scheduler()
    mu, _sigma, paths, mods = train
    items = balanced_items(class_keys(paths, mods)) if cfg.balanced else None
    order = BatchOrder(len(mu), cfg.batch_size, cfg.grad_accum, run.dist, seed=run.seed + 1, items=items)
    prior_order = None
    if prior is not None and len(prior[0]):
        pb = prior_batch_size or cfg.batch_size
        prior_order = BatchOrder(len(prior[0]), pb, cfg.grad_accum, run.dist, seed=run.seed + 2)
    sf = model.scale_factor

    def loss_on(net: nn.Module, idx: Sequence[int], data: tuple, g: torch.Generator, drop: bool) -> torch.Tensor:
        m, s, p, mo = data
        b = len(idx)
        z0 = (m[idx] + s[idx] * torch.randn(m[idx].shape, generator=g, device=run.device)) * sf
        noise = torch.randn(z0.shape, generator=g, device=run.device)
        t = sample_train_timesteps(model, b, g, run.device)
        z_t = scheduler.add_noise(z0, noise, t)
        drop_p = drop_m = None
        if drop:
            both = torch.rand(b, generator=g, device=run.device) < cfg.cond_drop
            drop_p = both | (torch.rand(b, generator=g, device=run.device) < cfg.token_drop)
            drop_m = both | (torch.rand(b, generator=g, device=run.device) < cfg.token_drop)
        with run.autocast():
            pred = net(z_t, t, [p[i] for i in idx], [mo[i] for i in idx], drop_p, drop_m)
        return F.mse_loss(pred.float(), training_target(model, scheduler, z0, noise, t).float())

    def train_step(step: int) -> dict[str, float]:
        wrapped.train()
        opt.zero_grad(set_to_none=True)
        total = prior_total = 0.0
        for k in range(cfg.grad_accum):
            g = torch_generator(run.seed, name, step, k, run.dist.rank, device=run.device)
            skip_sync = k < cfg.grad_accum - 1 and hasattr(wrapped, "no_sync")
            with cast(DistributedDataParallel, wrapped).no_sync() if skip_sync else nullcontext():
                loss = loss_on(wrapped, order(step, k), train, g, drop=True)
                total += float(loss.detach()) / cfg.grad_accum
                if prior_order is not None and prior is not None:
                    prior_loss = loss_on(wrapped, prior_order(step, k), prior, g, drop=True)
                    prior_total += float(prior_loss.detach()) / cfg.grad_accum
                    loss = loss + prior_weight * prior_loss
                run.backward(loss / cfg.grad_accum)
        run.step(opt, trained, cfg.grad_clip)
        run.scaler.update()
        return {"mse": total, **({"prior_mse": prior_total} if prior_order is not None else {})}

    @torch.no_grad()
    def validate() -> float:
        net = ema.module
        net.eval()
        vm = val[0]
        mine = list(range(run.dist.rank, len(vm), run.dist.world_size))
        total, n = 0.0, 0
        # Fixed noise and timesteps, so successive validations are comparable.
        g = torch_generator(run.seed, f"{name}-val", run.dist.rank, device=run.device)
        for i in range(0, len(mine), cfg.batch_size):
            idx = mine[i : i + cfg.batch_size]
            total += float(loss_on(net, idx, val, g, drop=False)) * len(idx)
            n += len(idx)
        return mean_across_ranks(total / max(n, 1), run.dist)

    @torch.no_grad()
    def preview(step: int, path: Path) -> None:
        classes = [(p, m) for m in model.modalities for p in model.pathologies]
        imgs = preview_samples(
            model,
            cast(Denoiser, ema.module),
            [p for p, _ in classes],
            [m for _, m in classes],
            steps=cfg.preview_steps,
            guidance=cfg.preview_guidance,
            seed=run.seed,
        )
        save_grid_png(imgs, path, ncol=len(model.pathologies))

    spec = StageSpec(
        name=name,
        steps=cfg.steps,
        modules={"denoiser": denoiser},
        optimizers={"denoiser": opt},
        base_lrs={"denoiser": cfg.lr},
        warmup_steps=cfg.warmup_steps,
        min_lr_ratio=cfg.min_lr_ratio,
        train_step=train_step,
        ema=ema,
        ema_source=denoiser,
        validate=validate if len(val[0]) else None,
        preview=preview,
    )
    return spec, cast(Denoiser, ema.module)  # the EMA's copy of the denoiser
