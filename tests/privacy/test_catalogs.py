"""A model's index from its catalogs: on the model's grid, opaque ids, groups, training and holdout disjoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsynth.data.catalog import Catalog, Record
from medsynth.data.phantoms import phantom_dataset
from medsynth.data.transforms import Preprocessing
from medsynth.errors import InputError
from medsynth.privacy import build_index_for_model, load_index_for_model
from medsynth.privacy.catalogs import check_disjoint


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory) -> tuple[Catalog, Catalog]:
    root = tmp_path_factory.mktemp("catalogs")

    def make(name: str, seed: int) -> Catalog:
        csv = phantom_dataset(
            root / name, dim=2, count=6, seed=seed, size=32, pathologies=("normal", "nodule"), modalities=("CT",)
        )
        return Catalog.from_csv(csv)

    return make("train", 0), make("holdout", 500)


def _model_dir(path: Path) -> Path:
    path.mkdir()
    pre = Preprocessing(2, (32, 32), (11.0, 11.0), {"CT": {"kind": "linear", "lo": -1000, "hi": 1000}})
    (path / "config.json").write_text(json.dumps({"preprocessing": pre.to_dict()}))
    return path


def test_the_index_of_a_model_holds_opaque_ids_and_the_catalogs_groups(catalogs, tmp_path):
    train, holdout = catalogs
    model = _model_dir(tmp_path / "model")
    built = build_index_for_model(model, train, holdout, quantile=0.9)
    stored = (model / "privacy" / "index.json").read_text()
    meta = json.loads(stored)
    assert meta["train_ids"] == [f"train-{i:05d}" for i in range(len(train))]
    assert meta["train_groups"] == ["normal/CT", "nodule/CT"] * 3
    assert sorted(meta["holdout_groups"]) == ["nodule/CT"] * 3 + ["normal/CT"] * 3
    # No path, file name or subject of the training data leaves with the model.
    leaks = [str(r.path) for r in train.records] + [r.path.name for r in train.records]
    leaks += [r.subject for r in train.records if r.subject]
    assert not [s for s in leaks if s in stored]
    assert meta["selftest"]["planted"] > 0 and built.spatial_dims == 2
    assert load_index_for_model(model).thresholds() == built.thresholds()


def test_a_directory_without_config_json_is_not_a_model(catalogs, tmp_path):
    with pytest.raises(InputError, match="not a model directory"):
        build_index_for_model(tmp_path, *catalogs)


def _catalog(*rows: tuple[str, str | None]) -> Catalog:
    return Catalog([Record(Path(p), ("normal",), "CT", subject=s) for p, s in rows], "/data")


def test_a_holdout_scan_that_is_also_a_training_scan_is_refused():
    train = _catalog(("/data/a.nii", None), ("/data/b.nii", None))
    holdout = _catalog(("/data/c.nii", None), ("/data/b.nii", None))
    with pytest.raises(InputError, match=r"1 holdout scans are also training scans \(holdout rows \[2\]\)"):
        check_disjoint(train, holdout)


def test_a_holdout_scan_of_a_training_subject_is_refused_without_naming_the_subject():
    train = _catalog(("/data/a.nii", "patient-7"), ("/data/b.nii", "patient-8"))
    holdout = _catalog(("/data/c.nii", "patient-9"), ("/data/d.nii", "patient-8"))
    with pytest.raises(
        InputError, match=r"holdout rows \[2\]\); the holdout must be disjoint from training by patient"
    ) as err:
        check_disjoint(train, holdout)
    assert "patient-8" not in str(err.value)
    check_disjoint(train, _catalog(("/data/c.nii", "patient-9")))  # disjoint: no error
