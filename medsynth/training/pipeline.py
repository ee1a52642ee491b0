"""``train(config)``: data -> preprocessing -> stage 1 -> stage 2 -> model directory (+ privacy index).

This is what ``medsynth train CONFIG.yaml`` runs. It works the same in one process and under
``torchrun`` (rank 0 generates data, writes checkpoints, the model directory and the
privacy index; every rank trains on its shard of each batch).

Example:
    >>> from medsynth.training import train
    >>> model_dir = train("configs/phantom-2d.yaml")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medsynth import __version__
from medsynth.data.catalog import Catalog
from medsynth.data.transforms import Preprocessing
from medsynth.distributed import DistContext, barrier, init_distributed, shutdown
from medsynth.errors import InputError
from medsynth.io.atomic import atomic_write_text, write_json
from medsynth.models.artifact import CARD_NAME, save_model
from medsynth.models.artifact import load_config as load_model_config
from medsynth.models.fov import FieldOfView
from medsynth.models.ldm import LatentDiffusionModel, ModelConfig
from medsynth.privacy import build_index_for_model
from medsynth.training import lesion_stage
from medsynth.training.autoencoder import build_stage1
from medsynth.training.checks import check_data, dataset_name
from medsynth.training.config import TrainConfig, load_config
from medsynth.training.diffusion import build_stage2, compute_scale_factor, encode_dataset
from medsynth.training.distributed import class_keys
from medsynth.training.loop import RunContext, run_stage

SPLITS_DIR = "splits"  # WORK_DIR/splits/{train,val,test,holdout}.csv: the split this run used
CT_WINDOW = {"kind": "linear", "lo": -1000.0, "hi": 1000.0}
_PERCENTILE_SCANS = 32  # scans per modality sampled for the default intensity range


def _dataset(cfg: TrainConfig, work: Path, ctx: DistContext) -> Catalog:
    """The labels.csv catalog; generates the phantoms first when the config asks for them."""
    if cfg.data.labels is not None:
        return Catalog.from_csv(cfg.data.labels)
    from medsynth.data.phantoms import phantom_dataset

    spec = cfg.data.phantoms.model_dump()  # type: ignore[union-attr]
    data_dir = work / "data"
    csv, spec_file = data_dir / "labels.csv", data_dir / "phantoms.json"
    if ctx.is_main:
        # Masks do not change the images: a folder made without them is made again with them
        # (same files, plus the masks), and one made with them serves a config without.
        old = json.loads(spec_file.read_text()) if csv.is_file() and spec_file.is_file() else None
        if old is not None and {k: v for k, v in old.items() if k != "masks"} != {
            k: v for k, v in spec.items() if k != "masks"
        }:
            raise InputError(
                f"{data_dir}: holds phantoms made with other settings ({spec_file.read_text().strip()}); "
                "use another work_dir or delete that folder"
            )
        if old is None or (spec["masks"] and not old.get("masks")):
            phantom_dataset(
                data_dir,
                dim=spec["dim"],
                count=spec["count"],
                fmt=spec["fmt"],
                seed=spec["seed"],
                size=spec["size"],
                masks=spec["masks"],
                pathologies=spec["pathologies"],
                scanner=spec["scanner"],
            )
            write_json(spec_file, spec)
    barrier(ctx)
    return Catalog.from_csv(csv)


def _preprocessing(cfg: TrainConfig, train: Catalog) -> Preprocessing:
    """The model grid: configured values, defaults derived from the training data."""
    first = train.load(0)
    size = tuple(cfg.preprocessing.size)
    spacing = cfg.preprocessing.spacing
    if spacing is None:  # keep the first scan's field of view
        spacing = [float(n * s / m) for n, s, m in zip(first.shape, first.spacing, size)]
    intensity = {m.upper(): dict(p) for m, p in cfg.preprocessing.intensity.items()}
    for modality in train.modalities:
        if modality in intensity:
            continue
        intensity[modality] = default_intensity(train, modality)
    thickness = cfg.preprocessing.slice_thickness or (first.slice_thickness if first.spatial_dims == 2 else 1.0)
    return Preprocessing(len(size), size, tuple(spacing), intensity, float(thickness))


def default_intensity(catalog: Catalog, modality: str) -> dict[str, Any]:
    """A modality's default normalisation: CT's window, else its 0.5-99.5th percentiles (rounded) in ``catalog``."""
    if modality == "CT":
        return dict(CT_WINDOW)
    idx = [i for i, r in enumerate(catalog.records) if r.modality == modality][:_PERCENTILE_SCANS]
    values = np.concatenate([catalog.load(i).array.ravel() for i in idx])
    lo, hi = np.percentile(values, [0.5, 99.5])
    return {"kind": "linear", "lo": float(np.floor(lo)), "hi": float(np.ceil(hi))}


def load_on_grid(catalog: Catalog, pre: Preprocessing, device: torch.device) -> tuple[torch.Tensor, list, list, list]:
    """Every scan on the model grid ``(N, C, *size)``, with its pathologies, modality and field of view (mm)."""
    if not len(catalog):
        return torch.zeros((0, 1, *pre.size), device=device), [], [], []
    xs, fovs = [], []
    for i in range(len(catalog)):
        scan = catalog.load(i)
        fovs.append([n * s for n, s in zip(scan.shape, scan.spacing)])
        xs.append(pre.to_model(scan))
    channels = {x.shape[0] for x in xs}
    if len(channels) > 1:
        raise InputError(f"{catalog.root}: scans have different channel counts {sorted(channels)}; need one")
    return (
        torch.stack(xs).to(device),
        [r.pathologies for r in catalog.records],
        [r.modality for r in catalog.records],
        fovs,
    )


def _model_config(
    cfg: TrainConfig, catalog: Catalog, train: Catalog, pre: Preprocessing, channels: int, fovs: list
) -> ModelConfig:
    grid_fov = [n * s for n, s in zip(pre.size, pre.spacing)]
    return ModelConfig(
        spatial_dims=pre.spatial_dims,
        in_channels=channels,
        pathologies=catalog.pathologies,
        modalities=catalog.modalities,
        autoencoder=cfg.autoencoder.kwargs(),
        unet=cfg.unet.kwargs(),
        cond_dim=cfg.unet.cond_dim,
        preprocessing=pre.to_dict(),
        scheduler=cfg.stage2.scheduler.model_dump(),
        fingerprint=train.fingerprint(),
        name=cfg.name,
        weights_dtype=cfg.weights_dtype,
        default_guidance_scale=cfg.default_guidance_scale,
        body_part=cfg.body_part,
        trained_fov=FieldOfView.of_scans(fovs, grid_fov).to_dict(),
    )


def _card(cfg: TrainConfig, model: LatentDiffusionModel, info: dict[str, Any], command: str) -> str:
    """The model card: what was trained, how, on what, and what was measured during training."""
    conf = cfg.model_dump(mode="json", exclude={"output_dir", "work_dir"})
    if cfg.data.labels is not None:
        conf["data"]["labels"] = Path(cfg.data.labels).name  # the file name only: no local paths
    n_params = {
        k: sum(p.numel() for p in getattr(model, k).parameters()) for k in ("autoencoder", "unet", "conditioner")
    }
    s1, s2 = info["stage1"], info["stage2"]

    def stage_line(s: dict[str, Any]) -> str:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in (s.get("last_losses") or {}).items())
        best = s.get("best_val")
        return (
            f"{s.get('steps_done')} steps ({'early stop' if s.get('stopped_early') else 'to the end'}), "
            f"last train losses: {losses or 'n/a'}; best validation loss: "
            f"{'n/a' if best is None else f'{best:.5f}'}; {s.get('seconds_per_step', float('nan')):.3f} s/step "
            f"(about {s.get('steps_done', 0) * s.get('seconds_per_step', float('nan')) / 60:.0f} min)"
        )

    counts = "\n".join(f"| {k} | {v} |" for k, v in sorted(model.config.fingerprint["counts"].items()))
    return f"""# {cfg.name}

A latent diffusion model (MONAI AutoencoderKL + DiffusionModelUNet with cross-attention on
pathology and modality tokens) trained with medsynth {__version__}.

- Dimensions: {model.spatial_dims}D, grid {list(model.preprocessing.size)} at {[round(s, 4) for s in model.preprocessing.spacing]} mm, latent {list(model.latent_shape)}; trained fields of view {model.trained_fov.describe()}
- Pathologies: {", ".join(model.pathologies)}; modalities: {", ".join(model.modalities)}
- Intensity normalisation: {json.dumps(model.preprocessing.intensity)}
- Scheduler: {json.dumps(model.config.scheduler)}; latent scale factor {model.scale_factor:.5f}
- Parameters: autoencoder {n_params["autoencoder"]:,}, UNet {n_params["unet"]:,}, conditioner {n_params["conditioner"]:,}
- Weights stored as {model.config.weights_dtype} safetensors (loaded back as float32); the UNet and conditioner are the EMA weights

## Training

Command: `{command}`

Seed {cfg.seed}; device {info["device"]} ({info["world_size"]} process(es), {info["threads"]} thread(s) each),
precision {info["precision"]}; torch {torch.__version__}; {platform.platform()}; the invocation that wrote
this directory ran {info["wall_minutes"]:.1f} min (a resumed run skips the stages its checkpoints hold; per-stage
times are below, measured while the stage ran).

- Stage 1 (autoencoder, L1 + KL{" + patch adversarial" if cfg.stage1.adv_weight > 0 else ""}; no perceptual loss: it needs downloaded weights): {stage_line(s1)}
- Stage 2 (latent diffusion, condition dropout {cfg.stage2.cond_drop} joint + {cfg.stage2.token_drop} per token): {stage_line(s2)}

Configuration:

```yaml
{yaml.safe_dump(conf, sort_keys=False).rstrip()}
```

## Training data

Splits (patient-disjoint): train {info["n_train"]}, validation {info["n_val"]}, test/holdout {info["n_test"]}.
Training-set fingerprint (counts per class and the SHA-256 of the sorted relative file list; no identifiers):
`{model.config.fingerprint["file_list_sha256"]}`

| class (pathology/modality) | training scans |
|---|---|
{counts}

## Quality

Not measured by the training run. Measure conditional accuracy and diversity with
`python benchmarks/model_quality.py <this directory>`.
"""


def train(
    config: TrainConfig | str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    command: str | None = None,
    lesion_only: bool = False,
    strict: bool = False,
) -> Path:
    """Train a model from a config (object or YAML path); return the model directory.

    Args:
        config: a ``TrainConfig`` or the path of a training YAML.
        resume: continue from checkpoints in the work folder when present.
        progress: show progress bars (log lines are printed either way).
        command: how the run was started, for the model card.
        lesion_only: train only the lesion model, into the whole-image model already in
            ``output_dir`` (trained on this config's data: its training file list must match).
        strict: training scans off the grid's field of view are errors (``training.checks``).

    Raises:
        InputError: bad config, unreadable data, a checkpoint from different settings.
    """
    if not isinstance(config, TrainConfig):
        command = command or f"medsynth train {config}"
        config = load_config(config)
    cfg = config
    command = command or "medsynth.training.train(config)"
    ctx = init_distributed(cfg.device)
    started = time.time()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        def log(msg: str) -> None:
            if ctx.is_main:
                print(msg)

        work = cfg.resolved_work_dir
        run = RunContext.for_config(
            cfg,
            ctx,
            {s: cfg.fingerprint(s) for s in ("stage1", "stage2")},
            progress=progress,
            log=log,
            early_stopping_patience=cfg.early_stopping_patience,
        )
        catalog = _dataset(cfg, work, ctx)
        checked = check_data(cfg, catalog, where=dataset_name(cfg), strict=strict)
        for note in checked.notes:
            log(note)
        train_cat, val_cat, test_cat, holdout = checked.train, checked.val, checked.test, checked.holdout
        if ctx.is_main:  # the sets privacy-index, privacy-check and evaluate are to be given
            (work / SPLITS_DIR).mkdir(parents=True, exist_ok=True)
            for name, part in (("train", train_cat), ("val", val_cat), ("test", test_cat), ("holdout", holdout)):
                part.to_csv(work / SPLITS_DIR / f"{name}.csv")
        lesion = lesion_stage.wanted(cfg.lesion, train_cat)
        if lesion_only:
            return _lesion_only(cfg, ctx, train_cat, val_cat, holdout, resume=resume, progress=progress, log=log)
        pre = _preprocessing(cfg, train_cat)
        train_x, train_p, train_m, train_fovs = load_on_grid(train_cat, pre, ctx.device)
        val_x, val_p, val_m, _ = load_on_grid(val_cat, pre, ctx.device)
        torch.manual_seed(cfg.seed)  # network initialisation: identical on every rank
        model = LatentDiffusionModel(_model_config(cfg, catalog, train_cat, pre, train_x.shape[1], train_fovs)).to(
            ctx.device
        )

        stage1 = build_stage1(model.autoencoder, train_x, val_x, cfg.stage1, run, class_keys(train_p, train_m))
        s1 = run_stage(stage1, run, resume=resume)
        mu, sigma = encode_dataset(model, train_x, cfg.stage1.batch_size)
        val_mu, val_sigma = encode_dataset(model, val_x, cfg.stage1.batch_size)
        model.config.scale_factor = compute_scale_factor(mu, sigma, cfg.seed)
        log(f"latent scale factor {model.scale_factor:.5f}")
        spec2, ema = build_stage2(
            model, (mu, sigma, train_p, train_m), (val_mu, val_sigma, val_p, val_m), cfg.stage2, run
        )
        s2 = run_stage(spec2, run, resume=resume)
        model.unet.load_state_dict(ema.unet.state_dict())
        model.conditioner.load_state_dict(ema.conditioner.state_dict())
        model.eval()

        if ctx.is_main:
            info = {
                "stage1": s1,
                "stage2": s2,
                "device": str(ctx.device),
                "world_size": ctx.world_size,
                "threads": torch.get_num_threads(),
                "precision": run.precision,
                "wall_minutes": (time.time() - started) / 60.0,
                "n_train": len(train_cat),
                "n_val": len(val_cat),
                "n_test": len(test_cat),
            }
            out = save_model(model, cfg.output_dir, card=_card(cfg, model, info, command))
            # allow_nan: a diverged loss is recorded as NaN rather than refused.
            write_json(work / "summary.json", info, allow_nan=True)
            log(f"model saved to {out}")
            _privacy_index(cfg, out, train_cat, holdout, log)
            if lesion:
                info = lesion_stage.train_lesion_stage(
                    cfg, out, pre, train_cat, val_cat, holdout, resume=resume, progress=progress, log=log
                )
                _append_card(out, lesion_stage.card_section(info))
        barrier(ctx)
        return cfg.output_dir
    finally:
        shutdown(ctx)


def _append_card(model_dir: Path, text: str) -> None:
    card = model_dir / CARD_NAME
    atomic_write_text(card, card.read_text().rstrip("\n") + "\n" + text)


def _lesion_only(
    cfg: TrainConfig,
    ctx: DistContext,
    train_cat: Catalog,
    val_cat: Catalog,
    holdout: Catalog,
    *,
    resume: bool,
    progress: bool,
    log: Any,
) -> Path:
    """``--lesion-only``: the lesion stage alone, into the whole-image model of ``output_dir``."""
    model_cfg = load_model_config(cfg.output_dir)
    have = model_cfg.fingerprint.get("file_list_sha256")
    want = train_cat.fingerprint()["file_list_sha256"]
    if have != want:
        raise InputError(
            f"{cfg.output_dir}: the model was trained on another training set (file list sha256 {str(have)[:12]}..., "
            f"this config's is {want[:12]}...); --lesion-only adds a lesion model to the model of this config's data"
        )
    if not lesion_stage.wanted(cfg.lesion, train_cat):
        raise InputError(
            f"{cfg.data.labels or 'phantoms'}: --lesion-only needs masks in the training data "
            "(a 'mask' column, or data.phantoms.masks: true) and lesion.enabled not false"
        )
    if ctx.is_main:
        pre = Preprocessing.from_dict(model_cfg.preprocessing)
        info = lesion_stage.train_lesion_stage(
            cfg, cfg.output_dir, pre, train_cat, val_cat, holdout, resume=resume, progress=progress, log=log
        )
        _append_card(cfg.output_dir, lesion_stage.card_section(info))
    barrier(ctx)
    return cfg.output_dir


def _privacy_index(cfg: TrainConfig, out: Path, train: Catalog, holdout: Catalog, log: Any) -> None:
    """Build the model's privacy index (``MODEL_DIR/privacy``) from its training and holdout scans."""
    if not cfg.build_privacy_index:
        log("privacy index: skipped (build_privacy_index: false)")
        return
    if not len(holdout):
        log("privacy index: NOT built: no holdout scans (set data.test_fraction or val_fraction > 0)")
        return
    build_index_for_model(out, train, holdout)
    log(f"privacy index written to {out / 'privacy'}")
