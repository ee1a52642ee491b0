"""SIGKILL a real `medsynth generate` at several moments, resume, and compare with an uninterrupted run.

Byte identity covers every written file (DICOM, NIfTI, PNG), dataset.json, and the manifest and
rejection lines without their ``created`` timestamps (documented in docs/protocols.md); only
summary.json (timings) is left out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medsynth.protocol import generate

HELPER = Path(__file__).with_name("crash_generate.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one thread, as conftest


def _lines(out: Path) -> int:
    path = out / "manifest.jsonl"
    return path.read_text().count("\n") if path.exists() else 0  # complete lines only


@pytest.fixture(scope="module")
def crash_run(gated_model, gated_protocol, output_tree, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A gated protocol with batches [n0 n1 n2] [n3] [m0 m1 m2], and the tree of its uninterrupted run.

    The privacy index holds a copy of n2's first attempt, so n2 is flagged, recorded in
    rejected.jsonl and resampled: resume must reproduce that too, and the privacy report.
    """
    root = tmp_path_factory.mktemp("crash")
    quotas = [
        {"pathology": "normal", "modality": "CT", "count": 4},
        {"pathology": "mass|nodule", "modality": "MR", "count": 3},
    ]
    doc = gated_protocol(gated_model, quotas, alpha=0.001)
    doc["output"]["formats"] = ["dicom", "nifti", "png"]
    doc["sampler"]["batch_size"] = 3
    protocol = root / "protocol.yaml"
    protocol.write_text(yaml.safe_dump(doc))
    generate(protocol, out=root / "reference")
    tree = output_tree(root / "reference")
    assert sum(1 for k in tree if k.startswith("nifti/")) == 7
    rejected = [json.loads(x) for x in (root / "reference" / "rejected.jsonl").read_text().splitlines()]
    assert ("normal-CT-00002", 0) in {(r["case_id"], r["attempt"]) for r in rejected}
    assert "privacy_report.html" in tree
    return protocol, tree


def _crash(kind: str, n: int, protocol: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(HELPER), kind, str(n), "--", "generate", str(protocol), "--out", str(out), "--json"]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def test_sigkill_at_chosen_moments_then_resume_equals_uninterrupted(crash_run, output_tree, tmp_path):
    protocol, expected = crash_run
    out = tmp_path / "out"
    moments = [
        # mid-batch: the resumed run recomputes batch 0 whole and writes n2 only
        ("after-append", 2, 2, None),
        # n2 done; n3's DICOM folder is in place, its NIfTI a finished temporary
        ("at-replace", 5, 3, lambda: list((out / "nifti").glob(".tmp-*")) and (out / "dicom/normal-CT-00003").is_dir()),
        # n3's files are all in place again, its manifest line torn in half
        ("mid-append", 1, 3, lambda: not (out / "manifest.jsonl").read_text().endswith("\n")),
    ]
    for kind, n, lines_after, state in moments:
        proc = _crash(kind, n, protocol, out)
        assert proc.returncode == -signal.SIGKILL, (kind, proc.returncode, proc.stderr[-2000:])
        assert _lines(out) == lines_after, kind
        assert state is None or state(), f"the kill at {kind} {n} did not leave the expected debris"
    assert not (out / "summary.json").exists()

    result = generate(protocol, out=out)  # the same command again: it resumes
    assert result.summary["written"] == 7
    assert not list(out.rglob(".tmp-*"))
    assert output_tree(out) == expected


def test_sigkill_from_outside_at_a_random_moment(crash_run, output_tree, tmp_path):
    """No hook: killed as soon as the first case is listed, wherever the run happens to be then."""
    protocol, expected = crash_run
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medsynth.cli", "generate", str(protocol), "--out", str(out), "--json"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _lines(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Four more cases (two batches) were still to come, so the kill lands inside the run.
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 1 <= _lines(out) < 7
    generate(protocol, out=out)
    assert not list(out.rglob(".tmp-*"))
    assert output_tree(out) == expected
