"""Fixtures every test folder may use (folder conftests hold the rest)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def dciodvfy_errors():
    """``errors(path)``: the Error lines dciodvfy (dicom3tools) prints for a file; skips without it.

    The 2022 dictionary in dciodvfy predates SyntheticData (0008,001C): its complaint is expected
    and left out.
    """
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")

    def errors(path) -> list[str]:
        proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
        lines = (proc.stdout + proc.stderr).splitlines()
        return [ln for ln in lines if ln.startswith("Error") and "(0008,001c)" not in ln.lower()]

    return errors


# The generation time recorded in generated DICOM (Study Date/Time) and in a run's
# .medsynth-run.json: pinned, so that tests comparing two separate runs byte for byte (resume,
# torchrun, machine faults) compare like with like. Tests of the time itself unset it.
os.environ.setdefault("SOURCE_DATE_EPOCH", "1795000000")  # 2026-11-18 UTC
