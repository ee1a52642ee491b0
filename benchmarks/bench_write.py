"""Streaming writers: peak memory and time of writing a large CT as DICOM and NIfTI.

Each measurement runs in a fresh subprocess. The child builds the volume in place (one
slice at a time, so building it leaves no temporaries behind), writes a tiny scan first
(imports, highdicom's first use), resets the kernel's peak-RSS mark to the current RSS
(``/proc/self/clear_refs``; that RSS is the baseline, the process with the volume loaded;
without the reset, ``ru_maxrss`` before the write is). It writes the volume once; the growth
of ``ru_maxrss`` over the baseline, in copies of the float32 volume, is what the writer held
at its peak.

The volume is what a model produces: float HU (body -1000 outside an ellipse, soft tissue
with noise inside), fractional, so DICOM rounds it to int16 and NIfTI keeps float32;
``nifti.gz-int`` rounds it first (whole HU, as a converted scanner CT), so NIfTI is int16.

``--writers-from DIR`` measures other writers instead of medsynth's: ``DIR/write.py``
(``write_dicom``) and ``DIR/nifti.py`` (``write_nifti``), e.g. the whole-array writers of
the commit before streaming, for a before/after comparison:

    mkdir -p /tmp/old && git show <commit>:medsynth/io/dicom/write.py > /tmp/old/write.py \\
        && git show <commit>:medsynth/io/nifti.py > /tmp/old/nifti.py

Usage:
    python benchmarks/bench_write.py                        # 512x512x256, all formats
    python benchmarks/bench_write.py --writers-from /tmp/old --out /tmp/write-old.json
    python benchmarks/bench_write.py --shape 64,128,128 --formats dicom
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("dicom", "nifti.gz", "nifti.gz-int", "nifti")


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: cannot import")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _writers(source: str | None) -> tuple[Any, Any]:
    if source is None:
        from medsynth.io.dicom.write import write_dicom
        from medsynth.io.nifti import write_nifti

        return write_dicom, write_nifti
    root = Path(source)
    return _load(root / "write.py", "bench_old_write").write_dicom, _load(
        root / "nifti.py", "bench_old_nifti"
    ).write_nifti


def _volume(shape: tuple[int, int, int], integral: bool) -> np.ndarray:
    """A (1, D, H, W) float32 CT-like volume, filled slice by slice (no whole-volume temporary)."""
    d, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.48 * w)) ** 2 < 1.0
    rng = np.random.default_rng(0)
    out = np.empty((1, d, h, w), np.float32)
    for k in range(d):
        tissue = 40.0 + 25.0 * rng.standard_normal((h, w), dtype=np.float32)
        out[0, k] = np.where(body, tissue, -1000.0 + 5.0 * rng.standard_normal((h, w), dtype=np.float32))
        if integral:
            np.round(out[0, k], out=out[0, k])
    return out


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _status(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``) in bytes; None where absent."""
    try:
        with open("/proc/self/status") as fh:
            return next((int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":")), None)
    except OSError:
        return None


def _reset_hwm() -> bool:
    """Reset the peak RSS (``VmHWM``, which ``ru_maxrss`` reads) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(fmt: str, shape: tuple[int, int, int], source: str | None) -> dict[str, Any]:
    from medsynth.io.scan import Scan

    write_dicom, write_nifti = _writers(source)
    scan = Scan(_volume(shape, fmt == "nifti.gz-int"), np.diag([0.7, 0.7, 1.25, 1.0]), "CT")
    tiny = Scan(np.zeros((1, 2, 4, 4), np.float32), np.eye(4), "CT")
    with tempfile.TemporaryDirectory(prefix="bench-write-") as tmp:
        out = Path(tmp)
        if fmt == "dicom":

            def write(scan: Scan, name: str) -> Path:
                write_dicom(scan, out / name, case_id="bench", uid_namespace="bench")
                return out / name
        else:
            suffix = ".nii" if fmt == "nifti" else ".nii.gz"

            def write(scan: Scan, name: str) -> Path:
                return write_nifti(scan, out / f"{name}{suffix}")

        write(tiny, "warm")
        # The peak so far includes what building the volume and the imports touched and then
        # freed; reset to the current RSS (the process with the volume loaded), ru_maxrss then
        # measures the write alone. Where the reset is refused, the old peak is the baseline.
        reset = _reset_hwm()
        rss = _status("VmRSS") if reset else None
        baseline = rss if rss is not None else _maxrss()
        start = time.perf_counter()
        written = write(scan, "case")
        seconds = time.perf_counter() - start
        peak = _maxrss()
        size = sum(p.stat().st_size for p in written.rglob("*")) if written.is_dir() else written.stat().st_size
    volume = scan.array.nbytes
    return {
        "format": fmt,
        "writers": source or "medsynth",
        "shape_dhw": list(shape),
        "volume_mb": round(volume / 2**20, 1),
        "baseline_rss_mb": round(baseline / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "above_baseline_mb": round((peak - baseline) / 2**20, 1),
        "volume_copies": round((peak - baseline) / volume, 2),
        "baseline": "VmRSS at a peak reset (clear_refs)" if rss is not None else "ru_maxrss before the write",
        "seconds": round(seconds, 2),
        "written_mb": round(size / 2**20, 1),
    }


def machine() -> dict[str, Any]:
    with open("/proc/meminfo") as fh:
        total = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal"))
    return {
        "cpu_count": os.cpu_count(),
        "memory_gib": round(total / 2**20, 1),
        "platform": platform.platform(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "numpy": np.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="256,512,512", help="D,H,W of the volume (slices, rows, columns)")
    ap.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)}")
    ap.add_argument("--writers-from", default=None, help="folder with write.py and nifti.py to measure instead")
    ap.add_argument("--out", default=None, help="also write the results here as JSON")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    dims = [int(v) for v in args.shape.split(",")]
    if len(dims) != 3:
        raise SystemExit(f"--shape {args.shape!r}: expected D,H,W")
    shape = (dims[0], dims[1], dims[2])
    if args.child:
        print(json.dumps(child(args.child, shape, args.writers_from)))
        return
    results = []
    for fmt in args.formats.split(","):
        if fmt not in FORMATS:
            raise SystemExit(f"--formats: {fmt!r} is not one of {', '.join(FORMATS)}")
        cmd = [sys.executable, __file__, "--child", fmt, "--shape", args.shape]
        if args.writers_from:
            cmd += ["--writers-from", args.writers_from]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{fmt}: the measurement failed:\n{done.stderr}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(row)
        print(
            f"{fmt:13s} {row['writers']:10s} +{row['above_baseline_mb']:7.1f} MB above baseline "
            f"= {row['volume_copies']:.2f} volume copies, {row['seconds']:.1f} s, {row['written_mb']} MB written"
        )
    report = {"machine": machine(), "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["machine"]))


if __name__ == "__main__":
    main()
