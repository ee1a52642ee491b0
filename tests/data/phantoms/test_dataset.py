"""Phantom datasets (``phantoms.dataset``): labels.csv, classes, splits, formats and the CLI."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from medsynth.cli import main
from medsynth.data.phantoms import make_phantom, phantom_dataset
from medsynth.errors import InputError
from medsynth.io import read_scan
from medsynth.seeding import derive_seed


def _rows(csv_path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_phantom_dataset_writes_balanced_labelled_scans(tmp_path) -> None:
    csv_path = phantom_dataset(tmp_path / "ds", dim=2, count=20, fmt="nifti", seed=3)
    assert csv_path == tmp_path / "ds" / "labels.csv"
    rows = _rows(csv_path)
    assert list(rows[0]) == ["path", "pathology", "modality", "split", "subject"]
    assert len(rows) == 20
    counts = Counter((r["pathology"], r["modality"]) for r in rows)
    # five pathologies (pneumothorax included by default) x two modalities, two cases each
    assert len(counts) == 10 and set(counts.values()) == {2}
    assert counts[("pneumothorax", "CT")] == counts[("pneumothorax", "MR")] == 2
    assert len({r["subject"] for r in rows}) == 20
    for r in rows[:3]:
        scan = read_scan(tmp_path / "ds" / r["path"])
        i = int(r["path"].split("-")[1].split(".")[0])
        ref = make_phantom(
            dim=2, pathologies=r["pathology"], modality=r["modality"], seed=derive_seed(3, "phantom-subject", i)
        )
        np.testing.assert_allclose(scan.affine, ref.affine, atol=1e-5)
        np.testing.assert_allclose(scan.array, ref.array, atol=1e-3)
    assert not list((tmp_path / "ds").glob(".tmp-*"))
    from medsynth.data.catalog import Catalog

    catalog = Catalog.from_csv(csv_path)  # the dataset reader accepts it as written
    assert len(catalog) == 20 and catalog.modalities == ["CT", "MR"]


def test_phantom_dataset_class_counts_and_splits(tmp_path) -> None:
    counts = {("nodule", "CT"): 10, ("normal", "CT"): 30}
    rows = _rows(phantom_dataset(tmp_path, dim=2, count=40, fmt="png", class_counts=counts))
    assert Counter((r["pathology"], r["modality"]) for r in rows) == Counter(counts)
    by_class = Counter((r["pathology"], r["split"]) for r in rows)
    assert by_class[("nodule", "test")] == 1 and by_class[("nodule", "val")] == 1
    assert by_class[("normal", "test")] == 3 and by_class[("normal", "val")] == 3
    assert all((tmp_path / r["path"]).is_file() and r["path"].endswith(".png") for r in rows)
    with pytest.raises(InputError, match="adds up to 40"):
        phantom_dataset(tmp_path, dim=2, count=39, class_counts=counts)


def test_phantom_dataset_3d_dicom(tmp_path) -> None:
    rows = _rows(
        phantom_dataset(
            tmp_path, dim=3, count=2, fmt="dicom", size=32, modalities=("MR",), pathologies=("nodule|effusion",)
        )
    )
    assert [r["pathology"] for r in rows] == ["effusion|nodule"] * 2
    scan = read_scan(tmp_path / rows[0]["path"])
    assert scan.shape == (32, 32, 32) and scan.orientation == "SPL" and scan.modality == "MR"


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"count": 0}, "count=0"),
        ({"fmt": "jpeg"}, "jpeg"),
        ({"dim": 3, "fmt": "png"}, "2D"),
        ({"size": 8}, "size=8"),
        ({"pathologies": ("normal", "flu")}, "flu"),
    ],
)
def test_phantom_dataset_rejects_bad_arguments(tmp_path, kwargs: dict, needle: str) -> None:
    args = {"dim": 2, "count": 4, **kwargs}
    with pytest.raises(InputError, match=needle):
        phantom_dataset(tmp_path, **args)
    assert not (tmp_path / "labels.csv").exists()


def test_cli_phantoms(tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["phantoms", str(out), "--count", "4", "--format", "png", "--seed", "2", "--size", "32"]) == 0
    line = capsys.readouterr().out.strip()
    assert "wrote 4 2D phantoms" in line and "\n" not in line
    rows = _rows(out / "labels.csv")
    assert len(rows) == 4 and all((out / r["path"]).is_file() for r in rows)
    assert main(["phantoms", str(out), "--dim", "3", "--count", "2", "--format", "png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medsynth: error:") and "\n" not in err
