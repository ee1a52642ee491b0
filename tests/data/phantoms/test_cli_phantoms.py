"""``medsynth phantoms --pathologies`` and ``--scanner``: the classes written, and one-line errors (exit 2)."""

from __future__ import annotations

import csv
from collections import Counter

import nibabel as nib
import numpy as np
import pytest

from medsynth.cli import main
from medsynth.data.catalog import Catalog
from medsynth.data.phantoms import BASE_PATHOLOGIES, phantom_dataset


def _rows(csv_path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_by_default_every_pathology_is_made_pneumothorax_included(tmp_path, capsys) -> None:
    out = tmp_path / "all"
    assert main(["phantoms", str(out), "--count", "10", "--size", "32"]) == 0
    counts = Counter((r["pathology"], r["modality"]) for r in _rows(out / "labels.csv"))
    assert counts == {(p, m): 1 for p in (*BASE_PATHOLOGIES, "pneumothorax") for m in ("CT", "MR")}
    assert "wrote 10 2D phantoms" in capsys.readouterr().out


def test_pathologies_selects_a_subset_with_combinations_and_masks(tmp_path) -> None:
    out = tmp_path / "sub"
    args = ["phantoms", str(out), "--count", "8", "--size", "48", "--masks"]
    assert main([*args, "--pathologies", " normal, pneumothorax|effusion "]) == 0
    rows = _rows(out / "labels.csv")
    assert Counter(r["pathology"] for r in rows) == {"normal": 4, "effusion|pneumothorax": 4}
    catalog = Catalog.from_csv(out / "labels.csv")  # the mask column reads as it stands
    assert len(catalog) == 8
    for r in rows:
        if r["pathology"] != "normal":
            assert np.asarray(nib.load(out / r["mask"]).dataobj).any()


def test_the_four_base_pathologies_give_the_dataset_made_before_pneumothorax(tmp_path) -> None:
    out = tmp_path / "base"
    assert (
        main(["phantoms", str(out), "--count", "16", "--size", "32", "--pathologies", ",".join(BASE_PATHOLOGIES)]) == 0
    )
    # the same cases as the library with the four classes (the dataset the shipped models saw)
    ref = phantom_dataset(tmp_path / "ref", dim=2, count=16, size=32, pathologies=BASE_PATHOLOGIES)
    assert (out / "labels.csv").read_text() == ref.read_text()
    classes = [(r["pathology"], r["modality"]) for r in _rows(ref)]
    assert classes[:8] == [(p, m) for p in BASE_PATHOLOGIES for m in ("CT", "MR")] and classes[8:] == classes[:8]


def test_scanner_b_from_the_command_line(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["phantoms", str(a), "--count", "2", "--size", "32"]) == 0
    assert main(["phantoms", str(b), "--count", "2", "--size", "32", "--scanner", "B"]) == 0
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()
    for name in ("case-00000.nii.gz", "case-00001.nii.gz"):
        assert not np.allclose(nib.load(a / name).get_fdata(), nib.load(b / name).get_fdata())


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--pathologies", "normal,pneumothorx"], ["'pneumothorx'", "did you mean 'pneumothorax'?"]),
        (["--pathologies", "nodle"], ["'nodle'", "did you mean 'nodule'?"]),
        (["--pathologies", "normal,,mass"], ["an entry is empty"]),
        (["--pathologies", ""], ["an entry is empty"]),
        (["--pathologies", "mass,normal,mass"], ["'mass' twice"]),
        (["--pathologies", "normal|nodule"], ["combines 'normal'"]),
        (["--scanner", "C"], ["scanner 'C'", "A, B"]),
    ],
)
def test_bad_options_are_one_line_errors_before_anything_is_written(tmp_path, capsys, extra, words) -> None:
    out = tmp_path / "never"
    assert main(["phantoms", str(out), "--count", "4", "--size", "32", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medsynth: error: ") and "\n" not in err
    for w in words:
        assert w in err, err
    assert not out.exists()
