"""The privacy index: training and holdout feature maps plus the calibrated thresholds.

Built at the end of training (``build_index_for_model``) and stored in ``MODEL_DIR/privacy/``,
so generation can gate every case without access to the training scans. It holds no raw
images and no identifiers: low-resolution, body-standardised float16 feature maps
(``features.py``), opaque ids such as ``train-00017``, group names ("pathology/modality"),
the holdout->train similarity scores and the thresholds derived from them. The feature maps
are still image-like (a 32x32 blurred thumbnail per training scan): treat the index as being
as sensitive as the model weights (docs/privacy.md).

Calibration: tau is the q-quantile of the best similarity of each holdout scan (never seen by
the model, disjoint by patient) to the training set, per group where the group has at least
``min_group_size`` holdout scans, pooled otherwise. A sample is flagged when its best
similarity to training exceeds tau; its empirical p-value is the share of holdout scores at
least as high (with +1 smoothing).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from medsynth.errors import InputError
from medsynth.io.atomic import atomic_path, atomic_write_text
from medsynth.io.scan import Scan
from medsynth.privacy.features import FeatureConfig, scan_features
from medsynth.privacy.search import Envelope, FeatureSearch

INDEX_VERSION = 1
INDEX_DIR = "privacy"
POOLED = "pooled"


@dataclass
class PrivacyVerdict:
    """The check of one synthetic scan against the training set."""

    score: float  # best NCC to any training scan over the transform envelope
    threshold: float  # tau of the group used
    passed: bool
    pvalue: float  # share of holdout scores >= score (+1 smoothing)
    nearest: str  # id (or path) of the nearest training scan; "" when the scan has no body
    nearest_index: int
    ratio: float  # adaptive ratio: nearest distance / mean distance to the next k
    ssim: float | None  # SSIM with the nearest, at the best transform
    group_used: str  # the group whose tau applied, or "pooled"
    holdout_score: float  # best NCC to any holdout scan
    closer_to_train: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ssim"] = None if self.ssim is None or not np.isfinite(self.ssim) else float(self.ssim)
        return d


def _quantile(scores: np.ndarray, q: float) -> float:
    return float(np.quantile(scores, q, method="higher")) if len(scores) else 1.0


class PrivacyIndex:
    """Feature maps of the training and holdout sets and the calibrated thresholds.

    Example:
        >>> index = PrivacyIndex.build(train, holdout, train_groups=tg, holdout_groups=hg)  # doctest: +SKIP
        >>> verdicts = index.check(samples, ["nodule/CT"] * len(samples))                   # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        feature_config: FeatureConfig,
        envelope: Envelope,
        train_maps: np.ndarray,
        train_groups: list[str],
        train_ids: list[str],
        holdout_maps: np.ndarray,
        holdout_groups: list[str],
        holdout_scores: np.ndarray,
        train_self_scores: np.ndarray,
        train_self_nearest: np.ndarray,
        quantile: float,
        min_group_size: int,
        selftest: dict[str, Any] | None = None,
    ) -> None:
        self.feature_config = feature_config
        self.envelope = envelope
        self.train_maps = np.asarray(train_maps, np.float32)
        self.train_groups = list(train_groups)
        self.train_ids = list(train_ids)
        self.holdout_maps = np.asarray(holdout_maps, np.float32)
        self.holdout_groups = list(holdout_groups)
        self.holdout_scores = np.asarray(holdout_scores, np.float64)
        self.train_self_scores = np.asarray(train_self_scores, np.float64)
        self.train_self_nearest = np.asarray(train_self_nearest, np.int64)
        self.quantile = float(quantile)
        self.min_group_size = int(min_group_size)
        self.selftest = selftest or {}
        self._train_search: FeatureSearch | None = None
        self._holdout_search: FeatureSearch | None = None

    # -- building -------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        train: Sequence[Scan],
        holdout: Sequence[Scan],
        *,
        train_groups: Sequence[str],
        holdout_groups: Sequence[str],
        train_ids: Sequence[str] | None = None,
        quantile: float = 0.99,
        min_group_size: int = 50,
        run_selftest: bool = True,
    ) -> "PrivacyIndex":
        """Featurise both sets, search holdout->train and train->train, calibrate, self-test."""
        _check_quantile(quantile)
        if len(train) < 2 or len(holdout) < 1:
            raise InputError(
                f"privacy index: need at least 2 training and 1 holdout scans; got {len(train)} and {len(holdout)}"
            )
        if len(train_groups) != len(train) or len(holdout_groups) != len(holdout):
            raise InputError("privacy index: one group label per scan is required")
        dims = {s.spatial_dims for s in [*train, *holdout]}
        if len(dims) != 1:
            raise InputError("privacy index: training and holdout scans mix 2D and 3D; use one kind")
        cfg = FeatureConfig.default(dims.pop())
        env = Envelope.default(cfg.spatial_dims)
        ids = list(train_ids) if train_ids is not None else [f"train-{i:05d}" for i in range(len(train))]
        tr = scan_features(train, cfg, names=ids)
        ho = scan_features(holdout, cfg, names=[f"holdout-{i:05d}" for i in range(len(holdout))])
        # float16 storage: what is saved is what is searched, so build and load agree exactly.
        tr_maps = tr.maps.astype(np.float16).astype(np.float32)
        ho_maps = ho.maps.astype(np.float16).astype(np.float32)
        search = FeatureSearch(tr_maps, env)
        holdout_res = search.search(ho_maps, ho.fov)
        self_res = search.search(tr_maps, tr.fov, exclude=np.arange(len(tr_maps)))
        index = cls(
            feature_config=cfg,
            envelope=env,
            train_maps=tr_maps,
            train_groups=list(train_groups),
            train_ids=ids,
            holdout_maps=ho_maps,
            holdout_groups=list(holdout_groups),
            holdout_scores=holdout_res.score,
            train_self_scores=self_res.score,
            train_self_nearest=self_res.nearest,
            quantile=quantile,
            min_group_size=min_group_size,
        )
        index._train_search = search
        if run_selftest:
            from medsynth.privacy.selftest import detector_selftest

            index.selftest = detector_selftest(index, train)
        return index

    # -- calibration ----------------------------------------------------------------------

    @property
    def spatial_dims(self) -> int:
        return self.feature_config.spatial_dims

    def group_sizes(self) -> dict[str, dict[str, int]]:
        groups = sorted(set(self.train_groups) | set(self.holdout_groups))
        return {
            g: {"train": self.train_groups.count(g), "holdout": self.holdout_groups.count(g)} for g in groups
        }

    def _holdout_pool(self, group: str) -> tuple[str, np.ndarray]:
        mask = np.array([g == group for g in self.holdout_groups], bool)
        if mask.sum() >= self.min_group_size:
            return group, self.holdout_scores[mask]
        return POOLED, self.holdout_scores

    def thresholds(self, quantile: float | None = None) -> dict[str, float]:
        """tau per group large enough, and the pooled tau (key ``"pooled"``)."""
        q = self.quantile if quantile is None else quantile
        out = {POOLED: _quantile(self.holdout_scores, q)}
        for g in sorted(set(self.holdout_groups)):
            used, scores = self._holdout_pool(g)
            if used == g:
                out[g] = _quantile(scores, q)
        return out

    # -- checking -------------------------------------------------------------------------

    def _searches(self) -> tuple[FeatureSearch, FeatureSearch | None]:
        if self._train_search is None:
            self._train_search = FeatureSearch(self.train_maps, self.envelope)
        if self._holdout_search is None and len(self.holdout_maps) >= 1:
            self._holdout_search = FeatureSearch(self.holdout_maps, self.envelope)
        return self._train_search, self._holdout_search

    def check(
        self, scans: Sequence[Scan], groups: Sequence[str], *, quantile: float | None = None
    ) -> list[PrivacyVerdict]:
        """Score ``scans`` (of the index's dimensionality) against training and holdout."""
        if len(groups) != len(scans):
            raise InputError(f"privacy check: {len(scans)} scans but {len(groups)} group labels")
        if not scans:
            return []
        q = self.quantile if quantile is None else quantile
        _check_quantile(q)
        feats = scan_features(scans, self.feature_config)
        train_search, holdout_search = self._searches()
        res = train_search.search(feats.maps, feats.fov)
        hres = holdout_search.search(feats.maps, feats.fov) if holdout_search is not None else None
        verdicts = []
        for i, group in enumerate(groups):
            used, pool = self._holdout_pool(group)
            tau = _quantile(pool, q)
            score = float(res.score[i])
            nearest = int(res.nearest[i])
            hscore = float(hres.score[i]) if hres is not None else float("nan")
            verdicts.append(
                PrivacyVerdict(
                    score=score,
                    threshold=tau,
                    passed=bool(score <= tau),
                    pvalue=float((1 + np.sum(pool >= score)) / (1 + len(pool))),
                    nearest=self.train_ids[nearest] if nearest >= 0 else "",
                    nearest_index=nearest,
                    ratio=float(res.ratio[i]),
                    ssim=None if not np.isfinite(res.ssim[i]) else float(res.ssim[i]),
                    group_used=used,
                    holdout_score=hscore,
                    closer_to_train=bool(score > hscore),
                )
            )
        return verdicts

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``index.json`` and ``index.safetensors`` into ``directory`` (atomically, as one folder)."""
        directory = Path(directory)
        meta = {
            "version": INDEX_VERSION,
            "feature_config": self.feature_config.to_dict(),
            "envelope": self.envelope.to_dict(),
            "quantile": self.quantile,
            "min_group_size": self.min_group_size,
            "train_groups": self.train_groups,
            "train_ids": self.train_ids,
            "holdout_groups": self.holdout_groups,
            "thresholds": self.thresholds(),
            "group_sizes": self.group_sizes(),
            "selftest": self.selftest,
        }
        tensors = {
            "train_maps": self.train_maps.astype(np.float16),
            "holdout_maps": self.holdout_maps.astype(np.float16),
            "holdout_scores": self.holdout_scores.astype(np.float64),
            "train_self_scores": self.train_self_scores.astype(np.float64),
            "train_self_nearest": self.train_self_nearest.astype(np.int64),
        }
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            save_file(tensors, str(tmp / "index.safetensors"))
            atomic_write_text(tmp / "index.json", json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "PrivacyIndex":
        directory = Path(directory)
        meta_path, tensor_path = directory / "index.json", directory / "index.safetensors"
        if not meta_path.is_file() or not tensor_path.is_file():
            raise InputError(
                f"{directory}: no privacy index (expected index.json and index.safetensors); "
                "build one with `medsynth privacy-index MODEL_DIR --train TRAIN.csv --holdout HOLDOUT.csv`"
            )
        try:
            meta = json.loads(meta_path.read_text())
            t = load_file(str(tensor_path))
        except (OSError, ValueError) as exc:
            raise InputError(f"{directory}: unreadable privacy index ({exc}); rebuild it with medsynth privacy-index")
        if meta.get("version") != INDEX_VERSION:
            raise InputError(
                f"{meta_path}: privacy index version {meta.get('version')!r}; this medsynth reads {INDEX_VERSION}: rebuild it"
            )
        return cls(
            feature_config=FeatureConfig.from_dict(meta["feature_config"]),
            envelope=Envelope.from_dict(meta["envelope"]),
            train_maps=t["train_maps"].astype(np.float32),
            train_groups=meta["train_groups"],
            train_ids=meta["train_ids"],
            holdout_maps=t["holdout_maps"].astype(np.float32),
            holdout_groups=meta["holdout_groups"],
            holdout_scores=t["holdout_scores"],
            train_self_scores=t["train_self_scores"],
            train_self_nearest=t["train_self_nearest"],
            quantile=meta["quantile"],
            min_group_size=meta["min_group_size"],
            selftest=meta.get("selftest"),
        )


def _check_quantile(q: float) -> None:
    if not 0.5 <= float(q) < 1.0:
        raise InputError(f"privacy quantile {q!r}: expected a number in [0.5, 1), e.g. 0.99")


def flagged_rate_test(n_flagged: int, n: int, quantile: float, alpha: float = 0.01) -> tuple[float, bool]:
    """One-sided binomial test of the flagged rate against the 1 - q expected of new scans.

    Returns ``(pvalue, failed)``; ``failed`` when the rate is significantly above 1 - q.
    """
    if n <= 0:
        return 1.0, False
    from scipy.stats import binomtest

    pvalue = float(binomtest(int(n_flagged), int(n), 1.0 - float(quantile), alternative="greater").pvalue)
    return pvalue, pvalue < alpha


def closer_to_train_test(verdicts: Sequence[PrivacyVerdict | dict]) -> dict[str, float]:
    """Dataset-level test: the share of samples closer to train than to holdout should be ~0.5."""
    flags = [bool(v["closer_to_train"] if isinstance(v, dict) else v.closer_to_train) for v in verdicts]
    n, k = len(flags), sum(flags)
    if n == 0:
        return {"n": 0, "closer_to_train": 0, "fraction": float("nan"), "pvalue": 1.0}
    from scipy.stats import binomtest

    return {"n": n, "closer_to_train": k, "fraction": k / n, "pvalue": float(binomtest(k, n, 0.5).pvalue)}


def _model_grid_scans(model_dir: Path, catalog: Any) -> list[Scan]:
    """Load ``catalog``'s scans and put them on the model's grid, as the model sees them."""
    from medsynth.data.transforms import Preprocessing

    cfg = json.loads((model_dir / "config.json").read_text())
    pre = Preprocessing.from_dict(cfg["preprocessing"])
    scans = []
    for i, rec in enumerate(catalog.records):
        scan = catalog.load(i)
        scans.append(pre.from_model(pre.to_model(scan), rec.modality))
    return scans


def build_index_for_model(model_dir: str | Path, train: Any, holdout: Any, quantile: float = 0.99) -> PrivacyIndex:
    """Build the index of a model directory from its training and holdout catalogs and save it.

    Training scans get opaque ids (``train-00000``...): no path or subject reaches the model dir.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: not a model directory (no config.json)")
    index = PrivacyIndex.build(
        _model_grid_scans(model_dir, train),
        _model_grid_scans(model_dir, holdout),
        train_groups=[f"{r.pathology}/{r.modality}" for r in train.records],
        holdout_groups=[f"{r.pathology}/{r.modality}" for r in holdout.records],
        quantile=quantile,
    )
    index.save(model_dir / INDEX_DIR)
    return index


def load_index_for_model(model_dir: str | Path) -> PrivacyIndex:
    """The index stored in ``model_dir/privacy``; a clear InputError when there is none."""
    path = Path(model_dir) / INDEX_DIR
    if not path.is_dir():
        raise InputError(
            f"{path}: the model has no privacy index; build one with "
            "`medsynth privacy-index MODEL_DIR --train TRAIN.csv --holdout HOLDOUT.csv`"
        )
    return PrivacyIndex.load(path)
