"""Every mistake in a training run's data caught before the first step (training/checks.py, ``train --check``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from medsynth.cli import main
from medsynth.data.catalog import Catalog
from medsynth.data.phantoms import BASE_PATHOLOGIES, phantom_dataset
from medsynth.errors import ConfigErrors, InputError
from medsynth.io import read_scan, write_scan
from medsynth.training.checks import check_data
from medsynth.training.config import parse_config
from medsynth.training.pipeline import train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """400 2D phantoms at 32² (50 per class; its split column gives 40 test scans, 20 per modality)."""
    return phantom_dataset(
        tmp_path_factory.mktemp("checks"), dim=2, count=400, seed=7, size=32, pathologies=BASE_PATHOLOGIES
    )


def _rows(labels: Path) -> list[dict[str, str]]:
    with labels.open() as f:
        return list(csv.DictReader(f))


def _write_rows(path: Path, rows: list[dict[str, str]], root: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "path": str(root / r["path"]) if not Path(r["path"]).is_absolute() else r["path"]})
    return path


def _check(tiny_cfg, labels: Path, out: Path, strict: bool = False, **over):
    cfg = parse_config(tiny_cfg(labels, out, **over))
    return check_data(cfg, Catalog.from_csv(labels), where=str(labels), strict=strict)


def test_the_checks_pass_on_good_data_and_name_the_grid(tiny_cfg, dataset, tmp_path):
    check = _check(tiny_cfg, dataset, tmp_path)
    assert (len(check.train), len(check.val), len(check.test)) == (320, 40, 40)
    assert check.notes[0] == f"data: 320 train / 40 val / 40 test scans from {dataset}"
    assert "field of view [350.0, 350.0] mm" in check.notes[1] and not check.problems


def test_split_aliases_are_merged_and_unknown_names_refused(tiny_cfg, dataset, tmp_path):
    rows = _rows(dataset)
    renamed = [{**r, "split": {"val": "validation", "test": "holdout"}.get(r["split"], r["split"])} for r in rows]
    aliased = _write_rows(tmp_path / "aliases.csv", renamed, dataset.parent)
    check = _check(tiny_cfg, aliased, tmp_path)
    assert (len(check.train), len(check.val), len(check.test)) == (320, 40, 40)  # nothing dropped
    typo = _write_rows(
        tmp_path / "typo.csv",
        [{**r, "split": "tst" if r["split"] == "test" else r["split"]} for r in rows],
        dataset.parent,
    )
    with pytest.raises(
        ConfigErrors, match=r"split 'tst' \(40 row\(s\)\) is not a split name; expected train, val or test"
    ):
        _check(tiny_cfg, typo, tmp_path)
    with pytest.raises(ConfigErrors, match="has a split column, which decides the splits"):
        _check(tiny_cfg, dataset, tmp_path, data={"labels": str(dataset), "test_fraction": 0.2})


def test_a_mislabelled_or_unreadable_scan_in_any_split_is_found_before_training(tiny_cfg, dataset, tmp_path, capsys):
    rows = _rows(dataset)
    test_ct = next(i for i, r in enumerate(rows) if r["split"] == "test" and r["modality"] == "CT")
    scan = read_scan(dataset.parent / rows[test_ct]["path"], modality="MR")  # an MR file labelled CT
    write_scan(scan, tmp_path / "mr", "dicom", case_id="mislabelled")
    rows[test_ct] = {**rows[test_ct], "path": str(tmp_path / "mr")}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_cfg(_write_rows(tmp_path / "labels.csv", rows, dataset.parent), tmp_path)))
    assert main(["train", "--check", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "(test split)" in err[0] and "Modality is MR but the dataset CSV says CT" in err[0]
    # train itself stops at the same check, before a work folder or model directory exists
    assert main(["train", str(config)]) == 2
    assert not (tmp_path / "work").exists() and not (tmp_path / "model").exists()
    # and an unreadable file in the validation split: every problem at once, one line each
    val_any = next(i for i, r in enumerate(rows) if r["split"] == "val")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    rows[val_any] = {**rows[val_any], "path": str(tmp_path / "broken.nii.gz")}
    _write_rows(tmp_path / "labels.csv", rows, dataset.parent)
    assert main(["train", "--check", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "Modality is MR" in err[0] and "broken.nii.gz" in err[1] and "line " in err[1]


def test_batches_larger_than_the_training_split_are_refused(tiny_cfg, dataset, tmp_path):
    with pytest.raises(ConfigErrors, match=r"stage2\.batch_size 500 is more than the 320 training scans"):
        _check(tiny_cfg, dataset, tmp_path, stage2={"batch_size": 500})


def test_a_holdout_that_cannot_calibrate_a_group_is_refused(tiny_cfg, dataset, tmp_path):
    # The case: no CT scan outside training, so the holdout (validation + test) is MR only.
    rows = [{**r, "split": "train" if r["modality"] == "CT" else r["split"]} for r in _rows(dataset)]
    held = sum(r["split"] in ("val", "test") for r in rows)
    assert 0 < held < 50
    labels = _write_rows(tmp_path / "no-ct-holdout.csv", rows, dataset.parent)
    with pytest.raises(ConfigErrors) as err:
        _check(tiny_cfg, labels, tmp_path, build_privacy_index=True)
    lines = err.value.lines
    ct = [x for x in lines if "/CT: it has 0 holdout (validation + test) scans" in x]
    assert len(lines) == 8 and len(ct) == 4  # every group: too few holdout scans in all to pool a threshold
    assert all(f"needs 50 holdout scans in all (has {held}) and 10 of CT (has 0)" in x for x in ct)
    assert "raise data.test_fraction" in lines[0]
    _check(tiny_cfg, labels, tmp_path, build_privacy_index=False)  # no index, nothing to calibrate


def test_validation_scans_count_towards_the_privacy_holdout(tiny_cfg, dataset, tmp_path):
    # Every CT scan outside training in validation, the test split MR only: the holdout still has CT.
    rows = [
        {**r, "split": "val" if r["split"] == "test" and r["modality"] == "CT" else r["split"]} for r in _rows(dataset)
    ]
    labels = _write_rows(tmp_path / "ct-in-val.csv", rows, dataset.parent)
    check = _check(tiny_cfg, labels, tmp_path, build_privacy_index=True)  # 80 holdout scans pool a threshold
    held = check.holdout.records
    assert len(held) == len(check.val) + len(check.test) == 80 and not check.problems
    assert {r.modality for r in held} == {"CT", "MR"} and {r.modality for r in check.test.records} == {"MR"}


def test_scans_off_the_field_of_view_are_reported_and_refused_when_strict(tiny_cfg, dataset, tmp_path):
    rows = _rows(dataset)
    k = next(i for i, r in enumerate(rows) if r["split"] == "train" and r["modality"] == "MR")
    scan = read_scan(dataset.parent / rows[k]["path"], modality="MR")
    small = scan.with_array(scan.array)
    small.affine = np.diag([66 / 32, 66 / 32, 5.0, 1.0])  # a 66 mm field of view instead of 350 mm
    write_scan(small, tmp_path / "small.nii.gz", "nifti")
    rows[k] = {**rows[k], "path": str(tmp_path / "small.nii.gz")}
    labels = _write_rows(tmp_path / "fov.csv", rows, dataset.parent)
    check = _check(tiny_cfg, labels, tmp_path)
    warning = [n for n in check.notes if n.startswith("warning:")]
    assert len(warning) == 1 and "1 of 320 training scans have a field of view more than 25% away" in warning[0]
    assert "[66.0, 66.0] mm" in warning[0]
    with pytest.raises(ConfigErrors, match="1 of 320 training scans have a field of view"):
        _check(tiny_cfg, labels, tmp_path, strict=True)


def test_train_check_passes_on_the_shipped_configs(capsys):
    repo = Path(__file__).resolve().parents[2]
    for name in ("phantom-2d.yaml", "phantom-3d.yaml"):
        assert main(["train", "--check", str(repo / "configs" / name)]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "OK, ready to train" in out and "warning" not in out


def test_a_csv_error_stops_train_before_any_work(tiny_cfg, dataset, tmp_path):
    rows = _rows(dataset)
    rows[-1] = {**rows[-1], "path": str(tmp_path / "gone.nii.gz")}
    labels = _write_rows(tmp_path / "gone.csv", rows, dataset.parent)
    with pytest.raises(InputError, match="gone.nii.gz"):
        train(parse_config(tiny_cfg(labels, tmp_path)), progress=False)
    assert not (tmp_path / "work").exists()


def test_privacy_index_refuses_sets_that_are_not_the_models(straight_run, tmp_path, capsys):
    """The issue's swap: --train HOLDOUT --holdout TRAIN is refused; train's own split CSVs are accepted."""
    import shutil

    splits = straight_run.parent / "work" / "splits"
    straight_run = shutil.copytree(straight_run, tmp_path / "model")  # the shared run stays as it is
    assert {p.name for p in splits.iterdir()} == {"train.csv", "val.csv", "test.csv", "holdout.csv"}
    rows = {n: (splits / f"{n}.csv").read_text().splitlines()[1:] for n in ("val", "test", "holdout")}
    assert rows["holdout"] == rows["val"] + rows["test"]  # the privacy holdout: validation and test
    args = ["privacy-index", str(straight_run), "--train", str(splits / "test.csv"), "--holdout"]
    assert main([*args, str(splits / "train.csv")]) == 2
    err = capsys.readouterr().err
    assert "is not the training set of" in err and "--force" in err and err.count("\n") == 1
    assert not (straight_run / "privacy").exists()
    good = ["privacy-index", str(straight_run), "--train", str(splits / "train.csv"), "--holdout"]
    assert main([*good, str(splits / "holdout.csv")]) == 0, capsys.readouterr().err
    assert not (straight_run / "privacy" / "forced.json").exists()
    assert main([*args, str(splits / "val.csv"), "--force"]) == 0
    assert json.loads((straight_run / "privacy" / "forced.json").read_text())["forced"] is True
