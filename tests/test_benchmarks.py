"""The benchmark scripts run end to end on tiny sizes (their figures live in docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_privacy_runs_and_catches_its_planted_copies(tmp_path):
    out = tmp_path / "privacy.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_privacy.py"),
            "--train",
            "48",
            "--holdout",
            "24",
            "--synthetic",
            "20",
            "--copies",
            "4",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result = json.loads(out.read_text())
    assert result["copies_caught"] == "4/4"
    assert result["synthetic"] == 20 and result["seconds_check"] > 0
