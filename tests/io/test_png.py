"""PNG/TIFF/JPEG reading (geometry, grey levels, colour) and PNG previews (windowing, display)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from medsynth.errors import InputError
from medsynth.io.png import DISPLAY_AFFINE, display_array, read_png, write_png
from medsynth.io.scan import Scan


def test_grey_png_geometry_follows_the_display_convention(tmp_path):
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20  # 3 rows, 4 columns
    Image.fromarray(pixels).save(tmp_path / "g.png")
    scan = read_png(tmp_path / "g.png", modality="dx")
    assert scan.array.shape == (1, 3, 4) and scan.modality == "DX"
    np.testing.assert_array_equal(scan.array[0], pixels)  # values kept as stored
    assert scan.spacing == (1.0, 1.0) and scan.slice_thickness == 1.0
    assert scan.orientation == "PL"
    # down the rows: posterior (-y); along a row: patient left (-x)
    np.testing.assert_allclose(scan.affine @ [1, 0, 0, 1], [0, -1, 0, 1])
    np.testing.assert_allclose(scan.affine @ [0, 1, 0, 1], [-1, 0, 0, 1])
    assert read_png(tmp_path / "g.png").modality == "OT"


def test_16bit_png_and_float_tiff_keep_values(tmp_path):
    deep = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_png(tmp_path / "deep.png").array[0], deep)
    floats = np.linspace(-3.5, 9.25, 30, dtype=np.float32).reshape(5, 6)
    tifffile.imwrite(tmp_path / "f.tif", floats)
    scan = read_png(tmp_path / "f.tif")
    np.testing.assert_array_equal(scan.array[0], floats)
    assert scan.metadata["source_format"] == "tiff"


def test_colour_becomes_bt601_luminance(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    expected = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(read_png(tmp_path / "c.png").array[0], expected, atol=1e-3)
    # Pillow's own "L" conversion (rounded to integers) agrees within rounding
    pil_l = np.asarray(Image.open(tmp_path / "c.png").convert("L"), dtype=np.float64)
    assert np.abs(read_png(tmp_path / "c.png").array[0] - pil_l).max() <= 1.0
    # grey stored as RGBA: exact grey values, alpha dropped
    grey = rng.integers(0, 256, size=(4, 4), dtype=np.uint8)
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 7)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "ga.png")
    np.testing.assert_array_equal(read_png(tmp_path / "ga.png").array[0], grey)
    # 16-bit colour TIFF keeps its precision (Pillow alone would reduce it to 8 bits)
    rgb16 = rng.integers(0, 65536, size=(3, 4, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c16.tif", rgb16, photometric="rgb")
    np.testing.assert_allclose(read_png(tmp_path / "c16.tif").array[0], rgb16 @ [0.299, 0.587, 0.114], rtol=1e-6)


def test_compressed_and_min_is_white_tiffs(tmp_path):
    pixels = np.arange(30, dtype=np.uint8).reshape(5, 6)
    Image.fromarray(pixels).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_png(tmp_path / "lzw.tif").array[0], pixels)
    tifffile.imwrite(tmp_path / "mw.tif", pixels, photometric="miniswhite")
    np.testing.assert_array_equal(read_png(tmp_path / "mw.tif").array[0], 255 - pixels)


def test_stacks_and_broken_files_are_one_line_input_errors(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((4, 5, 6), np.uint16), photometric="minisblack")
    (tmp_path / "text.png").write_text("not a png")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((64, 64), np.uint8) + 9).save(tmp_path / "good.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    cases = {
        "stack.tif": "4 pages",
        "text.png": "not a readable image",
        "empty.png": "empty file",
        "cut.png": "not a readable image",
        "none.png": "no such file",
    }
    for name, reason in cases.items():
        with pytest.raises(InputError) as info:
            read_png(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name)) and reason in str(info.value)
        assert "\n" not in str(info.value)


def _slice(values: np.ndarray, modality: str = "CT", **meta) -> Scan:
    return Scan(values[None].astype(np.float32), DISPLAY_AFFINE, modality, meta)


def test_ct_default_window_is_soft_tissue_w400_l40(tmp_path):
    hu = np.array([[-1000, -160, 40], [240, 1000, 0]], dtype=np.float32)
    out = write_png(_slice(hu), tmp_path / "ct.png")
    with Image.open(out) as img:
        assert img.mode == "L"
        got = np.asarray(img)
    np.testing.assert_array_equal(got, [[0, 0, 128], [255, 255, 102]])
    # the scan's own window wins over the default, an explicit window over both
    own = write_png(_slice(hu, window_center=0.0, window_width=2000.0), tmp_path / "own.png")
    np.testing.assert_array_equal(np.asarray(Image.open(own))[0], [0, 107, 133])
    lung = write_png(_slice(hu), tmp_path / "lung.png", window=(-500, 1600))
    np.testing.assert_array_equal(np.asarray(Image.open(lung))[0], [48, 182, 214])


def test_16bit_preview_of_mr_uses_min_to_max(tmp_path):
    mr = np.array([[100.0, 200.0], [300.0, 500.0]])
    out = write_png(_slice(mr, "MR"), tmp_path / "mr.png", bits=16)
    back = read_png(out)
    np.testing.assert_array_equal(back.array[0], np.round((mr - 100.0) / 400.0 * 65535))


@pytest.mark.parametrize(
    ("columns", "marker", "plane"),
    [
        # axial, RAS index order (as read from NIfTI): i -> right, j -> anterior
        (([1, 0, 0], [0, 1, 0], [0, 0, 1]), (-1, -1), "axial"),
        # coronal: i -> right, j -> superior
        (([1, 0, 0], [0, 0, 1], [0, 1, 0]), (-1, -1), "coronal"),
        # sagittal: i -> anterior, j -> inferior
        (([0, 1, 0], [0, 0, -1], [1, 0, 0]), (-1, 0), "sagittal"),
    ],
)
def test_previews_are_shown_in_radiological_orientation(tmp_path, columns, marker, plane):
    """The pixel at the top-left corner of the display is patient right-anterior (axial),
    right-superior (coronal) or anterior-superior (sagittal)."""
    affine = np.eye(4)
    affine[:3, :3] = np.array(columns, dtype=float).T
    values = np.zeros((5, 7), np.float32)
    values[marker] = 100.0
    scan = Scan(values[None], affine, "MR")
    shown = display_array(scan)
    assert shown.shape[0] == 1 and shown[0, 0, 0] == 100.0 and shown.sum() == 100.0
    out = write_png(scan, tmp_path / f"{plane}.png")
    assert np.asarray(Image.open(out))[0, 0] == 255


def test_png_read_write_round_trip_is_identity_in_geometry(tmp_path):
    pixels = np.arange(35, dtype=np.uint8).reshape(5, 7)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    scan = read_png(tmp_path / "in.png")
    np.testing.assert_array_equal(display_array(scan)[0], pixels)  # already in display order
    out = write_png(scan, tmp_path / "out.png", window=(127.5, 255.0))
    np.testing.assert_array_equal(read_png(out).array, scan.array)


def test_write_png_rejects_3d_bad_bits_bad_names_and_nan(tmp_path, ct_volume):
    with pytest.raises(InputError, match="PNG holds 2D images only"):
        write_png(ct_volume, tmp_path / "v.png")
    flat = _slice(np.zeros((3, 3)))
    with pytest.raises(InputError, match="use 8 or 16"):
        write_png(flat, tmp_path / "x.png", bits=12)
    with pytest.raises(InputError, match=r"must end in \.png"):
        write_png(flat, tmp_path / "x.jpg")
    with pytest.raises(InputError, match="width must be > 0"):
        write_png(flat, tmp_path / "x.png", window=(0, 0))
    with pytest.raises(InputError, match="NaN"):
        write_png(_slice(np.full((2, 2), np.nan)), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_colour_scan_is_written_as_rgb(tmp_path):
    rgb = np.stack([np.full((3, 4), v, np.float32) for v in (10.0, 128.0, 250.0)])
    scan = Scan(rgb, DISPLAY_AFFINE, "OT")
    out = write_png(scan, tmp_path / "rgb.png")
    with Image.open(out) as img:
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img)[1, 2], [10, 128, 250])
    with pytest.raises(InputError, match="8-bit"):
        write_png(scan, tmp_path / "rgb16.png", bits=16)
    with pytest.raises(InputError, match="2 channels"):
        write_png(Scan(rgb[:2], DISPLAY_AFFINE, "OT"), tmp_path / "two.png")


def test_jpeg_reads_as_grey(tmp_path):
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "x.jpg", quality=100)
    scan = read_png(tmp_path / "x.jpg", modality="CR")
    assert scan.shape == (8, 8) and scan.metadata["source_format"] == "jpeg"
    assert np.abs(scan.array - 200).max() <= 1  # lossy, but a flat image survives
