"""Phantom lesion masks: ``phantom_lesion_mask`` and ``medsynth phantoms --masks`` (files, mask column)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medsynth.cli import main
from medsynth.data.catalog import Catalog
from medsynth.data.phantoms import (
    LABEL_COLUMNS,
    TISSUE_NAMES,
    make_phantom,
    phantom_dataset,
    phantom_labels,
    phantom_lesion_mask,
)
from medsynth.seeding import derive_seed

# Written out, not taken from LESION_TISSUES, so that a tissue missing there fails here.
LESION_IDS = [TISSUE_NAMES.index(t) for t in ("nodule", "mass", "necrosis", "effusion", "pneumothorax")]


def _rows(csv_path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as fh:
        return list(csv.DictReader(fh))


def _case_seed(path: str, dataset_seed: int) -> int:
    return derive_seed(dataset_seed, "phantom-subject", int(path.split("-")[1].split(".")[0].split("/")[0]))


@pytest.mark.parametrize("dim", [2, 3])
def test_phantom_lesion_mask_is_the_lesion_tissue(dim):
    for pathology in ("nodule", "mass", "effusion", "pneumothorax", "effusion|nodule"):
        mask = phantom_lesion_mask(dim=dim, pathologies=pathology, seed=5, size=32)
        labels = phantom_labels(dim=dim, pathologies=pathology, seed=5, size=32)
        assert mask.shape == make_phantom(dim=dim, pathologies=pathology, seed=5, size=32).array.shape
        assert mask.any() and np.array_equal(mask, np.isin(labels, LESION_IDS))
    assert not phantom_lesion_mask(dim=dim, pathologies="normal", seed=5, size=32).any()
    # The lesion is where the diseased phantom differs from its normal twin (same seed, same noise).
    ct = make_phantom(dim=dim, pathologies="nodule", seed=5, size=32).array
    twin = make_phantom(dim=dim, pathologies="normal", seed=5, size=32).array
    mask = phantom_lesion_mask(dim=dim, pathologies="nodule", seed=5, size=32)
    assert np.all(np.abs(ct - twin)[mask] > 100.0)  # a soft-tissue nodule in aerated lung (HU)


@pytest.mark.parametrize(
    ("dim", "fmt", "count", "suffix"),
    [(2, "png", 8, "-mask.png"), (2, "nifti", 8, "-mask.nii.gz"), (3, "dicom", 4, "-mask.nii.gz")],
)
def test_cli_phantoms_masks_fill_the_mask_column(tmp_path, dim, fmt, count, suffix):
    out = tmp_path / "ds"
    args = [
        "phantoms",
        str(out),
        "--dim",
        str(dim),
        "--count",
        str(count),
        "--format",
        fmt,
        "--size",
        "32",
        "--seed",
        "4",
    ]
    assert main([*args, "--masks"]) == 0
    rows = _rows(out / "labels.csv")
    assert list(rows[0]) == [*LABEL_COLUMNS, "mask"]
    for r in rows:
        if r["pathology"] == "normal":
            assert r["mask"] == ""
        else:
            assert r["mask"] == r["path"].removesuffix(".png").removesuffix(".nii.gz") + suffix
    # Round robin over (pathology, modality), normal first: 2 of every 8 cases are normal.
    assert sum(r["mask"] != "" for r in rows) == {8: 6, 4: 2}[count]
    catalog = Catalog.from_csv(out / "labels.csv")
    assert catalog.has_masks
    for i, r in enumerate(rows):
        scan = catalog.load(i)
        mask = catalog.load_mask(i, scan)  # the pathology checks pass: lesions marked, normals without
        if r["mask"] == "":
            assert mask is None
            continue
        expected = phantom_lesion_mask(dim=dim, pathologies=r["pathology"], seed=_case_seed(r["path"], 4), size=32)
        assert mask is not None and mask.shape == (1, *scan.shape)
        if fmt == "dicom":  # read back as (slice, row, column); the phantom runs the same way
            assert scan.orientation == "SPL"
        assert np.array_equal(mask, expected)


def test_without_masks_the_dataset_is_unchanged(tmp_path):
    plain = phantom_dataset(tmp_path / "plain", dim=2, count=4, fmt="nifti", seed=1, size=32)
    with_masks = phantom_dataset(tmp_path / "masks", dim=2, count=4, fmt="nifti", seed=1, size=32, masks=True)
    plain_files = sorted(p.relative_to(plain.parent) for p in plain.parent.rglob("*") if p.is_file())
    extra = sorted(p.relative_to(with_masks.parent) for p in with_masks.parent.rglob("*") if p.is_file())
    assert [p for p in extra if not p.name.endswith("-mask.nii.gz")] == plain_files
    for rel in plain_files:
        if rel.name != "labels.csv":
            assert (plain.parent / rel).read_bytes() == (with_masks.parent / rel).read_bytes()
    lines = [line.rsplit(",", 1)[0] for line in with_masks.read_text().splitlines()]
    assert "\n".join(lines) + "\n" == plain.read_text()
    assert plain.read_text().splitlines()[0] == ",".join(LABEL_COLUMNS)
