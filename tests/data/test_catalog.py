"""Dataset catalogs: CSV validation, vocabularies, loading, splits, fingerprints, CSV output."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from medsynth.data.catalog import Catalog, Record, pathology_label
from medsynth.errors import InputError
from medsynth.io import write_scan
from medsynth.io.scan import Scan


def _volume(value: float) -> Scan:
    return Scan(np.full((1, 4, 4, 3), value, np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "OT")


def _dataset(root, rows: list[tuple[str, str, str, str, str]], header="path,pathology,modality,subject"):
    """Write one 3D NIfTI per row (value = row index) and a CSV; return the CSV path."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [header]
    for k, (name, pathology, modality, subject, split) in enumerate(rows):
        if not (root / name).exists():
            write_scan(_volume(float(k)), root / name, "nifti")
        cells = [name, pathology, modality] + ([subject] if "subject" in header else [])
        cells += [split] if "split" in header else []
        lines.append(",".join(cells))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


ROWS = [
    ("a.nii.gz", "normal", "ct", "p1", "train"),
    ("b.nii.gz", "nodule|effusion", "CT", "p1", "train"),
    ("c.nii.gz", "normal", "MR", "p2", "val"),
    ("d.nii.gz", "effusion|nodule", "CT", "", "test"),
]


def test_from_csv_reads_records_vocabularies_and_counts(tmp_path):
    cat = Catalog.from_csv(_dataset(tmp_path / "ds", ROWS))
    assert len(cat) == 4 and cat.root == tmp_path / "ds"
    first = cat.records[0]
    assert first == Record(tmp_path / "ds" / "a.nii.gz", ("normal",), "CT", None, "p1")
    assert first.path.is_absolute()
    # several pathologies: sorted, so both spellings are the same class
    assert cat.records[1].pathologies == ("effusion", "nodule")
    assert cat.records[1].pathology == cat.records[3].pathology == "effusion|nodule"
    assert cat.records[3].subject is None
    assert cat.pathologies == ["effusion", "nodule", "normal"]
    assert cat.modalities == ["CT", "MR"]
    assert cat.class_counts() == {("effusion|nodule", "CT"): 2, ("normal", "CT"): 1, ("normal", "MR"): 1}
    assert cat.spatial_dims() == 3
    assert [r.path.name for r in cat] == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz"]
    assert pathology_label(["nodule", "effusion"]) == "effusion|nodule"


def test_load_sets_modality_and_pathology_from_the_csv(tmp_path):
    cat = Catalog.from_csv(_dataset(tmp_path / "ds", ROWS))
    scan = cat.load(2)
    assert scan.modality == "MR" and scan.metadata["pathology"] == "normal"
    assert float(scan.array.mean()) == 2.0  # the third file, not another
    assert cat.load(1).metadata["pathologies"] == ["effusion", "nodule"]


def test_absolute_paths_and_subfolders(tmp_path):
    write_scan(_volume(1.0), tmp_path / "elsewhere" / "x.nii.gz", "nifti")
    (tmp_path / "ds" / "sub").mkdir(parents=True)
    write_scan(_volume(2.0), tmp_path / "ds" / "sub" / "y.nii.gz", "nifti")
    csv_path = tmp_path / "ds" / "labels.csv"
    csv_path.write_text(
        f"path,pathology,modality\n{tmp_path / 'elsewhere' / 'x.nii.gz'},normal,CT\nsub/y.nii.gz,mass,CT\n"
    )
    cat = Catalog.from_csv(csv_path)
    assert [r.path for r in cat] == [tmp_path / "elsewhere" / "x.nii.gz", tmp_path / "ds" / "sub" / "y.nii.gz"]


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("", r"empty CSV; expected a header with columns path, pathology, modality"),
        ("path,pathology,modality\n", "no rows after the header"),
        (
            "path,label,modality\na.nii.gz,normal,CT\n",
            r"missing column\(s\) pathology; unknown column\(s\) 'label'; required: path, pathology, "
            r"modality; optional: split, subject",
        ),
        ("path,pathology,modality\nmissing.nii.gz,normal,CT\n", r"line 2: path 'missing.nii.gz' does not exist"),
        ("path,pathology,modality\na.nii.gz,,CT\n", r"line 2: empty 'pathology' cell"),
        ("path,pathology,modality\na.nii.gz,normal,\n", r"line 2: empty 'modality' cell"),
        ("path,pathology,modality\na.nii.gz,nodule|,CT\n", r"line 2: pathology 'nodule\|' has an empty label"),
        ("path,pathology,modality\na.nii.gz,nodule|nodule,CT\n", "repeats a label"),
        ("path,pathology,modality\na.nii.gz,a/b,CT\n", "contains '/'"),
        ("path,pathology,modality\na.nii.gz,normal,C T\n", "not a DICOM modality code"),
        (
            "path,pathology,modality\na.nii.gz,normal,CT\nb.nii.gz,normal,CT,extra\n",
            r"line 3: 4 cells, but the header has 3 columns",
        ),
        (
            "path,pathology,modality\na.nii.gz,normal,CT\n./a.nii.gz,mass,CT\n",
            r"line 3: path './a.nii.gz' is already listed on line 2",
        ),
        ("path,pathology,modality,split\na.nii.gz,normal,CT,\n", r"line 2: empty 'split' cell"),
        (
            "path,pathology,modality,split,subject\na.nii.gz,normal,CT,train,PAT-4711\nb.nii.gz,normal,CT,test,PAT-4711\n",
            r"lines 2 and 3 give the same subject the splits 'train' and 'test'",
        ),
    ],
)
def test_bad_csvs_are_input_errors_naming_line_and_problem(tmp_path, csv_text, message):
    for name in ("a.nii.gz", "b.nii.gz"):
        write_scan(_volume(0.0), tmp_path / name, "nifti")
    (tmp_path / "labels.csv").write_text(csv_text)
    with pytest.raises(InputError, match=message) as info:
        Catalog.from_csv(tmp_path / "labels.csv")
    assert str(info.value).startswith(str(tmp_path / "labels.csv"))
    assert "PAT-4711" not in str(info.value)  # subject values (possible identifiers) are never printed


def test_missing_csv_and_mixed_2d_3d(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Catalog.from_csv(tmp_path / "nope.csv")
    write_scan(_volume(0.0), tmp_path / "v.nii.gz", "nifti")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "s.png")
    (tmp_path / "labels.csv").write_text("path,pathology,modality\nv.nii.gz,normal,CT\ns.png,normal,CT\n")
    with pytest.raises(
        InputError, match=r"mixes 2D and 3D scans \(line 3: .*s\.png is 2D; line 2: .*v\.nii\.gz is 3D\)"
    ):
        Catalog.from_csv(tmp_path / "labels.csv")


def test_unreadable_scan_is_reported_with_its_line(tmp_path):
    (tmp_path / "bad.nii.gz").write_text("not nifti")
    (tmp_path / "labels.csv").write_text("path,pathology,modality\nbad.nii.gz,normal,CT\n")
    with pytest.raises(InputError, match=r"labels\.csv: line 2: .*bad\.nii\.gz: not a readable NIfTI"):
        Catalog.from_csv(tmp_path / "labels.csv")


def test_split_column_is_used_as_given(tmp_path):
    csv_path = _dataset(tmp_path / "ds", ROWS, header="path,pathology,modality,subject,split")
    parts = Catalog.from_csv(csv_path).split({"a": 0.5, "b": 0.5}, seed=3)
    assert {k: [r.path.name for r in v] for k, v in parts.items()} == {
        "train": ["a.nii.gz", "b.nii.gz"],
        "val": ["c.nii.gz"],
        "test": ["d.nii.gz"],
    }


def _many(tmp_path, n_subjects=20, per_subject=2):
    rows = []
    for s in range(n_subjects):
        pathology = "mass" if s < 3 else "normal"  # a rare class of 3 subjects
        for k in range(per_subject):
            rows.append((f"s{s:02d}_{k}.nii.gz", pathology, "CT", f"subj{s:02d}", ""))
    return Catalog.from_csv(_dataset(tmp_path / "many", rows))


def test_fraction_split_is_patient_disjoint_exact_and_deterministic(tmp_path):
    cat = _many(tmp_path)
    parts = cat.split({"train": 0.6, "val": 0.2, "test": 0.2}, seed=7)
    subjects = {k: {r.subject for r in v} for k, v in parts.items()}
    assert [len(subjects[k]) for k in ("train", "val", "test")] == [12, 4, 4]
    assert [len(parts[k]) for k in ("train", "val", "test")] == [24, 8, 8]
    assert not (
        subjects["train"] & subjects["val"]
        or subjects["train"] & subjects["test"]
        or subjects["val"] & subjects["test"]
    )
    # the rare class (3 subjects) is spread over the three parts by the stratified deal
    assert all(any(r.pathology == "mass" for r in parts[k]) for k in parts)
    again = cat.split({"train": 0.6, "val": 0.2, "test": 0.2}, seed=7)
    assert {k: v.records for k, v in again.items()} == {k: v.records for k, v in parts.items()}
    other = cat.split({"train": 0.6, "val": 0.2, "test": 0.2}, seed=8)
    assert {r.subject for r in other["val"]} != subjects["val"]


def test_default_split_and_records_without_subject(tmp_path):
    rows = [(f"x{k}.nii.gz", "normal", "CT", "", "") for k in range(10)]
    parts = Catalog.from_csv(_dataset(tmp_path / "ds", rows)).split()
    assert {k: len(v) for k, v in parts.items()} == {"train": 8, "val": 1, "test": 1}
    tiny = Catalog.from_csv(_dataset(tmp_path / "tiny", rows[:3])).split()
    assert {k: len(v) for k, v in tiny.items()} == {"train": 1, "val": 1, "test": 1}


def test_bad_fractions_and_too_few_subjects(tmp_path):
    cat = Catalog.from_csv(_dataset(tmp_path / "ds", ROWS[:2]))  # one subject (p1)
    with pytest.raises(InputError, match="cannot split 1 subject"):
        cat.split({"train": 0.5, "test": 0.5})
    with pytest.raises(InputError, match="sum to 0.9"):
        cat.split({"train": 0.5, "test": 0.4})
    with pytest.raises(InputError, match="must be a positive number"):
        cat.split({"train": 1.0, "test": 0.0})


def test_subset_fingerprint_and_csv_round_trip(tmp_path):
    cat = Catalog.from_csv(_dataset(tmp_path / "ds", ROWS))
    sub = cat.subset([3, 0])
    assert [r.path.name for r in sub] == ["d.nii.gz", "a.nii.gz"] and sub.spatial_dims() == 3

    fp = cat.fingerprint()
    expected = hashlib.sha256(b"a.nii.gz\nb.nii.gz\nc.nii.gz\nd.nii.gz").hexdigest()
    assert fp == {
        "counts": {"effusion|nodule/CT": 2, "normal/CT": 1, "normal/MR": 1},
        "file_list_sha256": expected,
    }
    text = json.dumps(fp)
    assert "p1" not in text and str(tmp_path) not in text  # no subject IDs, no absolute paths
    assert cat.subset([3, 2, 1, 0]).fingerprint() == fp  # order does not matter
    assert sub.fingerprint()["file_list_sha256"] != expected

    out = cat.to_csv(tmp_path / "ds" / "copy.csv")
    assert out.read_text().splitlines()[:2] == ["path,pathology,modality,subject", "a.nii.gz,normal,CT,p1"]
    assert Catalog.from_csv(out).records == cat.records
    elsewhere = cat.to_csv(tmp_path / "other" / "labels.csv")  # paths outside: absolute
    assert Catalog.from_csv(elsewhere).records == cat.records
    assert not list((tmp_path / "other").glob(".tmp-*"))


def test_load_rejects_dicom_modality_conflicting_with_csv(tmp_path):
    scan = Scan(np.zeros((1, 3, 4, 4), np.float32), np.eye(4), "MR")
    write_scan(scan, tmp_path / "series", "dicom", case_id="c1")
    (tmp_path / "labels.csv").write_text("path,pathology,modality\nseries,normal,CT\n")
    cat = Catalog.from_csv(tmp_path / "labels.csv")
    assert cat.spatial_dims() == 3
    with pytest.raises(InputError, match="Modality is MR but the dataset CSV says CT"):
        cat.load(0)


def test_empty_catalog_has_no_dimensionality(tmp_path):
    with pytest.raises(InputError, match="empty"):
        Catalog([], tmp_path).spatial_dims()
