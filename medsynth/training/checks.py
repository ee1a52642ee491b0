"""What a training run checks before its first step; ``medsynth train --check`` runs only this.

The config itself is checked when it is read (``config.py``: keys, types, shapes the networks
can divide, channel counts their group norms can split). Here the data is checked against it:

* the split column's names: ``train``, ``val``, ``test`` or an alias of one (``SPLIT_ALIASES``);
  anything else is an error naming the value, since a scan in an unknown split would be dropped;
* every row of every split is read (``Catalog.load``: readable, a DICOM Modality that agrees
  with the CSV, the dataset's dimensionality, one channel count);
* enough training scans for one batch of each stage;
* the privacy index's holdout covers every (pathology, modality) group the model will make:
  ``MIN_GROUP_HOLDOUT`` scans of the group give it a threshold of its own; otherwise it uses the
  pooled threshold, which needs ``MIN_POOLED_HOLDOUT`` holdout scans in all and
  ``MIN_MODALITY_HOLDOUT`` of the group's modality (a pooled threshold learnt on MR alone says
  nothing about CT);
* the grid: the spacing (given, or from the first training scan's field of view) and the
  training scans whose field of view differs from the grid's by more than
  ``preprocessing.fov_tolerance`` on some axis: reported with their count, an error under
  ``--strict`` (they are resampled onto the grid and fill only part of it, or are cut).

Every problem is collected and raised together (``ConfigErrors``, one line each) before any
work folder or model directory exists.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medsynth.errors import ConfigErrors, MedsynthError
from medsynth.privacy.strength import MIN_THRESHOLD_SCANS

if TYPE_CHECKING:
    from medsynth.data.catalog import Catalog
    from medsynth.training.config import TrainConfig

# Split column values and the split each stands for (lower-cased before the lookup).
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "holdout": "test",
}
MIN_GROUP_HOLDOUT = 50  # the privacy index's min_group_size: a threshold of the group's own
# The bar `generate` holds an index to (privacy.strength): a split that passes here is not refused there.
MIN_POOLED_HOLDOUT = MIN_THRESHOLD_SCANS
MIN_MODALITY_HOLDOUT = 10


@dataclass
class DataCheck:
    """What the checks found: the splits, the grid and the lines ``train --check`` prints."""

    train: Catalog
    val: Catalog
    test: Catalog
    notes: list[str] = field(default_factory=list)  # reported, not errors
    problems: list[str] = field(default_factory=list)

    @property
    def holdout(self) -> Catalog:
        """The scans the privacy index is calibrated on: validation and test together.

        Neither is trained on and both are patient-disjoint from training, so both are new
        subjects to the model; pooling them gives the thresholds the most scans.
        """
        from medsynth.data.catalog import Catalog

        return Catalog(self.val.records + self.test.records, self.train.root)


def split_catalog(cfg: TrainConfig, catalog: Catalog, where: str) -> tuple[Catalog, Catalog, Catalog, list[str]]:
    """(train, val, test, problems): by the split column (aliases merged), else by the config's fractions."""
    from medsynth.data.catalog import Catalog

    problems: list[str] = []
    if any(r.split is not None for r in catalog.records):
        named: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        unknown: Counter[str] = Counter()
        for i, r in enumerate(catalog.records):
            canonical = SPLIT_ALIASES.get(str(r.split).strip().lower())
            if canonical is None:
                unknown[str(r.split)] += 1
            else:
                named[canonical].append(i)
        for value, n in sorted(unknown.items()):
            problems.append(
                f"{where}: split {value!r} ({n} row(s)) is not a split name; expected train, val or test "
                f"(or an alias: {', '.join(k for k in SPLIT_ALIASES if k not in ('train', 'val', 'test'))})"
            )
        parts = {k: catalog.subset(v) for k, v in named.items()}
        if {"val_fraction", "test_fraction"} & cfg.data.model_fields_set:
            problems.append(
                f"{where}: has a split column, which decides the splits; remove data.val_fraction / "
                "data.test_fraction from the config (they would not be used)"
            )
    else:
        fr = {"train": 1.0 - cfg.data.val_fraction - cfg.data.test_fraction}
        for name in ("val", "test"):
            value = getattr(cfg.data, f"{name}_fraction")
            if value > 0:
                fr[name] = value
        try:
            parts = catalog.split(fr, seed=cfg.seed)
        except MedsynthError as exc:
            return catalog, catalog.subset([]), catalog.subset([]), [f"{where}: {exc}"]
    empty = Catalog([], catalog.root, spatial_dims=catalog.spatial_dims())
    train = parts.get("train", empty)
    if not len(train):
        problems.append(f"{where}: no scans in the 'train' split")
    return train, parts.get("val", empty), parts.get("test", empty), problems


Geometry = tuple[tuple[int, ...], tuple[float, ...]]  # a scan's (shape, spacing)


def _read_all(catalog: Catalog, split: str, where: str, check: DataCheck) -> list[Geometry | None]:
    """Every scan of a split read (one at a time: only its geometry is kept); None where unreadable."""
    out: list[Geometry | None] = []
    channels: Counter[int] = Counter()
    for i in range(len(catalog)):
        try:
            scan = catalog.load(i)
        except MedsynthError as exc:
            check.problems.append(f"{where} ({split} split): {exc}")
            out.append(None)
            continue
        channels[scan.array.shape[0]] += 1
        out.append((tuple(scan.shape), tuple(float(s) for s in scan.spacing)))
    if len(channels) > 1:
        check.problems.append(f"{where} ({split} split): scans have different channel counts {dict(channels)}")
    return out


def _coverage(check: DataCheck, where: str) -> None:
    holdout = check.holdout
    name = "holdout (validation + test)"
    have = Counter(r.group for r in holdout.records)
    per_modality = Counter(r.modality for r in holdout.records)
    for group, modality in sorted({(r.group, r.modality) for r in check.train.records}):
        if have[group] >= MIN_GROUP_HOLDOUT:
            continue
        missing = []
        if len(holdout) < MIN_POOLED_HOLDOUT:
            missing.append(f"{MIN_POOLED_HOLDOUT} holdout scans in all (has {len(holdout)})")
        if per_modality[modality] < MIN_MODALITY_HOLDOUT:
            missing.append(f"{MIN_MODALITY_HOLDOUT} of {modality} (has {per_modality[modality]})")
        if missing:
            check.problems.append(
                f"{where}: the privacy index cannot calibrate group {group}: it has {have[group]} {name} scans "
                f"(a threshold of its own needs {MIN_GROUP_HOLDOUT}) and the pooled threshold needs "
                f"{' and '.join(missing)}; add validation or test rows of {modality}, raise data.test_fraction, "
                "or set build_privacy_index: false"
            )


def _grid(cfg: TrainConfig, scans: list[Geometry | None], check: DataCheck, strict: bool) -> None:
    first = next((s for s in scans if s is not None), None)
    if first is None:
        return
    first_shape, first_spacing = first
    size = list(cfg.preprocessing.size)
    if cfg.preprocessing.spacing is not None:
        spacing = [float(v) for v in cfg.preprocessing.spacing]
        source = "preprocessing.spacing"
    else:
        spacing = [n * s / m for n, s, m in zip(first_shape, first_spacing, size)]
        source = "the first training scan's field of view"
    fov = [m * s for m, s in zip(size, spacing)]
    check.notes.append(
        f"grid: {size} at {[round(s, 3) for s in spacing]} mm, field of view {[round(f, 1) for f in fov]} mm "
        f"(spacing from {source})"
    )
    tol = cfg.preprocessing.fov_tolerance
    off = []
    for i, geometry in enumerate(scans):
        if geometry is None:
            continue
        own = [n * s for n, s in zip(*geometry)]
        if any(abs(o / f - 1.0) > tol for o, f in zip(own, fov)):
            off.append((i, own))
    if off:
        examples = "; ".join(f"data row {i}: {[round(v, 1) for v in own]} mm" for i, own in off[:3])
        line = (
            f"{len(off)} of {len(scans)} training scans have a field of view more than {tol:.0%} away from the "
            f"grid's on some axis ({examples}{'; ...' if len(off) > 3 else ''}): they are resampled onto the grid "
            "and fill part of it or are cut; set preprocessing.spacing, or train them as a dataset of their own"
        )
        (check.problems if strict else check.notes).append(line if strict else "warning: " + line)


def dataset_name(cfg: TrainConfig) -> str:
    """How messages name the config's dataset."""
    return str(cfg.data.labels) if cfg.data.labels is not None else "data.phantoms"


def check_config(config: TrainConfig | str | Path, *, strict: bool = False) -> DataCheck:
    """``medsynth train --check``: the config and every scan checked, nothing trained or written.

    A phantom dataset is generated into a temporary folder unless the work folder already holds
    it, so that no work folder is created by a check.

    Raises:
        InputError, ConfigErrors: every problem, one line each.
    """
    import tempfile

    from medsynth.data.catalog import Catalog
    from medsynth.training.config import TrainConfig, load_config

    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    if cfg.data.labels is not None:
        return check_data(cfg, Catalog.from_csv(cfg.data.labels), where=dataset_name(cfg), strict=strict)
    from medsynth.data.phantoms import phantom_dataset

    spec = cfg.data.phantoms.model_dump()  # type: ignore[union-attr]
    data_dir = cfg.resolved_work_dir / "data"
    made = data_dir / "phantoms.json"
    if made.is_file() and json.loads(made.read_text()) == spec:  # what train made, and would reuse
        return check_data(cfg, Catalog.from_csv(data_dir / "labels.csv"), where=dataset_name(cfg), strict=strict)
    with tempfile.TemporaryDirectory(prefix="medsynth-check-") as tmp:
        csv = phantom_dataset(Path(tmp), **spec)  # the labels.csv it wrote
        return check_data(cfg, Catalog.from_csv(csv), where=dataset_name(cfg), strict=strict)


def check_data(cfg: TrainConfig, catalog: Catalog, *, where: str, strict: bool = False) -> DataCheck:
    """Run every data check; raise all problems at once.

    Args:
        cfg: the training config (already valid on its own).
        catalog: the whole dataset.
        where: how to name the dataset in messages (the CSV path, or "phantoms").
        strict: scans off the grid's field of view are errors, not warnings.

    Raises:
        ConfigErrors: one line per problem; nothing has been written.
    """
    train, val, test, problems = split_catalog(cfg, catalog, where)
    check = DataCheck(train, val, test, problems=problems)
    scans = _read_all(train, "train", where, check)
    for split, part in (("val", val), ("test", test)):
        _read_all(part, split, where, check)
    for stage in ("stage1", "stage2"):
        batch = getattr(cfg, stage).batch_size
        if 0 < len(train) < batch:
            check.problems.append(
                f"{stage}.batch_size {batch} is more than the {len(train)} training scans; "
                f"lower it to at most {len(train)} or add training scans"
            )
    if cfg.build_privacy_index:
        _coverage(check, where)
    _grid(cfg, scans, check, strict)
    check.notes.insert(0, f"data: {len(train)} train / {len(val)} val / {len(test)} test scans from {where}")
    if check.problems:
        raise ConfigErrors(check.problems)
    return check
