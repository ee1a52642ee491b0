"""2D images without patient geometry: PNG, TIFF and JPEG in, PNG previews out.

Geometry of an image read from these formats (they store none): the array is ``(1, H, W)``
with ``H`` the image rows, 1 mm pixels, and the radiological display convention of an
axial slice: going down the rows goes posterior (-y in RAS), going right along a row goes
to the patient's left (-x in RAS), the slice normal is superior (+z) with 1 mm thickness.
``scan.orientation`` is therefore ``"PL"``, and ``scan.geometry_guessed`` says that all of
it is assumed. ``describe_image`` gives the same facts from the file header alone.

Colour images become one luminance channel, ``Y = 0.299 R + 0.587 G + 0.114 B``
(ITU-R BT.601, the weights Pillow uses for mode "L"); an alpha channel is dropped.
Grey values are kept as stored (0..255 for 8-bit, 0..65535 for 16-bit, floats as floats).

Writing (``write_png``) makes previews, not archives: intensities are windowed to 8 or
16 bits, so a PNG does not give back Hounsfield units. Use NIfTI or DICOM to keep values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np

from medsynth.errors import InputError, file_error
from medsynth.io.atomic import atomic_path
from medsynth.io.scan import Scan, ScanInfo

PNG_SUFFIXES = (".png",)
TIFF_SUFFIXES = (".tif", ".tiff")
JPEG_SUFFIXES = (".jpg", ".jpeg")
IMAGE_SUFFIXES = PNG_SUFFIXES + TIFF_SUFFIXES + JPEG_SUFFIXES

# CT soft-tissue window (level 40 HU, width 400 HU): the common default of clinical viewers
# for abdomen/chest soft tissue, used when a CT scan carries no window of its own.
DEFAULT_CT_WINDOW = (40.0, 400.0)

# rows go posterior, columns go to the patient's left, normal superior; 1 mm everywhere.
DISPLAY_AFFINE = np.array([[0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])

_LUMA = np.array([0.299, 0.587, 0.114])

# Display directions (RAS unit vectors) per plane: (down the rows, right along a row).
# Axial: anterior at the top, patient's right on the image's left (radiological).
# Coronal: superior at the top, patient's right on the left. Sagittal: superior at the
# top, anterior on the left.
_DISPLAY_DIRECTIONS = {
    "sagittal": (np.array([0.0, 0.0, -1.0]), np.array([0.0, -1.0, 0.0])),
    "coronal": (np.array([0.0, 0.0, -1.0]), np.array([-1.0, 0.0, 0.0])),
    "axial": (np.array([0.0, -1.0, 0.0]), np.array([-1.0, 0.0, 0.0])),
}


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True for names ending in .png, .tif, .tiff, .jpg or .jpeg (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def read_png(path: str | os.PathLike[str], modality: str = "OT") -> Scan:
    """Read a 2D PNG, TIFF or JPEG image as a one-channel 2D ``Scan``.

    Args:
        path: the image file.
        modality: DICOM modality code to record; the file does not store one.

    Returns:
        A ``Scan`` of shape ``(1, H, W)`` with the display geometry of the module docstring.

    Raises:
        InputError: missing, empty or unreadable file, a multi-page/animated image, or an
            image that is not grey or colour.

    Example:
        >>> scan = read_png("chest.png", modality="DX")  # doctest: +SKIP
        >>> scan.orientation  # doctest: +SKIP
        'PL'
    """
    path = Path(path)
    _check_file(path)
    gray = _read_gray(path)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise file_error(path, f"image has shape {gray.shape}, expected a 2D image")
    source = _source(path)
    return Scan(gray[None], DISPLAY_AFFINE.copy(), modality, {"source_format": source}, _guessed(source))


def describe_image(path: str | os.PathLike[str], modality: str = "OT") -> ScanInfo:
    """What ``read_png`` would give, from the file header alone (no pixel is decoded).

    Pillow and tifffile parse headers lazily: the size, mode and page count come without
    decoding. Where the header cannot answer (neither library parses it, several frames or
    pages, an unusual sample layout), the full read gives the answer or its one-line error.
    """
    path = Path(path)
    _check_file(path)
    shape = _header_shape(path)
    if shape is None:
        return read_png(path, modality).info
    source = _source(path)
    return ScanInfo(shape, 1, DISPLAY_AFFINE.copy(), modality, {"source_format": source}, _guessed(source))


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise file_error(path, "no such file" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise file_error(path, "empty file (0 bytes), expected a PNG, TIFF or JPEG image")


def _source(path: Path) -> str:
    name = str(path).lower()
    return "tiff" if name.endswith(TIFF_SUFFIXES) else "jpeg" if name.endswith(JPEG_SUFFIXES) else "png"


def _guessed(source: str) -> str:
    """``Scan.geometry_guessed`` of every image read from these formats: they store no geometry."""
    return f"{source.upper()} stores no patient geometry: 1 mm pixels, axial display orientation, origin 0"


def _header_shape(path: Path) -> tuple[int, int] | None:
    """``(rows, columns)`` from the header of a one-frame 2D image; None when the header cannot tell."""
    if str(path).lower().endswith(TIFF_SUFFIXES):
        # tifffile first, as ``_read_gray``: it parses TIFFs that Pillow cannot open.
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if len(tif.pages) == 1:
                    page = cast("tifffile.TiffPage", tif.pages[0])
                    if page.imagedepth == 1 and page.samplesperpixel <= 4:
                        return int(page.imagelength), int(page.imagewidth)
                return None
        except Exception:  # tifffile raises many types; Pillow may still parse it
            pass
    from PIL import Image

    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) != 1:
                return None  # the reader refuses it with its own message
            width, height = img.size
    except Exception:  # Pillow raises many types for malformed files; the reader says why
        return None
    return (int(height), int(width)) if min(width, height) >= 1 else None


def peek_image_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(rows, columns)`` of a PNG/TIFF/JPEG image from its header (Pillow decodes lazily)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as exc:  # Pillow raises many types for malformed files; see _read_gray
        raise file_error(path, f"not a readable image ({_short(exc)})") from exc
    return int(height), int(width)


def _read_gray(path: Path) -> np.ndarray:
    """Pixels as a 2D float32 array of grey values (luminance for colour)."""
    tiff_error = None
    if str(path).lower().endswith(TIFF_SUFFIXES):
        # tifffile first: it keeps 16-bit and float colour samples that Pillow would reduce
        # or refuse. Pillow second: it decodes LZW/JPEG-compressed TIFFs without the
        # optional imagecodecs package that tifffile needs for them.
        try:
            return _tifffile_gray(path)
        except InputError:
            raise
        except Exception as exc:  # tifffile raises many types for files it cannot decode
            tiff_error = exc
    from PIL import Image

    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise file_error(
                    path,
                    f"image has {frames} frames/pages; medsynth reads single 2D images from "
                    "PNG/TIFF/JPEG: save a 3D stack as NIfTI or DICOM",
                )
            return _pil_to_gray(img, path)
    except InputError:
        raise
    # Pillow raises many types for malformed files (UnidentifiedImageError, OSError,
    # SyntaxError, struct.error, DecompressionBombError...): all are the file's fault.
    except Exception as exc:
        also = f"; tifffile: {_short(tiff_error)}" if tiff_error is not None else ""
        raise file_error(path, f"not a readable image ({_short(exc)}{also})") from exc


def _pil_to_gray(img, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "1":
        img = img.convert("L")
    elif mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif mode == "LA":
        img = img.convert("L")  # drops the alpha channel
    elif mode == "RGBA":
        img = img.convert("RGB")
    return _to_gray(np.asarray(img), path)  # decoding errors reach _read_gray's handler


def _tifffile_gray(path: Path) -> np.ndarray:
    import tifffile

    supported = (
        tifffile.PHOTOMETRIC.MINISBLACK,
        tifffile.PHOTOMETRIC.MINISWHITE,
        tifffile.PHOTOMETRIC.RGB,
        tifffile.PHOTOMETRIC.PALETTE,
    )

    with tifffile.TiffFile(path) as tif:
        if len(tif.pages) > 1:
            raise file_error(
                path,
                f"TIFF has {len(tif.pages)} pages; medsynth reads single 2D images from TIFF: "
                "save a 3D stack as NIfTI or DICOM",
            )
        page = cast("tifffile.TiffPage", tif.pages[0])  # the first page is never a TiffFrame
        photometric = tifffile.PHOTOMETRIC(page.photometric)
        if photometric not in supported:
            # e.g. YCbCr or CMYK: Pillow converts those to RGB (the caller falls back to it)
            raise ValueError(f"photometric {photometric.name} is left to Pillow")
        arr = page.asarray()
        if arr.ndim == 3 and page.axes.startswith("S"):
            arr = np.moveaxis(arr, 0, -1)  # planar configuration: samples first
        if photometric == tifffile.PHOTOMETRIC.PALETTE:
            # A palette TIFF without a colormap fails here (TypeError) and falls back to Pillow.
            colormap = cast(np.ndarray, page.colormap)
            arr = np.moveaxis(colormap[:, arr], 0, -1)  # indices -> RGB
        elif photometric == tifffile.PHOTOMETRIC.MINISWHITE:
            if arr.dtype.kind not in "ui":
                raise file_error(path, "min-is-white TIFF with non-integer samples cannot be inverted")
            arr = np.iinfo(arr.dtype).max - arr  # 0 means white: invert so higher is brighter
    return _to_gray(arr, path)


def _to_gray(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise file_error(path, f"unsupported pixel type {arr.dtype}, expected grey or colour pixels")
    if arr.ndim == 2:
        return arr.astype(np.float32)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float64)  # alpha, if any, is dropped
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0].astype(np.float32)  # grey stored as colour: keep values exact
        return (rgb @ _LUMA).astype(np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 2:
        return arr[..., 0].astype(np.float32)  # grey + alpha
    raise file_error(path, f"image has shape {arr.shape}, expected a grey or colour 2D image")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def display_array(scan: Scan) -> np.ndarray:
    """The 2D scan's pixels flipped/transposed to the radiological display convention.

    The plane is the affine's dominant slice-normal axis; rows then run anterior->posterior
    (axial) or superior->inferior (coronal, sagittal), and columns run patient right->left
    (axial, coronal) or anterior->posterior (sagittal). Only flips and a transpose are used,
    never resampling, so pixel values are unchanged. A scan read by ``read_png`` is already
    in this convention and comes back unchanged.

    Args:
        scan: a 2D scan.

    Returns:
        A float32 array ``(C, rows, columns)`` as a viewer would show it.
    """
    if scan.spatial_dims != 2:
        raise InputError(f"display_array needs a 2D scan; got {scan.spatial_dims}D shape {scan.shape}")
    pixels = scan.array
    d0, d1, normal = (scan.affine[:3, k] / np.linalg.norm(scan.affine[:3, k]) for k in range(3))
    plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
    down, right = _DISPLAY_DIRECTIONS[plane]
    if abs(d1 @ down) + abs(d0 @ right) > abs(d0 @ down) + abs(d1 @ right):
        pixels, d0, d1 = pixels.transpose(0, 2, 1), d1, d0
    if d0 @ down < 0:
        pixels = pixels[:, ::-1, :]
    if d1 @ right < 0:
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels, dtype=np.float32)


def preview_window(scan: Scan, window: tuple[float, float] | None = None) -> tuple[float, float]:
    """The (center, width) used to map intensities to grey levels.

    Order: ``window`` if given; else the scan's ``window_center``/``window_width`` metadata;
    else for CT the soft-tissue window W400/L40; else the scan's min..max (a constant image
    gets width 1 so it maps to black).
    """
    if window is not None:
        center, width = (float(v) for v in window)
    elif "window_center" in scan.metadata and "window_width" in scan.metadata:
        center, width = float(scan.metadata["window_center"]), float(scan.metadata["window_width"])
    elif scan.modality == "CT":
        center, width = DEFAULT_CT_WINDOW
    else:
        lo, hi = float(scan.array.min()), float(scan.array.max())
        width = hi - lo if hi > lo else 1.0
        center = lo + width / 2
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise InputError(f"window (center={center}, width={width}) is invalid: width must be > 0")
    return center, width


def write_png(
    scan: Scan,
    path: str | os.PathLike[str],
    bits: int = 8,
    window: tuple[float, float] | None = None,
    text: dict[str, str] | None = None,
) -> Path:
    """Write a 2D scan as a PNG preview (atomic).

    Intensities are clipped to ``center +- width/2`` (see ``preview_window``) and scaled
    linearly to 0..255 (``bits=8``) or 0..65535 (``bits=16``); the image is shown in the
    radiological display convention (``display_array``). A three-channel scan (colour
    DICOM, values 0..255) is written as 8-bit RGB, windowed only when ``window`` is given.

    Args:
        scan: a 2D scan with 1 or 3 channels (3D scans: write NIfTI or DICOM instead).
        path: destination ending in ``.png``.
        bits: 8 or 16.
        window: ``(center, width)`` in the scan's units, e.g. ``(-600, 1500)`` for CT lung.
        text: PNG text chunks (keyword -> value; tEXt, or iTXt for values beyond Latin-1);
            ``write_scan`` passes ``Provenance.png_text()``: ``Synthetic`` YES or NO, a
            ``Description``, ``Software``, ``Model`` and ``Case``.

    Returns:
        The path written.

    Example:
        >>> write_png(ct_slice, "slice.png", window=(-600, 1500))  # doctest: +SKIP
    """
    from PIL import Image

    path = Path(path)
    if not str(path).lower().endswith(PNG_SUFFIXES):
        raise InputError(f"{path}: a PNG file name must end in .png")
    if bits not in (8, 16):
        raise InputError(f"bits={bits!r} is not supported for PNG: use 8 or 16")
    if scan.spatial_dims != 2:
        raise InputError(
            f"{path}: PNG holds 2D images only; this scan is 3D with shape {scan.shape}: write NIfTI or DICOM instead"
        )
    channels = scan.array.shape[0]
    if channels not in (1, 3):
        raise InputError(f"{path}: scan has {channels} channels; PNG previews take 1 (grey) or 3 (RGB)")
    if channels == 3 and bits != 8:
        raise InputError(f"{path}: colour (3-channel) PNG previews are 8-bit; use bits=8")
    if not np.all(np.isfinite(scan.array)):
        raise InputError(f"{path}: the scan holds NaN or infinite values; a PNG cannot show them")
    if channels == 3 and window is None:
        center, width = 127.5, 255.0  # colour scans hold display values 0..255 already
    else:
        center, width = preview_window(scan, window)
    unit = np.clip((display_array(scan) - (center - width / 2)) / width, 0.0, 1.0)
    top = 255 if bits == 8 else 65535
    pixels = np.round(unit * top).astype(np.uint8 if bits == 8 else np.uint16)
    image = pixels[0] if channels == 1 else np.moveaxis(pixels, 0, -1)
    info = None
    if text:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            if not (1 <= len(key) <= 79 and key.isascii() and key.isprintable()) or key != key.strip():
                raise InputError(f"{path}: PNG text keyword {key!r}: expected 1-79 printable ASCII characters")
            info.add_text(key, value)  # Pillow writes iTXt when the value is not Latin-1
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
    return path
