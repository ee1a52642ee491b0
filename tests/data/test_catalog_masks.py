"""The dataset CSV's optional mask column: header checks at from_csv, grid and pathology checks at load_mask."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.data.catalog import Catalog
from medsynth.errors import InputError
from medsynth.io import write_scan
from medsynth.io.dicom import write_dicom
from medsynth.io.masks import write_mask_nifti, write_mask_png, write_seg
from medsynth.io.scan import Scan

AFFINE_3D = np.diag([0.8, 0.7, 2.0, 1.0])
AFFINE_2D = np.array([[0.0, -0.6, 0.0, 10.0], [-0.5, 0.0, 0.0, 20.0], [0.0, 0.0, 3.0, -5.0], [0.0, 0.0, 0.0, 1.0]])


def _scan(shape: tuple[int, ...], value: float = 0.0, affine: np.ndarray | None = None) -> Scan:
    affine = (AFFINE_3D if len(shape) == 3 else AFFINE_2D) if affine is None else affine
    return Scan(np.full((1, *shape), value, np.float32), affine, "CT")


def _lesion(shape: tuple[int, ...]) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[(1,) * len(shape)] = True
    m[tuple(slice(2, 4) for _ in shape)] = True
    return m


def _csv(root, rows: list[str], header: str = "path,pathology,modality,mask"):
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root / "labels.csv"


@pytest.fixture
def dataset_3d(tmp_path):
    """a: nodule with a mask; b: normal with an empty mask; c: normal without one."""
    shape = (6, 5, 4)
    for k, name in enumerate("abc"):
        write_scan(_scan(shape, float(k)), tmp_path / f"{name}.nii.gz", "nifti")
    (tmp_path / "masks").mkdir()
    write_mask_nifti(_lesion(shape), _scan(shape), tmp_path / "masks" / "a.nii.gz")
    write_mask_nifti(np.zeros(shape, bool), _scan(shape), tmp_path / "masks" / "b.nii.gz")
    rows = ["a.nii.gz,nodule,CT,masks/a.nii.gz", "b.nii.gz,normal,CT,masks/b.nii.gz", "c.nii.gz,normal,CT,"]
    return _csv(tmp_path, rows), shape


def test_mask_column_happy_path_3d(tmp_path, dataset_3d):
    csv_path, shape = dataset_3d
    cat = Catalog.from_csv(csv_path)
    assert cat.has_masks
    assert [r.mask for r in cat] == [tmp_path / "masks" / "a.nii.gz", tmp_path / "masks" / "b.nii.gz", None]
    mask = cat.load_mask(0)
    assert mask is not None and mask.dtype == bool and mask.shape == (1, *shape)
    assert np.array_equal(mask[0], _lesion(shape))
    scan = cat.load(1)
    empty = cat.load_mask(1, scan)
    assert empty is not None and not empty.any()  # an empty mask on a normal scan is fine
    assert cat.load_mask(2) is None
    fp = cat.fingerprint()
    assert fp["masks"] == 2 and len(fp["mask_list_sha256"]) == 64
    # to_csv keeps the column, relative to the new CSV's folder; from_csv reads it back.
    again = Catalog.from_csv(cat.to_csv(tmp_path / "copy.csv"))
    assert [r.mask for r in again] == [r.mask for r in cat]
    assert (tmp_path / "copy.csv").read_text().splitlines()[1] == "a.nii.gz,nodule,CT,masks/a.nii.gz"


def test_without_masks_nothing_changes(tmp_path, dataset_3d):
    plain = _csv(tmp_path, ["a.nii.gz,nodule,CT", "b.nii.gz,normal,CT"], header="path,pathology,modality")
    cat = Catalog.from_csv(plain)
    assert not cat.has_masks and cat.load_mask(0) is None
    assert set(cat.fingerprint()) == {"counts", "file_list_sha256"}
    assert "mask" not in cat.to_csv(tmp_path / "copy.csv").read_text().splitlines()[0]
    # A mask column with only empty cells is the same dataset as none.
    (tmp_path / "empty.csv").write_text("path,pathology,modality,mask\na.nii.gz,nodule,CT,\nb.nii.gz,normal,CT,\n")
    assert Catalog.from_csv(tmp_path / "empty.csv").fingerprint() == cat.fingerprint()


def test_mask_column_happy_path_2d_png(tmp_path):
    scan = _scan((7, 9))
    write_scan(scan, tmp_path / "a.png", "png")
    write_scan(scan, tmp_path / "b.nii.gz", "nifti")
    write_mask_png(_lesion((7, 9)), scan, tmp_path / "a-mask.png")
    write_mask_png(_lesion((7, 9)), scan, tmp_path / "b-mask.png")  # a PNG mask of a NIfTI slice: as displayed
    cat = Catalog.from_csv(_csv(tmp_path, ["a.png,mass,CT,a-mask.png", "b.nii.gz,mass,CT,b-mask.png"]))
    assert cat.spatial_dims() == 2
    b = cat.load_mask(1)
    assert b is not None and np.array_equal(b[0], _lesion((7, 9)))
    a = cat.load_mask(0)
    assert a is not None and a.shape == (1, *cat.load(0).shape) and a.sum() == _lesion((7, 9)).sum()


def test_seg_mask_of_a_dicom_series(tmp_path):
    scan = _scan((4, 6, 5), 100.0)
    write_dicom(scan, tmp_path / "ct", case_id="cat-1")
    write_seg(_lesion(scan.shape), tmp_path / "ct", tmp_path / "seg.dcm", pathology="nodule", like=scan)
    cat = Catalog.from_csv(_csv(tmp_path, ["ct,nodule,CT,seg.dcm"]))
    loaded = cat.load(0)
    mask = cat.load_mask(0, loaded)
    assert mask is not None and mask.shape == (1, *loaded.shape) and mask.sum() == _lesion(scan.shape).sum()


def test_mask_on_another_grid_is_an_error_at_load_mask(tmp_path, dataset_3d):
    _, shape = dataset_3d
    finer = _scan(shape, affine=np.diag([0.4, 0.7, 2.0, 1.0]))
    write_mask_nifti(_lesion(shape), finer, tmp_path / "masks" / "a.nii.gz")
    cat = Catalog.from_csv(tmp_path / "labels.csv")  # same shape: the header check passes
    with pytest.raises(InputError) as info:
        cat.load_mask(0)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "masks" / "a.nii.gz"))
    assert "voxel spacing differs" in message
    assert "spacing (0.4, 0.7, 2.0) mm" in message and "spacing (0.8, 0.7, 2.0) mm" in message
    assert "resample it onto the scan" in message


def test_empty_mask_on_a_lesion_row_is_an_error(tmp_path, dataset_3d):
    _, shape = dataset_3d
    write_mask_nifti(np.zeros(shape, bool), _scan(shape), tmp_path / "masks" / "a.nii.gz")
    cat = Catalog.from_csv(tmp_path / "labels.csv")
    with pytest.raises(
        InputError, match=r"masks/a.nii.gz: the mask of .*a.nii.gz is empty, but its pathology is 'nodule'"
    ):
        cat.load_mask(0)


def test_mask_on_a_normal_row_is_an_error(tmp_path, dataset_3d):
    _, shape = dataset_3d
    write_mask_nifti(_lesion(shape), _scan(shape), tmp_path / "masks" / "b.nii.gz")
    cat = Catalog.from_csv(tmp_path / "labels.csv")
    with pytest.raises(InputError, match=r"marks 9 voxel\(s\), but the scan is 'normal', which has no lesion"):
        cat.load_mask(1)


def test_mask_of_another_size_is_an_error_at_from_csv(tmp_path, dataset_3d):
    write_mask_nifti(_lesion((6, 5, 3)), _scan((6, 5, 3)), tmp_path / "masks" / "b.nii.gz")
    with pytest.raises(InputError) as info:
        Catalog.from_csv(tmp_path / "labels.csv")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'labels.csv'}: line 3: mask ")
    assert "has shape (6, 5, 3), but its scan" in message and "has shape (6, 5, 4)" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("masks/missing.nii.gz", r"line 2: mask 'masks/missing.nii.gz' does not exist \(looked for "),
        ("masks", r"line 2: mask 'masks' is a folder; a mask is one file"),
    ],
)
def test_missing_mask_file_is_an_error_at_from_csv(tmp_path, dataset_3d, cell, message):
    _csv(tmp_path, [f"a.nii.gz,nodule,CT,{cell}"])
    with pytest.raises(InputError, match=message):
        Catalog.from_csv(tmp_path / "labels.csv")
