"""A saved index holds opaque training ids only: a path, file name or patient id never reaches a model."""

from __future__ import annotations

import json

import pytest

from medsynth.errors import InputError
from medsynth.privacy.index import PrivacyIndex

HOLDOUT = ([0.1, 0.2, 0.3], ["a/CT"] * 3)


@pytest.mark.parametrize(
    "train_id",
    [
        "/data/patient-042/ct.nii.gz",  # a path
        "patient-042.nii",  # a file name
        "Doe^John",  # a DICOM patient name
        "1.2.840.113619.2.55.3",  # a UID
        "train_00017",  # not the opaque form
        "train-00017/ct",
        "MRN 12345",
    ],
)
def test_save_refuses_an_id_that_is_not_opaque_and_does_not_print_it(make_index, tmp_path, train_id):
    index = make_index(*HOLDOUT, train_ids=["train-00000", train_id, "train-00002", "train-00003"])
    with pytest.raises(InputError, match=r"training id #1 is not an opaque id like 'train-00017'") as err:
        index.save(tmp_path / "privacy")
    assert train_id not in str(err.value)
    assert not (tmp_path / "privacy").exists()  # nothing half-written either


def test_opaque_ids_are_saved_and_read_back(make_index, tmp_path):
    ids = ["train-00000", "train-00001", "holdout-7", "Scan-12"]
    index = make_index(*HOLDOUT, train_ids=ids)
    index.save(tmp_path / "privacy")
    assert json.loads((tmp_path / "privacy" / "index.json").read_text())["train_ids"] == ids
    loaded = PrivacyIndex.load(tmp_path / "privacy")
    assert loaded.train_ids == ids and loaded.thresholds() == index.thresholds()
