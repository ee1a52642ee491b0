"""Faults of the machine during `medsynth generate`, on real small file systems (tmpfs mounts).

A tmpfs filled mid-run, then given more room, must resume to exactly the uninterrupted result;
a read-only one must be refused. Each fault is one stderr line naming the file and the cause,
with exit status 4 (docs/protocols.md, "Faults of the machine"). Mounting needs root (CI runs as
root); elsewhere these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medsynth.cli import main

PAGE = 4096  # tmpfs charges whole pages


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Callable[[int], Path]]:
    """``tmpfs(size_bytes)`` -> a fresh tmpfs mount point of that size; every mount is undone at teardown."""
    mounted: list[Path] = []

    def make(size: int) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        proc = _mount("-t", "tmpfs", "-o", f"size={size // 1024}k", "tmpfs", str(point))
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root; mount said: {proc.stderr.strip()})")
        mounted.append(point)
        return point

    yield make
    for point in reversed(mounted):
        if subprocess.run(["umount", str(point)], capture_output=True, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=60)


def _remount(point: Path, options: str) -> None:
    proc = _mount("-o", f"remount,{options}", str(point))
    assert proc.returncode == 0, proc.stderr


def _used(point: Path) -> int:
    st = os.statvfs(point)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _generate(protocol: Path, out: Path, capsys) -> tuple[int, list[str]]:
    """`medsynth generate PROTOCOL --out OUT --json` in this process: (exit status, stderr lines)."""
    code = main(["generate", str(protocol), "--out", str(out), "--json"])
    return code, capsys.readouterr().err.splitlines()


def _manifest_lines(out: Path) -> int:
    path = out / "manifest.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _assert_one_line(err: list[str], out: Path, cause: str) -> str:
    """The fault is one line: ``medsynth: error: <file under out>: <cause> (<remedy>)``, no traceback."""
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith(f"medsynth: error: {out}"), line
    assert f": {cause} (" in line and "rerun the same command: it resumes" in line, line
    assert "Traceback" not in line and "With tag" not in line and "[Errno" not in line, line
    return line


@pytest.fixture(scope="module")
def reference(model_dirs, make_protocol, output_tree, tmp_path_factory) -> tuple[Path, dict[str, str], int]:
    """A protocol writing DICOM, NIfTI and PNG, its uninterrupted output tree, and the bytes that
    output takes on a tmpfs (measured on one, so the small mounts below are sized in its pages)."""
    import yaml

    root = tmp_path_factory.mktemp("faults")
    doc = make_protocol(model_dirs["2d"])
    doc["output"]["formats"] = ["dicom", "nifti", "png"]
    protocol = root / "protocol.yaml"
    protocol.write_text(yaml.safe_dump(doc))
    point = root / "measure"
    point.mkdir()
    if _mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(point)).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        assert main(["generate", str(protocol), "--out", str(point / "out"), "--json"]) == 0
        used = _used(point)
        tree = output_tree(point / "out")
    finally:
        subprocess.run(["umount", str(point)], capture_output=True, timeout=60)
    assert sum(1 for k in tree if k.startswith("nifti/")) == 5
    return protocol, tree, used


@pytest.mark.parametrize("fraction", [0.35, 0.7, 0.95])
def test_disk_full_mid_run_is_one_line_then_resumes_exactly(reference, tmpfs, output_tree, capsys, fraction):
    protocol, expected, used = reference
    point = tmpfs(max(2, round(used * fraction / PAGE)) * PAGE)
    out = point / "out"
    code, err = _generate(protocol, out, capsys)
    assert code == 4, err
    line = _assert_one_line(err, out, "no space left on device")
    named = Path(line.removeprefix("medsynth: error: ").split(": ")[0])
    assert named.is_relative_to(out), line
    with capsys.disabled():  # shown with -s: the line a user sees
        print(f"\n{line}")
    if fraction < 0.5:
        assert 0 < _manifest_lines(out) < 5, "the disk should fill mid-run, after some cases"
    _remount(point, "size=8m")  # free space
    code, err = _generate(protocol, out, capsys)
    assert code == 0, err
    assert output_tree(out) == expected
    assert not list(out.rglob(".tmp-*"))


def test_read_only_output_folder_is_refused_in_one_line(reference, tmpfs, capsys):
    protocol, _, _ = reference
    point = tmpfs(1 << 20)
    _remount(point, "ro")
    code, err = _generate(protocol, point / "out", capsys)
    assert code == 4, err
    _assert_one_line(err, point / "out", "read-only file system")


def test_a_partial_run_on_a_read_only_folder_is_refused_then_resumes(reference, tmpfs, output_tree, capsys):
    """Disk full, then the folder turns read-only (say a failing disk remounted ro): the rerun
    touches nothing and says so; once writable again it resumes to the uninterrupted result."""
    protocol, expected, used = reference
    point = tmpfs(max(2, round(used * 0.5 / PAGE)) * PAGE)
    out = point / "out"
    assert _generate(protocol, out, capsys)[0] == 4
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _remount(point, "ro,size=8m")
    code, err = _generate(protocol, out, capsys)
    assert code == 4, err
    _assert_one_line(err, out, "read-only file system")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    _remount(point, "rw")
    assert _generate(protocol, out, capsys)[0] == 0
    assert output_tree(out) == expected
    assert json.loads((out / "summary.json").read_text())["written"] == 5
