"""The privacy index: training and holdout feature maps plus the calibrated thresholds.

Built at the end of training (``catalogs.build_index_for_model``) and stored in ``MODEL_DIR/privacy/``,
so generation can gate every case without access to the training scans. It holds no raw
images and no identifiers: low-resolution, body-standardised float16 feature maps
(``features.py``), opaque ids such as ``train-00017``, group names ("pathology/modality"),
the holdout->train similarity scores and the thresholds derived from them. The feature maps
are still image-like (a 32x32 blurred thumbnail per training scan): treat the index as being
as sensitive as the model weights (docs/privacy.md).

Calibration (``calibration.py``): tau is the q-quantile of the best similarity of each holdout
scan (never seen by the model, disjoint by patient) to the training set, per group where the
group has at least ``min_group_size`` holdout scans, pooled otherwise. A sample is flagged when
its best similarity to training exceeds tau; its empirical p-value is the share of holdout
scores at least as high (with +1 smoothing).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from medsynth.errors import InputError
from medsynth.io.atomic import atomic_path
from medsynth.io.scan import Scan
from medsynth.models.verify import verify_files
from medsynth.privacy.calibration import check_quantile, empirical_pvalue, group_for, null_scores, thresholds
from medsynth.privacy.envelope import Envelope
from medsynth.privacy.features import FeatureConfig, Features, scan_features
from medsynth.privacy.search import FeatureSearch
from medsynth.privacy.selftest import detector_selftest
from medsynth.privacy.strength import IndexStrength
from medsynth.seeding import numpy_rng

__all__ = ["PrivacyIndex", "PrivacyVerdict", "load_index_for_model"]

INDEX_VERSION = 1
INDEX_DIR = "privacy"
# Ids saved with a model must be opaque: letters, a dash, digits ("train-00017").
OPAQUE_ID = re.compile(r"^[A-Za-z]+-\d+$")
DUPLICATES_SAMPLE = 1000


@dataclass
class PrivacyVerdict:
    """The check of one synthetic scan against the training set."""

    score: float  # best NCC to any training scan over the transform envelope
    threshold: float  # tau of the group used
    passed: bool  # score <= threshold
    pvalue: float  # share of holdout scores >= score (+1 smoothing)
    nearest: str  # id (or path) of the nearest training scan; "" when the scan has no body
    nearest_index: int  # -1 when the scan has no body
    ratio: float  # adaptive ratio: nearest distance / mean distance to the next k candidates
    ssim: float | None  # SSIM with the nearest, at the best transform (None: no body)
    group_used: str  # the group whose tau applied, or "pooled"
    holdout_score: float  # best NCC to any holdout scan
    closer_to_train: bool  # score > holdout_score
    group: str = ""  # the scan's "pathology/modality"
    transform: dict[str, Any] = field(default_factory=dict)  # flip axes, zoom, rotation, shift
    aligned: np.ndarray | None = field(default=None, repr=False, compare=False)  # map at that transform

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (all but ``aligned``), e.g. for a manifest line."""
        d = asdict(self)
        d.pop("aligned")
        d["ssim"] = None if self.ssim is None or not np.isfinite(self.ssim) else float(self.ssim)
        return d


def _groups(groups: Sequence[str], n: int, what: str) -> list[str]:
    out = [str(g) for g in groups]
    if len(out) != n:
        raise InputError(f"privacy index: {n} {what} scans but {len(out)} group labels; need one per scan")
    return out


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
        holdout_empty: np.ndarray | None = None,
        train_self_query: np.ndarray | None = None,
    ) -> None:
        self.feature_config = feature_config
        self.envelope = envelope
        self.train_maps = np.asarray(train_maps, np.float32)
        self.train_groups = list(train_groups)
        self.train_ids = list(train_ids)
        self.holdout_maps = np.asarray(holdout_maps, np.float32)
        self.holdout_groups = list(holdout_groups)
        self.holdout_scores = np.asarray(holdout_scores, np.float64)
        # Which holdout scans have a body: the others (constant images) take no part in calibration.
        self.holdout_empty = (
            np.zeros(len(self.holdout_groups), bool) if holdout_empty is None else np.asarray(holdout_empty, bool)
        )
        self.train_self_scores = np.asarray(train_self_scores, np.float64)
        self.train_self_nearest = np.asarray(train_self_nearest, np.int64)
        # The training scans whose nearest other training scan was searched (a sample when large).
        self.train_self_query = (
            np.arange(len(self.train_self_scores))
            if train_self_query is None
            else np.asarray(train_self_query, np.int64)
        )
        self.quantile = check_quantile(quantile)
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
        duplicates_sample: int = DUPLICATES_SAMPLE,
    ) -> PrivacyIndex:
        """Featurise both sets, search holdout->train and train->train, calibrate, self-test.

        Args:
            train: training scans (2D or 3D, not mixed). A lazy sequence works: each scan is
                read once for the features (and again for the self-test's samples).
            holdout: scans the model never saw, from other patients.
            train_groups, holdout_groups: ``"pathology/modality"`` per scan.
            train_ids: names of the training scans (default ``train-00000``...); ``save`` only
                accepts opaque ids, so paths may be used only for an index kept in memory.
            quantile: tau is this quantile of holdout->train similarity.
            min_group_size: least holdout scans for a group to get its own tau.
            run_selftest: plant edited copies of training scans and store the recall.
            duplicates_sample: training scans searched against the rest for near duplicates
                (a seeded sample when the set is larger; the search costs as much as checking).

        Raises:
            InputError: empty sets, 2D mixed with 3D, unusable scans, group lists of the wrong
                length, a quantile outside [0.5, 1).
        """
        check_quantile(quantile)
        if len(train) < 2 or len(holdout) < 1:
            raise InputError(
                f"privacy index: need at least 2 training and 1 holdout scans; got {len(train)} and {len(holdout)}"
            )
        train_groups = _groups(train_groups, len(train), "training")
        holdout_groups = _groups(holdout_groups, len(holdout), "holdout")
        ids = [str(i) for i in train_ids] if train_ids is not None else [f"train-{i:05d}" for i in range(len(train))]
        if len(ids) != len(train):
            raise InputError(f"privacy index: {len(train)} training scans but {len(ids)} ids; need one per scan")
        # The dimensionality of the first training scan; scan_features names any scan that differs.
        cfg = FeatureConfig.default(_first(train).spatial_dims)
        env = Envelope.default(cfg.spatial_dims)
        tr = scan_features(train, cfg, names=ids)
        ho = scan_features(holdout, cfg, names=[f"holdout scan {i}" for i in range(len(holdout))])
        if tr.empty.all() or ho.empty.all():
            which = "training" if tr.empty.all() else "holdout"
            raise InputError(f"privacy index: no {which} scan has a body to compare (all are constant or empty images)")
        # float16 storage: what is saved is what is searched, so build and load agree exactly.
        tr_maps = tr.maps.astype(np.float16).astype(np.float32)
        ho_maps = ho.maps.astype(np.float16).astype(np.float32)
        search = FeatureSearch(tr_maps, env, ssim_range=2 * cfg.clip)
        holdout_res = search.search(ho_maps, ho.fov)
        query = np.nonzero(~tr.empty)[0]
        if query.size > duplicates_sample:
            query = np.sort(numpy_rng("privacy-index", "duplicates").choice(query, duplicates_sample, replace=False))
        self_res = search.search(tr_maps[query], tr.fov[query], exclude=query)
        index = cls(
            feature_config=cfg,
            envelope=env,
            train_maps=tr_maps,
            train_groups=train_groups,
            train_ids=ids,
            holdout_maps=ho_maps,
            holdout_groups=holdout_groups,
            holdout_scores=holdout_res.score,
            holdout_empty=ho.empty,
            train_self_scores=self_res.score,
            train_self_nearest=self_res.nearest,
            train_self_query=query,
            quantile=quantile,
            min_group_size=min_group_size,
        )
        index._train_search = search
        if run_selftest:
            index.selftest = detector_selftest(
                train,
                train_maps=index.train_maps,
                train_groups=index.train_groups,
                thresholds=index.thresholds(),
                feature_config=cfg,
                search=search,
            )
        return index

    # -- calibration ----------------------------------------------------------------------

    @property
    def spatial_dims(self) -> int:
        return self.feature_config.spatial_dims

    def group_sizes(self) -> dict[str, dict[str, int]]:
        """Training and holdout scans per group."""
        tr, ho = Counter(self.train_groups), Counter(self.holdout_groups)
        return {g: {"train": tr[g], "holdout": ho[g]} for g in sorted(set(tr) | set(ho))}

    def _calibration(self) -> tuple[np.ndarray, list[str]]:
        """Holdout scores and groups of the holdout scans with a body."""
        keep = ~self.holdout_empty
        return self.holdout_scores[keep], [g for g, k in zip(self.holdout_groups, keep) if k]

    def strength(self) -> IndexStrength:
        """The holdout behind each threshold and the self-test recall (``privacy.strength``)."""
        return IndexStrength.of(self._calibration()[1], self.min_group_size, self.selftest)

    def thresholds(self, quantile: float | None = None) -> dict[str, float]:
        """tau per group large enough, and the pooled tau (key ``"pooled"``)."""
        scores, groups = self._calibration()
        return thresholds(scores, groups, self.quantile if quantile is None else quantile, self.min_group_size)

    # -- checking -------------------------------------------------------------------------

    def _searches(self) -> tuple[FeatureSearch, FeatureSearch]:
        ssim_range = 2 * self.feature_config.clip
        if self._train_search is None:
            self._train_search = FeatureSearch(self.train_maps, self.envelope, ssim_range=ssim_range)
        if self._holdout_search is None:
            self._holdout_search = FeatureSearch(self.holdout_maps, self.envelope, ssim_range=ssim_range)
        return self._train_search, self._holdout_search

    def features(self, scans: Sequence[Scan], names: Sequence[str] | None = None) -> Features:
        """Feature maps of ``scans`` with this index's settings."""
        return scan_features(scans, self.feature_config, names=names)

    def check(
        self,
        scans: Sequence[Scan],
        groups: Sequence[str],
        *,
        quantile: float | None = None,
        names: Sequence[str] | None = None,
    ) -> list[PrivacyVerdict]:
        """Score ``scans`` against the training set (and the holdout, for the closer-to-train test).

        Args:
            scans: synthetic scans of the index's dimensionality (any size, spacing, orientation).
            groups: ``"pathology/modality"`` per scan; chooses tau.
            quantile: overrides the index's quantile.
            names: labels for error messages (default ``scan[i]``).

        Raises:
            InputError: a scan of the other dimensionality, too small or non-finite; a group
                list of the wrong length; a bad quantile.
        """
        if len(groups) != len(scans):
            raise InputError(f"privacy check: {len(scans)} scans but {len(groups)} group labels")
        if not scans:
            return []
        return self.check_features(self.features(scans, names), groups, quantile=quantile)

    def check_features(
        self, feats: Features, groups: Sequence[str], *, quantile: float | None = None
    ) -> list[PrivacyVerdict]:
        """``check`` for feature maps already made with ``features``."""
        table = self.thresholds(quantile)
        cal_scores, cal_groups = self._calibration()
        train_search, holdout_search = self._searches()
        res = train_search.search(feats.maps, feats.fov)
        hres = holdout_search.search(feats.maps, feats.fov)
        verdicts = []
        for i, group in enumerate(groups):
            used = group_for(group, table)
            score, tau, nearest = float(res.score[i]), table[used], int(res.nearest[i])
            verdicts.append(
                PrivacyVerdict(
                    score=score,
                    threshold=tau,
                    passed=bool(score <= tau),
                    pvalue=empirical_pvalue(score, null_scores(cal_scores, cal_groups, used)),
                    nearest=self.train_ids[nearest] if nearest >= 0 else "",
                    nearest_index=nearest,
                    ratio=float(res.ratio[i]),
                    ssim=None if not np.isfinite(res.ssim[i]) else float(res.ssim[i]),
                    group_used=used,
                    holdout_score=float(hres.score[i]),
                    closer_to_train=bool(score > hres.score[i]),
                    group=str(group),
                    transform=res.transform[i],
                    aligned=res.aligned[i] if nearest >= 0 else None,
                )
            )
        return verdicts

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``index.json`` and ``index.safetensors`` into ``directory`` (atomically, as one folder).

        Raises:
            InputError: a training id that is not opaque: a file name or patient id must never
                reach a model directory (build with the default ids).
        """
        for i, tid in enumerate(self.train_ids):
            if not OPAQUE_ID.match(tid):
                # The id itself is not printed: it may be exactly what must not leak.
                raise InputError(
                    f"privacy index: training id #{i} is not an opaque id like 'train-00017'; an index "
                    "that is saved must not hold file names or patient ids (build it with train_ids=None)"
                )
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
            "strength": self.strength().to_dict(),
            "stores": (
                f"float16 feature maps ({self.feature_config.grid} pixels per axis, body-standardised, "
                "pose-normalised, blurred) of every training and holdout scan: as sensitive as the model weights"
            ),
        }
        tensors = {
            "train_maps": self.train_maps.astype(np.float16),
            "holdout_maps": self.holdout_maps.astype(np.float16),
            "holdout_scores": self.holdout_scores.astype(np.float64),
            "holdout_empty": self.holdout_empty.astype(np.uint8),
            "train_self_scores": self.train_self_scores.astype(np.float64),
            "train_self_nearest": self.train_self_nearest.astype(np.int64),
            "train_self_query": self.train_self_query.astype(np.int64),
        }
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / "index.safetensors"))
            (tmp / "index.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> PrivacyIndex:
        """Read an index written by ``save`` (safetensors + JSON; nothing is unpickled).

        Raises:
            InputError: a missing, unreadable, incomplete or other-version index.
        """
        directory = Path(directory)
        meta_path, tensor_path = directory / "index.json", directory / "index.safetensors"
        if not meta_path.is_file() or not tensor_path.is_file():
            raise InputError(
                f"{directory}: no privacy index (expected index.json and index.safetensors); "
                "build one with `medsynth privacy-index MODEL_DIR --train TRAIN.csv --holdout HOLDOUT.csv`"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            t = load_file(str(tensor_path))
        except (OSError, ValueError, UnicodeDecodeError, SafetensorError) as exc:
            # A truncated or garbled index.safetensors raises SafetensorError (not a ValueError).
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"{directory}: unreadable privacy index ({first}); rebuild it with medsynth privacy-index"
            ) from None
        if not isinstance(meta, dict) or meta.get("version") != INDEX_VERSION:
            version = meta.get("version") if isinstance(meta, dict) else None
            raise InputError(
                f"{meta_path}: privacy index version {version!r}; this medsynth reads {INDEX_VERSION}: "
                "rebuild it with medsynth privacy-index"
            )
        try:
            index = cls(
                feature_config=FeatureConfig.from_dict(meta["feature_config"]),
                envelope=Envelope.from_dict(meta["envelope"]),
                train_maps=t["train_maps"].astype(np.float32),
                train_groups=meta["train_groups"],
                train_ids=meta["train_ids"],
                holdout_maps=t["holdout_maps"].astype(np.float32),
                holdout_groups=meta["holdout_groups"],
                holdout_scores=t["holdout_scores"],
                holdout_empty=t.get("holdout_empty"),
                train_self_scores=t["train_self_scores"],
                train_self_nearest=t["train_self_nearest"],
                train_self_query=t.get("train_self_query"),
                quantile=meta["quantile"],
                min_group_size=meta["min_group_size"],
                selftest=meta.get("selftest"),
            )
        except (KeyError, TypeError) as exc:
            raise InputError(
                f"{directory}: incomplete privacy index (missing {exc}); rebuild it with medsynth privacy-index"
            ) from None
        n_train, n_holdout = len(index.train_ids), len(index.holdout_groups)
        if (len(index.train_maps), len(index.train_groups), len(index.holdout_maps), len(index.holdout_scores)) != (
            n_train,
            n_train,
            n_holdout,
            n_holdout,
        ):
            raise InputError(
                f"{directory}: inconsistent privacy index (ids, groups and maps differ in number); rebuild it"
            )
        return index


def _first(scans: Sequence[Scan]) -> Scan:
    scan = scans[0]
    if not isinstance(scan, Scan):
        raise InputError(f"privacy index: expected medsynth Scans; got {type(scan).__name__}")
    return scan


def load_index_for_model(model_dir: str | Path) -> PrivacyIndex:
    """The index stored in ``model_dir/privacy``; a clear InputError when there is none.

    Its files are checked first against the sizes and SHA-256 that the model directory's
    config.json records (``models.verify``), so a truncated copy is named as such.
    """
    path = Path(model_dir) / INDEX_DIR
    if not path.is_dir():
        raise InputError(
            f"{path}: the model has no privacy index; build one with "
            "`medsynth privacy-index MODEL_DIR --train TRAIN.csv --holdout HOLDOUT.csv`"
        )
    verify_files(model_dir, (f"{INDEX_DIR}/",))
    return PrivacyIndex.load(path)


def stored_strength(index_dir: str | Path) -> IndexStrength:
    """The strength recorded in ``index_dir/index.json``, without loading the maps.

    An index saved before strengths were stored is judged from its groups and self-test (its
    holdout scans without a body, which take no part in calibration, then count too).

    Raises:
        InputError: no readable index.json.
    """
    meta_path = Path(index_dir) / "index.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if "strength" in meta:
            return IndexStrength.from_dict(meta["strength"])
        return IndexStrength.of(meta["holdout_groups"], meta["min_group_size"], meta.get("selftest"))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            f"{meta_path}: unreadable privacy index ({type(exc).__name__}); rebuild it with medsynth privacy-index"
        ) from None
