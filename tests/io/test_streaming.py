"""The DICOM and NIfTI writers stream: same files as the whole-array logic, bounded memory.

The references below reimplement, minimally, what the writers did before they streamed
(whole-array casting and rounding, one ``nibabel.save`` of the whole image), so a change
in the streamed bytes shows up here. ``SLAB_BYTES`` is shrunk so that tiny volumes still
span many slabs.
"""

from __future__ import annotations

import io
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

import medsynth.io.nifti as nifti
import medsynth.io.streaming as streaming
from medsynth.io.atomic import TMP_PREFIX
from medsynth.io.dicom import write as dicom_write
from medsynth.io.dicom.write import write_dicom
from medsynth.io.nifti import write_nifti
from medsynth.io.scan import Scan
from medsynth.io.streaming import volume_stats

WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.fixture
def small_slabs(monkeypatch):
    """Slabs of about 600 bytes: one or two slices each for the scans here."""
    monkeypatch.setattr(streaming, "SLAB_BYTES", 600)


def _scan(kind: str, dims: int, affine: np.ndarray) -> Scan:
    rng = np.random.default_rng([len(kind), ord(kind[-1]), dims])
    shape = (1, 5, 9, 7) if dims == 3 else (1, 9, 7)
    values = rng.normal(0.0, 400.0, shape)
    if kind == "ct_int":
        return Scan(np.round(values), affine, "CT")
    if kind == "ct_frac":
        return Scan(values, affine, "CT")
    if kind == "mr":
        return Scan(np.abs(values) * 1.7, affine, "MR")
    if kind == "ct_nan":  # NIfTI only: DICOM refuses it
        values[0, 1, 2] = np.nan
        return Scan(np.round(values), affine, "CT")
    raise AssertionError(kind)


def _affine(dims: int, oblique_affine: np.ndarray) -> np.ndarray:
    if dims == 3:
        return oblique_affine
    affine = oblique_affine.copy()
    affine[:3, 2] = np.cross(affine[:3, 0], affine[:3, 1]) / np.linalg.norm(np.cross(affine[:3, 0], affine[:3, 1]))
    return affine


# --- NIfTI --------------------------------------------------------------------------------


def _reference_nifti(scan: Scan, path: Path, description: str) -> bytes:
    """The committed whole-array writer: cast the volume, build the image, ``nib.save`` it."""
    data = scan.array[0]
    fits = np.all(np.isfinite(data)) and data.min() >= -32768 and data.max() <= 32767 and np.all(data == np.round(data))
    data = data.astype(np.int16) if scan.modality == "CT" and fits else data.astype(np.float32)
    if data.ndim == 2:
        data = data[:, :, None]
    img = nib.Nifti1Image(data, scan.affine)
    img.set_sform(scan.affine, code=1)
    img.set_qform(scan.affine, code=1)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = description.encode("ascii")
    nib.save(img, path)
    return path.read_bytes()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kind", ["ct_int", "ct_frac", "mr", "ct_nan"])
def test_streamed_nifti_is_byte_identical(tmp_path, oblique_affine, small_slabs, kind, dims, suffix):
    scan = _scan(kind, dims, _affine(dims, oblique_affine))
    text = "synthetic medsynth case=c-1 model=m"
    streamed = write_nifti(scan, tmp_path / f"streamed{suffix}", description=text).read_bytes()
    assert streamed == _reference_nifti(scan, tmp_path / f"reference{suffix}", text)
    # The dtype choice the reference makes is the one streamed: int16 only for whole-number CT.
    back = nib.load(tmp_path / f"streamed{suffix}")
    assert back.get_data_dtype() == (np.int16 if kind == "ct_int" else np.float32)
    np.testing.assert_array_equal(np.asarray(back.dataobj).reshape(scan.shape), scan.array[0])


def test_nifti_failure_mid_stream_leaves_nothing(tmp_path, monkeypatch, small_slabs):
    """A write that fails after some slabs leaves the earlier file as it was, and no temporary."""
    scan = _scan("ct_frac", 3, np.diag([1.0, 1.0, 2.0, 1.0]))
    path = tmp_path / "case.nii.gz"
    before = write_nifti(scan, path).read_bytes()

    def voxels(data, fh, dtype):
        for i, part in enumerate(streaming.slabs(data.shape[2], data.shape[0] * data.shape[1] * 4)):
            if i == 2:
                raise RuntimeError("disk vanished")
            fh.write(np.ascontiguousarray(data[:, :, part].transpose(2, 1, 0)).astype(dtype).tobytes())

    monkeypatch.setattr(nifti, "_write_voxels", voxels)
    with pytest.raises(RuntimeError, match="disk vanished"):
        write_nifti(scan.with_array(scan.array + 1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["case.nii.gz"]


# --- DICOM --------------------------------------------------------------------------------


def _reference_encoding(scan: Scan, iod: str) -> tuple[np.ndarray, str, str]:
    """The committed whole-array encoding: stored integers of the whole volume, slope, intercept."""
    values = scan.array[0]
    if iod == "MR":
        stored = np.round(values)
        return stored.astype(np.uint16 if stored.min() >= 0 else np.int16), "1", "0"
    lo, hi = float(values.min()), float(values.max())
    integral = bool(np.all(values == np.round(values)))
    if scan.modality == "CT" and lo >= -32768 and hi <= 32767:
        return np.round(values).astype(np.int16), "1", "0"
    if integral and lo >= 0 and hi <= 65535:
        return values.astype(np.uint16), "1", "0"
    if integral and lo >= -32768 and hi <= 32767:
        return values.astype(np.int16), "1", "0"
    signed = lo < 0
    slope = dicom_write._ds(max(abs(lo), abs(hi)) / ((32767 if signed else 65535) - 1))
    return np.round(values / float(slope)).astype(np.int16 if signed else np.uint16), slope, "0"


def _reference_window(scan: Scan) -> tuple[str, str]:
    values = scan.array[0]
    lo, hi = np.percentile(values.ravel()[:: max(1, values.size // 1_000_000)], [0.5, 99.5])
    return dicom_write._ds((lo + hi) / 2), dicom_write._ds(max(hi - lo, 1.0))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize(
    ("kind", "modality", "sop_class"),
    [
        ("ct_int", "CT", "auto"),
        ("ct_frac", "CT", "auto"),
        ("mr", "MR", "auto"),
        ("mr", "OT", "sc"),
        ("ct_frac", "OT", "auto"),
        ("ct_int", "OT", "auto"),
    ],
)
def test_streamed_dicom_matches_whole_array_encoding(
    tmp_path, oblique_affine, small_slabs, kind, modality, sop_class, dims
):
    base = _scan(kind, dims, _affine(dims, oblique_affine))
    scan = Scan(base.array, base.affine, modality)
    files = write_dicom(scan, tmp_path / "s", case_id="c-1", sop_class=sop_class, created=WHEN, uid_namespace="p")
    iod = "SC" if sop_class == "sc" or modality not in ("CT", "MR") else modality
    stored, slope, intercept = _reference_encoding(scan, iod)
    frames = list(stored) if dims == 3 else [stored]
    assert len(files) == len(frames)
    for path, frame in zip(files, frames, strict=True):
        raw = path.read_bytes()
        ds = pydicom.dcmread(io.BytesIO(raw))
        assert ds.PixelData == np.ascontiguousarray(frame, dtype="<i2" if frame.dtype == np.int16 else "<u2").tobytes()
        assert ds.PixelRepresentation == (1 if frame.dtype == np.int16 else 0)
        if iod != "MR":
            assert (str(ds.RescaleSlope), str(ds.RescaleIntercept)) == (slope, intercept)
        if modality != "CT":
            assert (str(ds.WindowCenter), str(ds.WindowWidth)) == _reference_window(scan)
        # The rest of the file is what the (unchanged) header code writes: writing the parsed
        # dataset again, with the reference pixels put in, gives the streamed bytes exactly.
        ds.PixelData = np.ascontiguousarray(frame, dtype="<i2" if frame.dtype == np.int16 else "<u2").tobytes()
        again = io.BytesIO()
        ds.save_as(again, enforce_file_format=True)
        assert again.getvalue() == raw


def test_streamed_rgb_dicom_matches_whole_array(tmp_path, small_slabs):
    rng = np.random.default_rng(3)
    scan = Scan(rng.uniform(0, 255, (3, 4, 6, 5)), np.diag([0.5, 0.5, 2.0, 1.0]), "OT")
    files = write_dicom(scan, tmp_path / "rgb", case_id="rgb", created=WHEN)
    whole = np.round(np.moveaxis(scan.array, 0, -1)).astype(np.uint8)
    assert [pydicom.dcmread(p).PixelData for p in files] == [f.tobytes() for f in whole]


def test_dicom_same_arguments_same_bytes_whatever_the_slabs(tmp_path, oblique_affine, monkeypatch):
    """Slab size is an implementation detail: tiny slabs and one slab give the same series."""
    scan = _scan("mr", 3, oblique_affine)
    one = write_dicom(scan, tmp_path / "a", case_id="c", created=WHEN)
    monkeypatch.setattr(streaming, "SLAB_BYTES", 1)
    many = write_dicom(scan, tmp_path / "b", case_id="c", created=WHEN)
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in many]


def test_dicom_failure_mid_series_leaves_nothing(tmp_path, oblique_affine, monkeypatch):
    scan = _scan("ct_frac", 3, oblique_affine)
    real = dicom_write._Encoding.encode
    seen = []

    def encode(self, frame):
        seen.append(1)
        if len(seen) == 3:
            raise RuntimeError("disk vanished")
        return real(self, frame)

    monkeypatch.setattr(dicom_write._Encoding, "encode", encode)
    with pytest.raises(RuntimeError, match="disk vanished"):
        write_dicom(scan, tmp_path / "series", case_id="c")
    assert len(seen) == 3  # slices were encoded one at a time, inside the atomic write
    assert list(tmp_path.iterdir()) == []


def test_dicom_refuses_non_finite_before_writing(tmp_path, oblique_affine, small_slabs):
    array = _scan("ct_frac", 3, oblique_affine).array.copy()
    array[0, -1, -1, -1] = np.inf  # in the last slab
    with pytest.raises(Exception, match="NaN or infinite"):
        write_dicom(Scan(array, oblique_affine, "CT"), tmp_path / "s", case_id="c")
    assert not any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir())
    assert not (tmp_path / "s").exists()


# --- the streaming pass itself ---------------------------------------------------------------


@pytest.mark.parametrize("case", ["frac_last", "integral", "nan_last", "inf_first", "single"])
def test_volume_stats_equals_whole_array(case, small_slabs):
    rng = np.random.default_rng(4)
    a = np.round(rng.normal(0, 100, (11, 6, 5))).astype(np.float32)
    if case == "frac_last":
        a[-1, -1, -1] = 0.5
    if case == "nan_last":
        a[-1, 0, 0] = np.nan
    if case == "inf_first":
        a[0, 0, 0] = -np.inf
    a[5, 2, 2], a[9, 0, 1] = -777.0, 888.0  # extremes away from the first slab
    if case == "single":
        a = a[:1]
    s = volume_stats(a)
    assert s.finite == bool(np.all(np.isfinite(a)))
    if s.finite:
        assert (s.lo, s.hi) == (float(a.min()), float(a.max()))
        assert s.integral == bool(np.all(a == np.round(a)))
    else:
        assert not s.integral


# --- memory ---------------------------------------------------------------------------------


def _peak_bytes(write) -> int:
    tracemalloc.start()
    try:
        write()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["dicom", "nifti_int16", "nifti_float32"])
def test_writers_peak_below_one_volume(tmp_path, fmt):
    """A 32 MB float32 CT: the whole-array writers peaked at 1-1.5 volumes of temporaries
    (tracemalloc traces numpy's allocations); streamed, the peak is a few slabs
    (``SLAB_BYTES``) and slices, well below one volume.

    DICOM: 32 slices of 512x512 (its time goes into per-file headers, so few large slices);
    NIfTI: 128 slices of 256x256.
    """
    shape = (32, 512, 512) if fmt == "dicom" else (128, 256, 256)
    # A ramp keeps gzip quick and the generation cheap; whole numbers for the int16 NIfTI.
    ramp = np.linspace(-1000.0, 1000.0, shape[1] * shape[2], dtype=np.float32).reshape(shape[1:])
    array = np.empty((1, *shape), np.float32)
    for k in range(shape[0]):
        array[0, k] = ramp + (k if fmt == "nifti_int16" else k + 0.25)
    if fmt == "nifti_int16":
        np.round(array, out=array)
    scan = Scan(array, np.diag([2.0, 0.7, 0.7, 1.0]), "CT")
    tiny = Scan(np.zeros((1, 2, 4, 4), np.float32), np.eye(4), "CT")
    if fmt == "dicom":
        write_dicom(tiny, tmp_path / "warm", case_id="w")  # first use imports highdicom: not the writer's
        peak = _peak_bytes(lambda: write_dicom(scan, tmp_path / "big", case_id="big", uid_namespace="n"))
        assert len(list((tmp_path / "big").iterdir())) == shape[0]
    else:
        write_nifti(tiny, tmp_path / "warm.nii.gz")
        peak = _peak_bytes(lambda: write_nifti(scan, tmp_path / "big.nii.gz"))
        assert nib.load(tmp_path / "big.nii.gz").get_data_dtype() == (np.int16 if fmt == "nifti_int16" else np.float32)
    assert peak < 0.75 * array.nbytes, f"peak {peak / array.nbytes:.2f} volumes"
