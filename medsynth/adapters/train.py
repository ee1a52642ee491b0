"""``finetune(config)``: base + a few labelled scans -> an adapter directory (``medsynth finetune``).

The steps: load the base (and its digest); read and split the fine-tuning CSV (patient-disjoint;
the test part is the privacy index's holdout); append the new tokens to the conditioner; optionally
fine-tune the autoencoder (training's stage 1, from the base's weights); encode the scans with the
base's latent scale; freeze everything but what the method trains; run the diffusion stage of
``medsynth train`` (``training.diffusion.build_stage2`` + ``training.loop.run_stage``: the same
optimiser, schedule, EMA, checkpoints, exact resume, progress and torchrun support), with the
base's prior samples mixed in when asked; write the adapter directory and its privacy index.

What each method trains (the autoencoder and every existing token row stay frozen):

* ``embedding``: the new token rows only (textual inversion, Gal et al. 2023);
* ``lora``: peft LoRA layers on the UNet (Hu et al. 2022) + the new rows;
* ``full``: every UNet weight + the new rows.

Old rows are kept exactly: their gradient is masked to zero and the conditioner has no weight
decay, so AdamW leaves them bit for bit as they were (and the EMA of a constant is that constant).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import torch

from medsynth.adapters.compose import attach_gate, compose, inject_lora
from medsynth.adapters.config import FinetuneConfig, load_config
from medsynth.adapters.prior import prior_latents
from medsynth.adapters.store import adapter_bytes, base_reference, save_adapted
from medsynth.data.catalog import Catalog
from medsynth.data.transforms import Preprocessing
from medsynth.distributed import barrier, init_distributed, shutdown
from medsynth.errors import ConfigErrors, InputError
from medsynth.io.atomic import atomic_write_text, write_json
from medsynth.models.artifact import load_model, model_sha256, resolve_model_path
from medsynth.models.ldm import LatentDiffusionModel, ModelConfig
from medsynth.training.autoencoder import build_stage1
from medsynth.training.checks import split_catalog
from medsynth.training.diffusion import build_stage2, encode_dataset
from medsynth.training.distributed import class_keys
from medsynth.training.loop import RunContext, run_stage
from medsynth.training.pipeline import default_intensity, load_on_grid

STAGE = "finetune"


def _check_labels(cfg: FinetuneConfig, base: LatentDiffusionModel, catalog: Catalog) -> None:
    """Every label of the CSV in the base's vocabulary or a new entry; the base's dimensionality."""
    where = str(cfg.data.labels)
    problems = []
    known_p = set(base.pathologies) | set(cfg.new_pathologies)
    known_m = set(base.modalities) | {m.upper() for m in cfg.new_modalities}
    for p in sorted(set(catalog.pathologies) - known_p):
        problems.append(
            f"{where}: pathology {p!r} is neither a base label {base.pathologies} nor in new_pathologies; add it there"
        )
    for m in sorted(set(catalog.modalities) - known_m):
        problems.append(f"{where}: modality {m!r} is neither a base modality {base.modalities} nor in new_modalities")
    if len(catalog) and catalog.spatial_dims() != base.spatial_dims:
        problems.append(f"{where}: {catalog.spatial_dims()}D scans, but the base model is {base.spatial_dims}D")
    if problems:
        raise ConfigErrors(problems)


def _adapted_config(cfg: FinetuneConfig, base: LatentDiffusionModel, base_sha: str, train: Catalog) -> ModelConfig:
    """The composed model's config: the base's, with the new labels and the ``adapter`` section."""
    pre = dict(base.config.preprocessing)
    intensity = {k: dict(v) for k, v in pre["intensity"].items()}
    for m, tok in cfg.new_modalities.items():
        intensity[m.upper()] = dict(tok.intensity) if tok.intensity is not None else default_intensity(train, m.upper())
    pre["intensity"] = intensity
    d = base.config.to_dict()
    suffix = "-".join(list(cfg.new_pathologies) + [m.upper() for m in cfg.new_modalities]) or cfg.method
    d.update(
        pathologies=[*base.pathologies, *cfg.new_pathologies],
        modalities=[*base.modalities, *(m.upper() for m in cfg.new_modalities)],
        preprocessing=pre,
        fingerprint=train.fingerprint(),
        name=cfg.name or f"{base.config.name}-{suffix}",
        adapter={
            "base": {**base_reference(cfg.base, cfg.output_dir), "sha256": base_sha, "name": base.config.name},
            "method": cfg.method,
            "scale": cfg.scale,
            "lora": cfg.lora.model_dump(mode="json") if cfg.method == "lora" else None,
            "new_pathologies": {k: {"init_from": v.init_from} for k, v in cfg.new_pathologies.items()},
            "new_modalities": {k.upper(): {"init_from": v.init_from} for k, v in cfg.new_modalities.items()},
            "train_autoencoder": cfg.train_autoencoder,
            "prior_preservation": cfg.prior_preservation.model_dump(mode="json") if cfg.prior_preservation else None,
        },
    )
    d.pop("created")
    d.pop("medsynth_version")
    return ModelConfig.from_dict(d)


def _keep_old_rows(table: torch.nn.Embedding, n_old: int) -> list[torch.Tensor]:
    """Train only the rows after the first ``n_old`` (null included): their gradient is masked to zero."""
    n_new = table.weight.shape[0] - n_old
    if n_new <= 0:
        return []
    mask = torch.zeros(table.weight.shape[0], 1, device=table.weight.device)
    mask[n_old:] = 1.0
    table.weight.requires_grad_(True)
    table.weight.register_hook(lambda g: g * mask)
    return [table.weight]


def _trainable(cfg: FinetuneConfig, model: LatentDiffusionModel, base: LatentDiffusionModel) -> list[dict[str, Any]]:
    """Freeze the model, then unfreeze (or add) what ``cfg.method`` trains; AdamW parameter groups."""
    for param in model.parameters():
        param.requires_grad_(False)
    rows = _keep_old_rows(model.conditioner.pathology_embedding, len(base.pathologies) + 1)
    rows += _keep_old_rows(model.conditioner.modality_embedding, len(base.modalities) + 1)
    unet: list[torch.Tensor] = []
    if cfg.method == "lora":
        torch.manual_seed(cfg.seed)  # peft draws LoRA's A matrices from the global generator
        inject_lora(model.unet, cfg.lora.model_dump())
        if cfg.lora.gate:
            attach_gate(model.unet, model.conditioner, len(base.pathologies) + 1, len(base.modalities) + 1)
        unet = [p for n, p in model.unet.named_parameters() if "lora_" in n]
    elif cfg.method == "full":
        unet = list(model.unet.parameters())
    for t in unet:
        t.requires_grad_(True)
    groups = []
    if unet:
        groups.append({"params": unet, "weight_decay": cfg.weight_decay})
    if rows:  # no decay: it would move the frozen rows; their own rate, as a scale of the stage's lr
        groups.append({"params": rows, "weight_decay": 0.0, "lr_scale": cfg.embedding_lr / cfg.lr})
    return groups


def _card(cfg: FinetuneConfig, model: LatentDiffusionModel, info: dict[str, Any], command: str) -> str:
    a = model.config.adapter or {}
    s = info["summary"]
    losses = ", ".join(f"{k} {v:.4f}" for k, v in (s.get("last_losses") or {}).items())
    new = ", ".join([*a["new_pathologies"], *a["new_modalities"]]) or "none"
    return f"""# {model.config.name}

Fine-tuned from `{a["base"]["id"]}` (sha256 `{a["base"]["sha256"]}`) by `medsynth finetune`; method
`{cfg.method}`{f" (rank {cfg.lora.rank}, alpha {cfg.lora.alpha}, targets {cfg.lora.target_modules})" if cfg.method == "lora" else ""};
new labels: {new}; prior preservation: {"weight " + str(cfg.prior_preservation.weight) + ", " + str(cfg.prior_preservation.samples_per_class) + " samples per base class" if cfg.prior_preservation else "off"};
autoencoder {"fine-tuned" if cfg.train_autoencoder else "frozen (the base's)"}.

Command: `{command}`. {s.get("steps_done")} steps, last losses: {losses or "n/a"};
{s.get("seconds_per_step", float("nan")):.3f} s/step on {info["device"]} ({info["world_size"]} process(es)).
Fine-tuning scans: train {info["n_train"]}, validation {info["n_val"]}, holdout {info["n_test"]}
(training file list sha256 `{model.config.fingerprint.get("file_list_sha256")}`).
Adapter weights: {info["adapter_bytes"]:,} bytes. Quality: not measured by the run.
"""


def finetune(
    config: FinetuneConfig | str | Path, *, resume: bool = True, progress: bool = True, command: str | None = None
) -> Path:
    """Fine-tune a model from a config (object or YAML path); return the adapter directory.

    Raises:
        InputError: bad config, a base that is itself an adapter, labels outside the vocabularies,
            unreadable data, a checkpoint from other settings.
    """
    if not isinstance(config, FinetuneConfig):
        command = command or f"medsynth finetune {config}"
        config = load_config(config)
    cfg = config
    command = command or "medsynth.adapters.finetune(config)"
    ctx = init_distributed(cfg.device)
    started = time.time()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        def log(msg: str) -> None:
            if ctx.is_main:
                print(msg)

        base_dir = resolve_model_path(cfg.base)
        base_sha = model_sha256(base_dir)
        base = load_model(base_dir, device=ctx.device)
        if base.config.adapter is not None:
            raise InputError(
                f"base: {cfg.base} is itself fine-tuned; `medsynth merge` it and fine-tune the merged model"
            )
        catalog = Catalog.from_csv(cfg.data.labels)
        _check_labels(cfg, base, catalog)
        train_cat, val_cat, test_cat, problems = split_catalog(cast(Any, cfg), catalog, str(cfg.data.labels))
        if 0 < len(train_cat) < cfg.batch_size:
            problems.append(f"batch_size {cfg.batch_size} is more than the {len(train_cat)} training scans; lower it")
        if problems:
            raise ConfigErrors(problems)
        work = cfg.resolved_work_dir
        run = RunContext.for_config(
            cfg,
            ctx,
            {STAGE: cfg.fingerprint(base_sha), "stage1": cfg.fingerprint(base_sha, "autoencoder")},
            progress=progress,
            log=log,
        )
        model = compose(base, _adapted_config(cfg, base, base_sha, train_cat))
        pre = Preprocessing.from_dict(model.config.preprocessing)
        train_x, train_p, train_m, _ = load_on_grid(train_cat, pre, ctx.device)
        val_x, val_p, val_m, _ = load_on_grid(val_cat, pre, ctx.device)
        prior = None
        pp = cfg.prior_preservation
        if pp is not None and pp.weight > 0:
            z, prior_p, prior_m = prior_latents(base, pp, base_sha, work, cfg.seed, ctx)
            with torch.no_grad():
                prior_imgs = model.decode(z) if cfg.train_autoencoder else None
            prior = (z / model.scale_factor, torch.zeros_like(z), prior_p, prior_m)
        if cfg.train_autoencoder:
            stage1 = build_stage1(model.autoencoder, train_x, val_x, cfg.stage1(), run, class_keys(train_p, train_m))
            run_stage(stage1, run, resume=resume)
            if prior is not None and prior_imgs is not None:  # the base's samples, in the tuned latent space
                mu_p, sigma_p = encode_dataset(model, prior_imgs, cfg.batch_size)
                prior = (mu_p, sigma_p, prior[2], prior[3])
        mu, sigma = encode_dataset(model, train_x, cfg.batch_size)
        val_mu, val_sigma = encode_dataset(model, val_x, cfg.batch_size)
        groups = _trainable(cfg, model, base)
        del base
        spec, ema = build_stage2(
            model,
            (mu, sigma, train_p, train_m),
            (val_mu, val_sigma, val_p, val_m),
            cfg.stage2(),
            run,
            name=STAGE,
            param_groups=groups,
            prior=prior,
            prior_weight=pp.weight if pp is not None else 0.0,
            prior_batch_size=pp.batch_size if pp is not None else None,
        )
        summary = run_stage(spec, run, resume=resume)
        model.unet.load_state_dict(ema.unet.state_dict())
        model.conditioner.load_state_dict(ema.conditioner.state_dict())
        model.eval()
        if ctx.is_main:
            info = {
                "summary": summary,
                "device": str(ctx.device),
                "world_size": ctx.world_size,
                "wall_minutes": (time.time() - started) / 60.0,
                "n_train": len(train_cat),
                "n_val": len(val_cat),
                "n_test": len(test_cat),
                "adapter_bytes": 0,
            }
            out = save_adapted(model, cfg.output_dir, card=_card(cfg, model, info, command))
            info["adapter_bytes"] = adapter_bytes(out)
            atomic_write_text(out / "model_card.md", _card(cfg, model, info, command))  # the card is not recorded
            write_json(work / "summary.json", info, allow_nan=True)
            log(f"adapter saved to {out} ({info['adapter_bytes']:,} bytes of weights)")
            _privacy_index(cfg, out, train_cat, test_cat if len(test_cat) else val_cat, log)
        barrier(ctx)
        return cfg.output_dir
    finally:
        shutdown(ctx)


def _privacy_index(cfg: FinetuneConfig, out: Path, train: Catalog, holdout: Catalog, log: Any) -> None:
    """The fine-tuning scans' index in ``ADAPTER/privacy``, calibrated on the CSV's holdout split."""
    from medsynth.privacy import build_index_for_model

    if not cfg.build_privacy_index:
        log("privacy index: skipped (build_privacy_index: false)")
        return
    if not len(holdout):
        log("privacy index: NOT built: no holdout scans (set data.test_fraction > 0 or a split column)")
        return
    build_index_for_model(out, train, holdout)
    log(f"privacy index of the fine-tuning scans written to {out / 'privacy'}")
