"""The step loop shared by both training stages, and its exact-resume checkpoints.

A stage is a ``StageSpec``: the modules and optimizers it trains, a ``train_step(step)`` that
does the forward/backward/optimizer work of one optimizer step, and optional validation and
preview callbacks. ``run_stage`` drives it: learning-rate schedule (linear warm-up, cosine
decay), EMA, logging and progress bar, validation with early stopping, PNG previews and
periodic checkpoints.

Checkpoints hold everything that decides the next step, so a resumed run equals an
uninterrupted one bit for bit: module and EMA weights, optimizer state, the step, early
stopping state and RNG states. Tensors go to ``state.safetensors`` (RNG states as uint8
tensors), the rest to ``state.json``; no pickle. Batches and noise come from generators
derived from (seed, stage, step, rank), so they need no state of their own.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from medsynth.distributed import DistContext, barrier
from medsynth.errors import InputError
from medsynth.io.atomic import atomic_path
from medsynth.training.distributed import any_rank


@dataclass
class RunContext:
    """Settings every stage shares."""

    dist: DistContext
    work_dir: Path
    seed: int
    fingerprints: dict[str, str]  # stage name -> settings hash a checkpoint must match
    precision: str = "fp32"  # fp32 | bf16 | fp16 (resolved: never "auto")
    checkpoint_every: int = 250
    val_every: int = 250
    sample_every: int = 1000
    log_every: int = 50
    early_stopping_patience: int = 0
    progress: bool = True
    log: Callable[[str], None] = print
    # Loss scaling for fp16 (bf16 and fp32 need none); a pass-through when disabled.
    scaler: torch.amp.GradScaler = field(init=False)

    @classmethod
    def for_config(
        cls,
        cfg: Any,
        dist: DistContext,
        fingerprints: dict[str, str],
        *,
        progress: bool,
        log: Callable[[str], None],
        **extra: Any,
    ) -> RunContext:
        """The context of a run set by ``cfg`` (a training or fine-tuning config): its work folder,
        seed, precision and intervals; ``extra`` sets the other fields (``early_stopping_patience``)."""
        return cls(
            dist=dist,
            work_dir=cfg.resolved_work_dir,
            seed=cfg.seed,
            fingerprints=fingerprints,
            precision=resolve_precision(cfg.precision, dist.device),
            checkpoint_every=cfg.checkpoint_every,
            val_every=cfg.val_every,
            sample_every=cfg.sample_every,
            log_every=cfg.log_every,
            progress=progress,
            log=log,
            **extra,
        )

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16" and self.device.type == "cuda")

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled under fp16)."""
        self.scaler.scale(loss).backward()

    def step(self, opt: torch.optim.Optimizer, params: Iterable[nn.Parameter], clip: float | None) -> None:
        """Unscale, clip the gradient norm to ``clip`` and step ``opt``; call ``scaler.update()`` after the last."""
        self.scaler.unscale_(opt)
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(opt)

    def autocast(self) -> AbstractContextManager[Any]:
        """Mixed precision on GPU when asked for; plain fp32 otherwise (CPU autocast is slower here)."""
        if self.precision == "fp32" or self.device.type != "cuda":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def checkpoint_dir(self, stage: str) -> Path:
        return self.work_dir / "checkpoints" / stage


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` -> bf16 on a GPU that supports it, else fp32; half precision on CPU is refused."""
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            raise InputError(f"precision: {requested} needs a GPU; on CPU use 'fp32' or 'auto'")
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return requested


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_decay_at(n_averaged: int, decay: float) -> float:
    """The EMA decay after ``n_averaged`` updates: ``min(decay, (1 + n) / (10 + n))``.

    The warm-up of diffusers' ``EMAModel``: without it the average keeps a share ``decay ** n`` of
    the random initial weights, still 13% after 1000 steps at decay 0.998.
    """
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged))


def make_ema(module: nn.Module, decay: float) -> AveragedModel:
    """EMA copy of ``module`` via ``torch.optim.swa_utils.AveragedModel``, with ``ema_decay_at`` warm-up.

    Chosen over diffusers' ``EMAModel`` because its whole state (weights + ``n_averaged``) is a
    plain tensor state dict, which goes straight into a safetensors checkpoint.
    """

    def update(
        ema_params: tuple[torch.Tensor, ...] | list[torch.Tensor],
        params: tuple[torch.Tensor, ...] | list[torch.Tensor],
        n_averaged: torch.Tensor | int,
    ) -> None:
        d = ema_decay_at(int(n_averaged), decay)
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    return AveragedModel(module, multi_avg_fn=update, use_buffers=True)


@dataclass
class EarlyStopping:
    """Stop after ``patience`` validations without a relative improvement of ``min_delta``."""

    patience: int
    min_delta: float = 1e-3
    best: float = math.inf  # the last value that counted as an improvement
    bad: int = 0
    lowest: float = math.inf  # the lowest value seen (reported)

    def update(self, value: float) -> bool:
        """Record a validation loss; True when training should stop."""
        self.lowest = min(self.lowest, value)
        if value < self.best * (1.0 - self.min_delta):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.patience > 0 and self.bad >= self.patience


@dataclass
class StageSpec:
    """What a stage trains and how one optimizer step goes."""

    name: str
    steps: int
    modules: dict[str, nn.Module]  # unwrapped modules, checkpointed by name
    optimizers: dict[str, torch.optim.Optimizer]
    base_lrs: dict[str, float]  # per optimizer; a param group may scale it by its own "lr_scale"
    warmup_steps: int
    min_lr_ratio: float
    train_step: Callable[[int], dict[str, float]]
    ema: AveragedModel | None = None
    ema_source: nn.Module | None = None
    validate: Callable[[], float] | None = None
    preview: Callable[[int, Path], None] | None = None


# -- RNG state -------------------------------------------------------------------------------


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = cast(tuple[Any, ...], np.random.get_state())  # the legacy tuple form (legacy=True default)
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# -- optimizer state <-> (tensors, json) ------------------------------------------------------


def _flatten_optimizer(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{name}.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(
    name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any], opt: torch.optim.Optimizer
) -> None:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{name}."
    for key, v in tensors.items():
        if key.startswith(prefix):
            pid, k = key[len(prefix) :].split(".", 1)
            state.setdefault(int(pid), {})[k] = v
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# -- checkpoints -----------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    spec: StageSpec,
    step: int,
    stopper: EarlyStopping,
    run: RunContext,
    *,
    complete: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the stage state to the folder ``path`` atomically (rank 0 only)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in spec.modules.items():
        for k, v in module.state_dict().items():
            tensors[f"module.{name}.{k}"] = v.detach().cpu().contiguous()
    if spec.ema is not None:
        for k, v in spec.ema.state_dict().items():
            tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    optim_meta = {}
    for name, opt in spec.optimizers.items():
        t, m = _flatten_optimizer(name, opt)
        tensors.update(t)
        optim_meta[name] = m
    rng_t, rng_meta = _rng_state()
    tensors.update(rng_t)
    meta = {
        "stage": spec.name,
        "step": step,
        "complete": complete,
        "config_fingerprint": run.fingerprints[spec.name],
        "early_stopping": {
            "best": stopper.best if math.isfinite(stopper.best) else None,
            "bad": stopper.bad,
            "lowest": stopper.lowest if math.isfinite(stopper.lowest) else None,
        },
        "optimizers": optim_meta,
        "rng": rng_meta,
        "extra": extra or {},
        "grad_scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
    }
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))


def read_checkpoint_meta(path: Path) -> dict[str, Any] | None:
    """The JSON half of a checkpoint, or None when there is none."""
    f = path / "state.json"
    return json.loads(f.read_text()) if f.is_file() else None


def load_checkpoint(path: Path, spec: StageSpec, stopper: EarlyStopping, run: RunContext) -> dict[str, Any]:
    """Restore ``spec`` from ``path``; returns the JSON metadata (step, extra...)."""
    meta = read_checkpoint_meta(path)
    assert meta is not None
    if meta["config_fingerprint"] != run.fingerprints[spec.name]:
        raise InputError(
            f"{path}: this checkpoint was made with different training settings "
            f"(fingerprint {meta['config_fingerprint']} != {run.fingerprints[spec.name]}); "
            "use a new work_dir or pass --no-resume to start over"
        )
    tensors = load_file(str(path / "state.safetensors"))
    for name, module in spec.modules.items():
        prefix = f"module.{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    if spec.ema is not None:
        spec.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    for name, opt in spec.optimizers.items():
        _unflatten_optimizer(name, tensors, meta["optimizers"][name], opt)
    _set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, meta["rng"])
    if meta.get("grad_scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(meta["grad_scaler"])
    best = meta["early_stopping"]["best"]
    stopper.best = math.inf if best is None else float(best)
    stopper.bad = int(meta["early_stopping"]["bad"])
    lowest = meta["early_stopping"].get("lowest", best)
    stopper.lowest = math.inf if lowest is None else float(lowest)
    return meta


# -- previews --------------------------------------------------------------------------------


def save_grid_png(images: torch.Tensor, path: Path, ncol: int) -> None:
    """Tile ``(N, C, *spatial)`` images in ``[-1, 1]`` into one 8-bit PNG (3D: the middle axial slice)."""
    from PIL import Image

    x = images.detach().float().cpu()[:, 0]
    if x.ndim == 4:
        x = x[:, x.shape[1] // 2]
    n, h, w = x.shape
    nrow = math.ceil(n / ncol)
    canvas = np.zeros((nrow * h, ncol * w), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = ((x[i].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")


# -- the loop --------------------------------------------------------------------------------


def run_stage(spec: StageSpec, run: RunContext, *, resume: bool = True) -> dict[str, Any]:
    """Train ``spec`` to ``spec.steps`` (or early stop), resuming from its checkpoint if present.

    Returns:
        Summary: ``steps_done``, ``stopped_early``, ``best_val``, ``last_losses``, ``seconds_per_step``.
    """
    ckpt = run.checkpoint_dir(spec.name)
    stopper = EarlyStopping(run.early_stopping_patience)
    start = 0
    meta = read_checkpoint_meta(ckpt) if resume else None
    if meta is not None:
        meta = load_checkpoint(ckpt, spec, stopper, run)
        start = int(meta["step"])
        if meta["complete"]:
            run.log(f"[{spec.name}] already complete at step {start} (checkpoint {ckpt})")
            return {**meta["extra"].get("summary", {}), "resumed_complete": True}
        run.log(f"[{spec.name}] resuming from step {start}")
    is_main = run.dist.is_main
    bar = tqdm(
        total=spec.steps,
        initial=start,
        desc=spec.name,
        disable=not (is_main and run.progress),
        mininterval=10.0,
        dynamic_ncols=True,
    )
    last: dict[str, float] = {}
    stopped = False
    t0, steps_timed = time.perf_counter(), 0
    step = start
    while step < spec.steps:
        factor = lr_factor(step, spec.steps, spec.warmup_steps, spec.min_lr_ratio)
        for name, opt in spec.optimizers.items():
            for group in opt.param_groups:  # a group's "lr_scale" (fine-tuning's token rows) is kept
                group["lr"] = spec.base_lrs[name] * group.get("lr_scale", 1.0) * factor
        last = spec.train_step(step)
        if spec.ema is not None and spec.ema_source is not None:
            spec.ema.update_parameters(spec.ema_source)
        step += 1
        steps_timed += 1
        bar.update(1)
        if is_main and (step % run.log_every == 0 or step == spec.steps):
            rate = (time.perf_counter() - t0) / steps_timed
            losses = " ".join(f"{k}={v:.4f}" for k, v in last.items())
            run.log(
                f"[{spec.name}] step {step}/{spec.steps} {losses} lr={factor * max(spec.base_lrs.values()):.2e} "
                f"{rate:.3f}s/step"
            )
        if spec.validate is not None and (step % run.val_every == 0 or step == spec.steps):
            val = spec.validate()
            stop = stopper.update(val)
            if is_main:
                run.log(f"[{spec.name}] step {step} val_loss={val:.5f} lowest={stopper.lowest:.5f}")
            stopped = any_rank(stop, run.dist)
        if is_main and spec.preview is not None and (step % run.sample_every == 0 or step == spec.steps or stopped):
            spec.preview(step, run.work_dir / "previews" / f"{spec.name}-step{step:07d}.png")
        done = stopped or step == spec.steps
        summary = {
            "steps_done": step,
            "stopped_early": stopped,
            "best_val": stopper.lowest if math.isfinite(stopper.lowest) else None,
            "last_losses": last,
            "seconds_per_step": (time.perf_counter() - t0) / max(steps_timed, 1),
        }
        if step % run.checkpoint_every == 0 or done:
            if is_main:
                save_checkpoint(ckpt, spec, step, stopper, run, complete=done, extra={"summary": summary})
            barrier(run.dist)
        if stopped:
            run.log(f"[{spec.name}] early stop at step {step}: no validation improvement for {stopper.patience} checks")
            break
    bar.close()
    return summary if step > start else {"steps_done": step}
