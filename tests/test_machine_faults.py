"""Faults of the machine as one line with exit status 4: the errno mapping, the atomic-write
helper, libraries that wrap the OSError (pydicom, safetensors), and the CLI's last resort.

The real file systems (a tmpfs filled mid-run, a read-only one) are in
tests/protocol/test_machine_faults.py.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest

from medsynth.cli import main
from medsynth.errors import InputError, MachineError, machine_error, os_error_line
from medsynth.io.atomic import atomic_path, atomic_write_text


def _pydicom_style(code: int) -> OSError:
    """An OSError wrapped the way pydicom's ``tag_in_exception`` wraps a failed write: a new
    OSError without errno whose text holds the whole traceback, caused by the original."""
    from pydicom.tag import Tag, tag_in_exception

    try:
        with tag_in_exception(Tag(0x7FE00010)):
            raise OSError(code, "No space left on device")
    except OSError as exc:
        assert exc.errno is None and "Traceback" in str(exc)  # what pydicom 3 does today
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("code", "cause", "remedy"),
    [
        (errno.ENOSPC, "no space left on device", "free space and rerun the same command: it resumes"),
        (errno.EACCES, "permission denied", "fix the folder's permissions"),
        (errno.EPERM, "permission denied", "fix the folder's permissions"),
        (errno.EROFS, "read-only file system", "make it writable"),
        (errno.EIO, "I/O error or network share interrupted", "reconnect the share"),
        (errno.ESTALE, "I/O error or network share interrupted", "reconnect the share"),
        (errno.ENOTCONN, "I/O error or network share interrupted", "reconnect the share"),
    ],
)
def test_errno_becomes_file_cause_and_remedy(code, cause, remedy, tmp_path):
    dest = tmp_path / "out" / "case.nii.gz"
    err = machine_error(OSError(code, "whatever the C library says"), dest, output=True)
    assert isinstance(err, MachineError) and err.exit_code == 4 and err.errno == code
    assert str(err).startswith(f"{dest}: {cause} (") and remedy in str(err)
    assert "\n" not in str(err)


def test_a_wrapped_oserror_is_still_one_line(tmp_path):
    dest = tmp_path / "dicom" / "case-0001"
    err = machine_error(RuntimeError("writing failed"), dest)
    assert err is None  # nothing in the chain is an OS error: a bug, not the machine
    wrapped = _pydicom_style(errno.ENOSPC)
    try:
        raise ValueError("could not write the series") from wrapped
    except ValueError as outer:
        err = machine_error(outer, dest, output=True)
    assert isinstance(err, MachineError)
    assert str(err) == f"{dest}: no space left on device (free space and rerun the same command: it resumes)"


def test_a_library_that_keeps_only_the_text_still_maps(tmp_path):
    """safetensors reports Rust's io::Error as a message: ``... (os error 28)``."""
    from safetensors import SafetensorError

    exc = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    err = machine_error(exc, tmp_path / "state.safetensors")
    assert isinstance(err, MachineError) and "no space left on device" in str(err)


def test_a_missing_input_is_no_machine_fault(tmp_path):
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "in.nii.gz"))
    assert machine_error(missing) is None
    assert machine_error(missing, output=True) is None  # its folder is there: not a vanished output
    assert main(["inspect", str(tmp_path / "in.nii.gz")]) == 2  # still bad input


def test_atomic_write_names_its_destination_when_the_library_names_none(tmp_path, monkeypatch):
    from PIL import Image

    from medsynth.io import write_scan
    from medsynth.io.scan import Scan

    def denied(self, fp, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")  # as from f.write: no filename

    monkeypatch.setattr(Image.Image, "save", denied)
    scan = Scan(np.zeros((1, 8, 8), np.float32), np.eye(4), "OT")
    dest = tmp_path / "png" / "case.png"
    with pytest.raises(MachineError) as info:
        write_scan(scan, dest, "png")
    assert str(info.value).startswith(f"{dest}: permission denied (fix the folder's permissions")
    assert not list(dest.parent.iterdir())  # no temporary left behind


def test_a_pydicom_wrapped_write_error_in_the_atomic_helper(tmp_path):
    dest = tmp_path / "dicom" / "case-0001"
    with pytest.raises(MachineError) as info, atomic_path(dest) as tmp:
        tmp.mkdir()
        raise _pydicom_style(errno.ENOSPC)
    assert str(info.value) == f"{dest}: no space left on device (free space and rerun the same command: it resumes)"
    assert not list(dest.parent.iterdir())


def test_a_vanished_output_folder(tmp_path):
    dest = tmp_path / "out" / "nifti" / "case.nii.gz"
    with pytest.raises(MachineError) as info, atomic_path(dest) as tmp:
        shutil.rmtree(tmp_path / "out")  # an unmounted share, a deleted folder
        tmp.write_bytes(b"scan")
    assert str(info.value).startswith(f"{dest}: the output folder vanished (restore or remount it and rerun")


def test_errors_that_are_not_the_machines_pass_through(tmp_path):
    with pytest.raises(InputError), atomic_path(tmp_path / "x.json"):
        raise InputError("bad value")
    with pytest.raises(IsADirectoryError), atomic_path(tmp_path / "y.json") as tmp:
        tmp.mkdir()
        tmp.write_text("{}")  # EISDIR: a bug of the caller, not of the machine


def test_the_jsonl_appender_names_its_file(tmp_path, monkeypatch):
    from medsynth.protocol import manifest as manifest_module
    from medsynth.protocol.manifest import JsonlAppender

    path = tmp_path / "manifest.jsonl"
    appender = JsonlAppender(path)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifest_module.os, "write", full)
    record = type("R", (), {"to_json": lambda self: "{}"})()
    with pytest.raises(MachineError) as info:
        appender.append(record)
    appender.close()
    assert str(info.value).startswith(f"{path}: no space left on device (")


def test_cli_maps_a_stray_oserror_to_exit_4(monkeypatch, tmp_path, capsys):
    """A write site that no helper guards: the CLI still prints the machine-fault line, not 'internal error'."""
    import medsynth.io as io

    def eio(*args, **kwargs):
        raise _pydicom_style(errno.EIO)

    monkeypatch.setattr(io, "convert", eio)
    src = tmp_path / "a.png"
    src.write_bytes(b"")
    assert main(["convert", str(src), str(tmp_path / "b.nii.gz"), "--format", "nifti"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medsynth: error: "), err
    assert "I/O error or network share interrupted" in err and "Traceback" not in err and "internal" not in err


def test_cli_maps_a_bare_oserror_of_any_errno(monkeypatch, tmp_path, capsys):
    import medsynth.io as io

    dest = str(tmp_path / "b.nii.gz")
    errors = iter(
        [
            OSError(errno.EBUSY, "Device or resource busy", dest),
            OSError(errno.ENAMETOOLONG, "File name too long", dest),  # the path named, not the machine
        ]
    )

    def fail(*args, **kwargs):
        raise next(errors)

    monkeypatch.setattr(io, "convert", fail)
    args = ["convert", str(tmp_path / "a.png"), dest, "--format", "nifti"]
    assert main(args) == 4
    assert capsys.readouterr().err == (
        f"medsynth: error: {dest}: device or resource busy (fix it and rerun the same command: it resumes)\n"
    )
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"medsynth: error: {dest}: file name too long (check the path, then run the same command again)\n"
    )


def test_os_error_line_keeps_the_first_line_of_a_long_text():
    err = os_error_line(OSError("Something broke\nTraceback (most recent call last):\n  ..."), "out")
    assert str(err) == "out: something broke (fix it and rerun the same command: it resumes)"


def test_atomic_write_text_maps_a_full_disk(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(MachineError, match=r"labels\.csv: no space left on device"):
        atomic_write_text(tmp_path / "labels.csv", "a,b\n")
