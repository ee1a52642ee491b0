"""A small image classifier for 2D and 3D scans (a MONAI CNN), used in three places.

* Phantom separability: the built-in phantoms' classes are learnable (tests).
* Conditional accuracy: does a generated scan show the pathology and modality it was asked for?
* Fidelity and utility: its penultimate-layer features are the embedding for FID/KID, and it is
  the downstream model of the utility experiment.

The network is a VGG-style stack of MONAI ``Convolution`` blocks (conv, batch norm, ReLU) with
max-pool downsampling, global average- and max-pooling and one linear layer. Why not
``monai.networks.nets.Classifier``: its strided residual units downsample by learned strided
convolutions, and on the phantoms it memorised subjects instead of finding small lesions
(normal vs nodule stayed at chance on held-out subjects, with or without instance norm), while
this plain stack with a full-resolution stem and max pooling learns them within a few epochs.
Global pooling makes the embedding small and fixed (``2 * channels[-1]`` values, whatever the
input size), which FID/KID need; its max-pooled half lets one small lesion decide.

Example:
    >>> scans = [make_phantom(pathologies=p, seed=s) for s in range(20) for p in PATHOLOGIES]  # doctest: +SKIP
    >>> x = prepare(scans, in_size=64)  # doctest: +SKIP
    >>> clf = ImageClassifier(PATHOLOGIES, ClassifierConfig(spatial_dims=2, in_size=64)).fit(x, labels)  # doctest: +SKIP
    >>> clf.predict(x[:2]), clf.features(x[:2]).shape  # doctest: +SKIP
    (['normal', 'nodule'], (2, 128))
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medsynth.errors import InputError
from medsynth.io.atomic import atomic_path
from medsynth.io.scan import Scan
from medsynth.seeding import derive_seed, torch_generator

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_FORMAT = "medsynth-image-classifier"


@dataclass
class ClassifierConfig:
    """Constructor and training settings; saved as config.json beside the weights.

    Args:
        spatial_dims: 2 or 3.
        in_size: inputs are ``in_size`` voxels on every axis (``prepare`` resizes to it).
        channels: output channels of the stages (each ends with a 2x max-pool).
        epochs: passes over the training set (ignored when ``steps`` is set).
        steps: exact number of optimisation steps, for equal budgets across experiments.
        batch_size, lr, weight_decay: AdamW with a cosine learning-rate decay.
        balanced: draw batches with class-balanced sampling (each class equally likely), for
            imbalanced sets such as 10 rare vs 300 common cases.
        augment: random flips along every spatial axis and small random shifts of each training
            batch (labels such as pathology and modality do not depend on side or position).
            Off by default: on the phantoms it slowed learning more than it helped.
        blur_sigma: texture augmentation. When > 0, each training batch is, with probability
            0.7, Gaussian-blurred with a sigma drawn from [blur_sigma / 4, blur_sigma] voxels
            (MONAI ``GaussianFilter``). Generated scans lack the finest texture of real ones; a
            classifier trained on both can learn "smooth" as a class cue, and then misses the
            class in raw test scans. Blurring real and synthetic batches alike takes that cue
            away (docs/evaluation.md, the utility claim). 0 (off) by default.
        stem_kernel: kernel size of the first, full-resolution convolution.
        norm: MONAI norm name. Batch norm, not MONAI's default instance norm: instance norm
            rescales every feature map per image, which blurs "is there a small bright blob at
            all" (a nodule).
        in_channels: image channels.
        seed: same seed, data and settings give the same model.
        device: "cpu" or a CUDA device.
    """

    spatial_dims: int = 2
    in_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64)
    epochs: int = 10
    steps: int | None = None
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    balanced: bool = True
    augment: bool = False
    blur_sigma: float = 0.0
    norm: str = "batch"
    stem_kernel: int = 5
    in_channels: int = 1
    seed: int = 0
    device: str = field(default="cpu", compare=False)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.spatial_dims not in (2, 3):
            raise InputError(f"ClassifierConfig.spatial_dims={self.spatial_dims!r}: expected 2 or 3")
        if self.in_size < 2 ** len(self.channels):
            raise InputError(
                f"ClassifierConfig.in_size={self.in_size}: too small for {len(self.channels)} 2x poolings; "
                f"use at least {2 ** len(self.channels)}"
            )
        for name in ("epochs", "batch_size", "in_channels"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"ClassifierConfig.{name}={getattr(self, name)!r}: expected >= 1")
        if not (math.isfinite(self.blur_sigma) and self.blur_sigma >= 0):
            raise InputError(f"ClassifierConfig.blur_sigma={self.blur_sigma!r}: expected a finite number >= 0")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"ClassifierConfig.steps={self.steps!r}: expected >= 1 or None")


def _standardise(array: np.ndarray) -> np.ndarray:
    """Robust per-scan standardisation: (x - median) / IQR, so HU and MR units become comparable."""
    lo, med, hi = np.percentile(array, [25.0, 50.0, 75.0])
    scale = hi - lo
    if scale < 1e-6:  # a nearly constant image: fall back to the std, then to 1
        scale = float(array.std()) or 1.0
    return ((array - med) / scale).astype(np.float32)


def prepare(scans: Sequence[Scan], in_size: int) -> torch.Tensor:
    """Stack scans into a classifier input ``(N, C, in_size, in_size[, in_size])``.

    Each scan is standardised on its own (median/IQR) and resized on its array grid with
    MONAI's ``Resize`` (bilinear/trilinear, anti-aliased when shrinking). Scans must share
    spatial dimensions and channel count; their physical spacing is not used.

    Raises:
        InputError: no scans, or scans of mixed dimensionality or channel count.
    """
    from monai.transforms import Resize

    if len(scans) == 0:
        raise InputError("prepare: no scans given; expected at least one")
    dims, chans = scans[0].spatial_dims, scans[0].array.shape[0]
    resize = Resize((in_size,) * dims, mode="bilinear" if dims == 2 else "trilinear", anti_aliasing=True)
    out = []
    for i, scan in enumerate(scans):
        if scan.spatial_dims != dims or scan.array.shape[0] != chans:
            raise InputError(
                f"prepare: scan {i} is {scan.spatial_dims}D with {scan.array.shape[0]} channel(s); "
                f"expected {dims}D with {chans} like scan 0 (classify 2D and 3D scans separately)"
            )
        x = torch.from_numpy(_standardise(scan.array))
        if tuple(x.shape[1:]) != (in_size,) * dims:
            x = torch.as_tensor(resize(x)).float()
        out.append(x)
    return torch.stack(out)


class _Network(nn.Module):
    """A VGG-style stack of MONAI ``Convolution`` blocks with max-pool downsampling.

    stem conv (``stem_kernel``, full resolution) -> 2x max-pool -> for each further stage: conv
    -> 2x max-pool -> conv -> global max+avg pooling -> linear. The stem works on the single
    input channel, so its larger kernel buys a full-resolution receptive field cheaply.
    """

    def __init__(self, config: ClassifierConfig, n_classes: int) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution

        d = config.spatial_dims

        def conv(c_in: int, c_out: int, k: int = 3) -> nn.Module:
            return Convolution(d, c_in, c_out, kernel_size=k, act="relu", norm=config.norm)

        def pool() -> nn.Module:
            return nn.MaxPool2d(2) if d == 2 else nn.MaxPool3d(2)

        chans = config.channels
        layers: list[nn.Module] = [conv(config.in_channels, chans[0], config.stem_kernel), pool()]
        for c_in, c_out in itertools.pairwise(chans):
            layers += [conv(c_in, c_out), pool()]
        layers.append(conv(chans[-1], chans[-1]))
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(2 * chans[-1], n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x).flatten(2)
        return torch.cat([h.mean(2), h.amax(2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels while training, restoring the caller's setting afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def balanced_order(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` sample indices drawn with replacement so that every class is equally likely.

    Example:
        >>> y = torch.tensor([0] * 90 + [1] * 10)
        >>> idx = balanced_order(y, 1000, torch.Generator().manual_seed(0))
        >>> 400 < int((y[idx] == 1).sum()) < 600
        True
    """
    counts = torch.bincount(labels)
    weights = 1.0 / counts[labels].double()
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips along each spatial axis and a random circular shift of up to 1/16 of the size.

    One draw per batch (not per sample) keeps it cheap; over many batches every case is seen
    in many poses.
    """
    dims = list(range(2, x.ndim))
    flips = [d for d in dims if torch.rand(1, generator=gen).item() < 0.5]
    if flips:
        x = x.flip(flips)
    max_shift = max(1, x.shape[-1] // 16)
    shifts = torch.randint(-max_shift, max_shift + 1, (len(dims),), generator=gen).tolist()
    return torch.roll(x, shifts=shifts, dims=dims)


def _blur(x: torch.Tensor, max_sigma: float, gen: torch.Generator) -> torch.Tensor:
    """With probability 0.7, one Gaussian blur of the batch, sigma from [max_sigma / 4, max_sigma]."""
    from monai.networks.layers import GaussianFilter

    if torch.rand(1, generator=gen).item() >= 0.7:
        return x
    sigma = max_sigma * (0.25 + 0.75 * torch.rand(1, generator=gen).item())
    return GaussianFilter(x.ndim - 2, sigma).to(x.device)(x)


class ImageClassifier:
    """A small CNN that labels scans with one of ``classes``.

    Args:
        classes: the class names (at least two, unique), e.g. ``PATHOLOGIES`` or
            ``["nodule|CT", ...]`` for joint pathology-modality classes.
        config: network and training settings.
    """

    def __init__(self, classes: Sequence[str], config: ClassifierConfig) -> None:
        self.classes = tuple(str(c) for c in classes)
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise InputError(f"classes {list(self.classes)!r}: expected at least two distinct names")
        self.config = config
        self.device = torch.device(config.device)
        # Initialise from the config's seed without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, "classifier-init"))
            self.net = _Network(config, len(self.classes)).to(self.device)
        self.net.eval()

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        expected = (cfg.in_channels,) + (cfg.in_size,) * cfg.spatial_dims
        if not isinstance(x, torch.Tensor) or x.ndim != cfg.spatial_dims + 2 or tuple(x.shape[1:]) != expected:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise InputError(
                f"classifier input has shape {shape}; expected (N, {', '.join(map(str, expected))}) "
                "(use medsynth.evaluation.classifier.prepare)"
            )
        return x.float()

    def fit(
        self, x: torch.Tensor, y: Sequence[str], *, sample_weight: Sequence[float] | np.ndarray | None = None
    ) -> ImageClassifier:
        """Train on ``x`` (from ``prepare``) with labels ``y``; returns ``self``.

        Args:
            x: ``(N, C, *spatial)`` tensor.
            y: one class name per row of ``x``.
            sample_weight: optional per-sample loss weights (cross-entropy is weighted and
                normalised by the batch's weight sum).
        """
        cfg = self.config
        x = self._check_input(x)
        unknown = sorted(set(y) - set(self.classes))
        if len(y) != len(x) or unknown:
            raise InputError(
                f"fit: {len(y)} labels for {len(x)} inputs, unknown labels {unknown}; "
                f"expected one label per input from {list(self.classes)}"
            )
        target = torch.tensor([self.classes.index(v) for v in y])
        weight = None
        if sample_weight is not None:
            weight = torch.as_tensor(np.asarray(sample_weight, dtype=np.float32))
            if weight.shape != (len(x),) or bool((weight < 0).any()):
                raise InputError(
                    f"fit: sample_weight has shape {tuple(weight.shape)}; expected ({len(x)},) weights >= 0"
                )
        per_epoch = max(1, math.ceil(len(x) / cfg.batch_size))
        total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
        gen = torch_generator(cfg.seed, "classifier-batches")
        batches: list[torch.Tensor] = []
        while len(batches) < total:  # one pass at a time, as many passes as the steps need
            idx = (
                balanced_order(target, per_epoch * cfg.batch_size, gen)
                if cfg.balanced
                else torch.randperm(len(x), generator=gen)
            )
            batches.extend(idx.split(cfg.batch_size))
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        self.net.train()
        with _deterministic():
            for idx in batches[:total]:
                xb = x[idx]
                if cfg.augment:
                    xb = _augment(xb, gen)
                if cfg.blur_sigma > 0:
                    xb = _blur(xb, cfg.blur_sigma, gen)
                logits = self.net(xb.to(self.device))
                loss = F.cross_entropy(logits, target[idx].to(self.device), reduction="none")
                if weight is not None:
                    w = weight[idx].to(self.device)
                    loss = (loss * w).sum() / w.sum().clamp_min(1e-12)
                else:
                    loss = loss.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        self.net.eval()
        return self

    @torch.no_grad()
    def _batched(self, x: torch.Tensor, fn) -> np.ndarray:
        x = self._check_input(x)
        out = [fn(x[i : i + 256].to(self.device)).float().cpu() for i in range(0, len(x), 256)]
        return torch.cat(out).numpy()

    def predict_proba(self, x: torch.Tensor) -> np.ndarray:
        """Class probabilities, ``(N, n_classes)``, columns in ``classes`` order."""
        return self._batched(x, lambda b: torch.softmax(self.net(b), dim=1))

    def predict(self, x: torch.Tensor) -> list[str]:
        """The most probable class name for each input."""
        return [self.classes[k] for k in self.predict_proba(x).argmax(axis=1)]

    def features(self, x: torch.Tensor) -> np.ndarray:
        """Penultimate-layer embedding, ``(N, 2 * channels[-1])`` (for FID/KID, k-NN metrics)."""
        return self._batched(x, self.net.embed)

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (atomically, no pickle)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        meta = {"format": _FORMAT, "version": 1, "classes": list(self.classes), "config": asdict(self.config)}
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "cpu") -> ImageClassifier:
        """Load a classifier written by ``save``."""
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{directory / CONFIG_FILE}: cannot read a classifier config ({exc})") from exc
        if meta.get("format") != _FORMAT:
            raise InputError(f"{directory / CONFIG_FILE}: format {meta.get('format')!r}; expected {_FORMAT!r}")
        # "device" is where to load now, not where it was trained; keys from a newer version
        # that this one does not know are left out rather than refused, so old code can still
        # read the weights it can build.
        known = {f.name for f in fields(ClassifierConfig)}
        config = ClassifierConfig(
            **{k: v for k, v in meta["config"].items() if k in known and k != "device"}, device=device
        )
        clf = cls(meta["classes"], config)
        try:
            state = load_file(str(directory / WEIGHTS_FILE), device=str(clf.device))
            clf.net.load_state_dict(state, strict=True)
        except (OSError, RuntimeError) as exc:
            raise InputError(f"{directory / WEIGHTS_FILE}: weights do not match config.json ({exc})") from exc
        clf.net.eval()
        return clf
