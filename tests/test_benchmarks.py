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


def test_bench_decode_runs_and_its_seamless_decodes_equal_the_whole_one(tmp_path):
    out = tmp_path / "decode.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_decode.py"),
            "curve",
            "--sizes",
            "32",
            "--max-memory",
            "12MB",
            "--window",
            "2",
            "--steps",
            "1",
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
    rows = {(r["what"], r.get("window"), r.get("max_memory")): r for r in json.loads(out.read_text())["rows"]}
    budgeted, hand = rows[("seamless", None, "12MB")], rows[("seamless", 2, None)]
    assert budgeted["plan"].startswith("slabs of") and hand["plan"].startswith("slabs of 2 latent rows")
    for r in (budgeted, hand):
        assert r["max_abs_hu"] <= 1.0 and r["mean_abs_hu"] <= 0.1
    assert rows[("sliding", None, None)]["mean_abs_hu"] > 0.1  # per-window GroupNorm: seams
