"""Stage 1: the AutoencoderKL, trained with L1 + KL and an optional patch adversarial loss.

As in MONAI's generative tutorials: reconstruction L1, KL of the posterior to N(0, I)
weighted by ``kl_weight``, and, from step ``adv_start`` on, a least-squares patch adversarial
loss (``monai.networks.nets.PatchDiscriminator`` + ``monai.losses.PatchAdversarialLoss``)
weighted by ``adv_weight``. The tutorials' perceptual loss needs pretrained weights that
would have to be downloaded, so it is not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import cast

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medsynth.seeding import torch_generator
from medsynth.training.config import Stage1Config
from medsynth.training.distributed import BatchOrder, balanced_items, mean_across_ranks, wrap
from medsynth.training.loop import RunContext, StageSpec, save_grid_png


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, I)) summed over latent elements, averaged over the batch."""
    dims = list(range(1, z_mu.ndim))
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1.0, dim=dims)
    return kl.mean()


class _Reconstruct(nn.Module):
    """encode -> reparameterise with given noise -> decode, as one forward (what DDP wraps).

    AutoencoderKL.forward draws its reparameterisation noise from the global RNG; taking the
    noise as an argument keeps every draw on the derived per-step generators.
    """

    def __init__(self, ae: AutoencoderKL) -> None:
        super().__init__()
        self.ae = ae

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        z_mu, z_sigma = self.ae.encode(x)
        noise = torch.randn(z_mu.shape, generator=generator, device=z_mu.device, dtype=z_mu.dtype)
        return self.ae.decode(z_mu + z_sigma * noise), z_mu, z_sigma


def random_crops(x: torch.Tensor, patch: list[int] | None, g: torch.Generator) -> torch.Tensor:
    """One random crop of size ``patch`` per image, positions drawn from ``g``; ``x`` itself if None."""
    if patch is None or list(x.shape[2:]) == list(patch):
        return x
    crops = []
    for item in x:
        starts = [
            int(torch.randint(0, s - p + 1, (1,), generator=g, device=g.device)) for s, p in zip(x.shape[2:], patch)
        ]
        crops.append(item[(slice(None), *(slice(a, a + p) for a, p in zip(starts, patch)))])
    return torch.stack(crops)


def _no_sync(module: nn.Module, skip: bool) -> AbstractContextManager[None]:
    """DDP's ``no_sync`` while accumulating gradients (a plain module has none: nothing to skip)."""
    return cast(DistributedDataParallel, module).no_sync() if skip and hasattr(module, "no_sync") else nullcontext()


def build_stage1(
    ae: AutoencoderKL,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    cfg: Stage1Config,
    run: RunContext,
    classes: Sequence[str] | None = None,
) -> StageSpec:
    """The autoencoder stage as a ``StageSpec`` for ``run_stage``.

    Args:
        ae: the model's autoencoder (trained in place).
        train_x, val_x: normalised images ``(N, C, *size)`` on the run's device.
        classes: each training image's class (``"pathology/modality"``), for ``cfg.balanced``.
    """
    dims = train_x.ndim - 2
    recon_w = wrap(_Reconstruct(ae), run.dist)
    items = None
    if cfg.balanced:
        if classes is None:
            raise ValueError("stage1.balanced needs the training images' classes")
        items = balanced_items(classes)
    order = BatchOrder(len(train_x), cfg.batch_size, cfg.grad_accum, run.dist, seed=run.seed, items=items)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    modules: dict[str, nn.Module] = {"autoencoder": ae}
    optimizers: dict[str, torch.optim.Optimizer] = {"autoencoder": opt}
    base_lrs = {"autoencoder": cfg.lr}
    disc_w = None
    adv = PatchAdversarialLoss(criterion="least_squares")
    if cfg.adv_weight > 0:
        disc = PatchDiscriminator(
            spatial_dims=dims,
            channels=cfg.disc_channels,
            in_channels=train_x.shape[1],
            num_layers_d=cfg.disc_layers,
            norm="INSTANCE",  # batch statistics would differ between ranks and between batch sizes
        ).to(run.device)
        disc_w = wrap(disc, run.dist)
        modules["discriminator"] = disc
        optimizers["discriminator"] = torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, weight_decay=0.0)
        base_lrs["discriminator"] = cfg.disc_lr

    def train_step(step: int) -> dict[str, float]:
        adv_on = disc_w is not None and step >= cfg.adv_start
        recon_w.train()
        opt.zero_grad(set_to_none=True)
        totals = {"l1": 0.0, "kl": 0.0}
        fakes, reals = [], []
        for k in range(cfg.grad_accum):
            g = torch_generator(run.seed, "stage1", step, k, run.dist.rank, device=run.device)
            x = random_crops(train_x[order(step, k)], cfg.patch_size, g)
            with _no_sync(recon_w, k < cfg.grad_accum - 1), run.autocast():
                recon, z_mu, z_sigma = recon_w(x, g)
                l1 = (recon.float() - x).abs().mean()
                kl = kl_loss(z_mu.float(), z_sigma.float())
                loss = l1 + cfg.kl_weight * kl
                if adv_on:
                    assert disc_w is not None  # adv_on implies a discriminator
                    logits = disc_w(recon.float().contiguous())[-1]
                    g_adv = adv(logits, target_is_real=True, for_discriminator=False)
                    loss = loss + cfg.adv_weight * g_adv
                    totals["g_adv"] = totals.get("g_adv", 0.0) + float(g_adv.detach()) / cfg.grad_accum
                    fakes.append(recon.detach())
                    reals.append(x)
            run.backward(loss / cfg.grad_accum)
            totals["l1"] += float(l1.detach()) / cfg.grad_accum
            totals["kl"] += float(kl.detach()) / cfg.grad_accum
        run.step(opt, ae.parameters(), cfg.grad_clip)
        if adv_on:
            assert disc_w is not None
            d_opt = optimizers["discriminator"]
            d_opt.zero_grad(set_to_none=True)  # drop the grads the generator loss left in D
            for k, (fake, real) in enumerate(zip(fakes, reals)):
                with _no_sync(disc_w, k < len(fakes) - 1), run.autocast():
                    d_fake = adv(disc_w(fake.float())[-1], target_is_real=False, for_discriminator=True)
                    d_real = adv(disc_w(real)[-1], target_is_real=True, for_discriminator=True)
                    d_loss = 0.5 * (d_fake + d_real)
                run.backward(d_loss / len(fakes))
                totals["d_adv"] = totals.get("d_adv", 0.0) + float(d_loss.detach()) / len(fakes)
            run.step(d_opt, modules["discriminator"].parameters(), cfg.grad_clip)
        run.scaler.update()
        return totals

    @torch.no_grad()
    def validate() -> float:
        ae.eval()
        shard = val_x[run.dist.rank :: run.dist.world_size]
        total, n = 0.0, 0
        for i in range(0, len(shard), cfg.batch_size):
            x = shard[i : i + cfg.batch_size]
            with run.autocast():
                recon = ae.decode(ae.encode(x)[0])
            total += float((recon.float() - x).abs().mean()) * len(x)
            n += len(x)
        ae.train()
        return mean_across_ranks(total / max(n, 1), run.dist)

    @torch.no_grad()
    def preview(step: int, path: Path) -> None:
        ae.eval()
        x = val_x[:8]
        recon = ae.decode(ae.encode(x)[0])
        ae.train()
        save_grid_png(torch.cat([x, recon]), path, ncol=len(x))

    return StageSpec(
        name="stage1",
        steps=cfg.steps,
        modules=modules,
        optimizers=optimizers,
        base_lrs=base_lrs,
        warmup_steps=cfg.warmup_steps,
        min_lr_ratio=cfg.min_lr_ratio,
        train_step=train_step,
        validate=validate if len(val_x) else None,
        preview=preview if len(val_x) else None,
    )
