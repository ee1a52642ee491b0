"""The benchmark scripts run end to end on tiny sizes (their figures live in docs/performance.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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


def _load_benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"bench_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_decode_runs_and_its_seamless_decodes_equal_the_whole_one(tmp_path):
    import torch

    out = tmp_path / "decode.json"
    threads = torch.get_num_threads()
    # In this process (--in-process, main() called directly): no torch import per measurement,
    # so the smoke test takes seconds; the measurements' code paths are the benchmark's own.
    argv = [
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
        "--in-process",
    ]
    try:
        assert _load_benchmark("decode").main([*argv, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = {(r["what"], r.get("window"), r.get("max_memory")): r for r in json.loads(out.read_text())["rows"]}
    budgeted, hand = rows[("seamless", None, "12MB")], rows[("seamless", 2, None)]
    assert budgeted["plan"].startswith("slabs of") and hand["plan"].startswith("slabs of 2 latent rows")
    for r in (budgeted, hand):
        assert r["max_abs_hu"] <= 1.0 and r["mean_abs_hu"] <= 0.1
    assert rows[("sliding", None, None)]["mean_abs_hu"] > 0.1  # per-window GroupNorm: seams


def test_finetune_proof_runs_two_arms_on_a_tiny_base(tmp_path):
    """End to end on a 16-pixel base: data, two finetune arms, accuracy per class, the gate on the new class."""
    spec = importlib.util.spec_from_file_location("tiny_finetune", REPO / "tests" / "training" / "test_finetune.py")
    assert spec is not None and spec.loader is not None
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)  # for its tiny base: the one the fine-tuning tests use
    base = helpers._tiny_base(2, tmp_path / "base")
    proof = importlib.util.spec_from_file_location("finetune_proof", REPO / "benchmarks" / "finetune_proof.py")
    assert proof is not None and proof.loader is not None
    module = importlib.util.module_from_spec(proof)
    proof.loader.exec_module(module)
    out = tmp_path / "out"
    argv = ["--base", str(base), "--n-scans", "10", "--size", "32", "--arms", "lora-prior,embedding"]
    argv += ["--steps", "2", "--batch-size", "2", "--n", "2", "--sampling-steps", "2", "--n-train", "4"]
    argv += ["--epochs", "1", "--prior-samples", "1", "--threads", "1", "--out", str(out)]
    assert module.main(argv) == 0
    r = json.loads((out / "finetune_proof.json").read_text())
    assert list(r["arms"]) == ["lora-prior", "embedding"]
    old = {f"{p}|{m}" for p in helpers.BASE_PATHOLOGIES for m in ("CT", "MR")}
    assert set(r["base_eval"]["per_class"]) == old
    for arm in r["arms"].values():
        per_class = arm["eval"]["per_class"]
        assert set(per_class) == old | {"pneumothorax|CT", "pneumothorax|MR"}
        assert all(0.0 <= v <= 1.0 for v in per_class.values())
        assert arm["adapter_bytes"] > 0 and arm["peak_rss_mb"] > 0 and arm["n_train"] + arm["n_holdout"] == 10
        mem = arm["eval"]["memorization"]
        assert mem["checked"] == 4 and 0 <= mem["finetune_scans_matched"] <= arm["n_train"]
    # embedding-only leaves the UNet and every old row as they were: old classes sample as the base's
    assert r["arms"]["embedding"]["eval"]["per_class"].items() >= r["base_eval"]["per_class"].items()
    assert r["arms"]["lora-prior"]["adapter_bytes"] > r["arms"]["embedding"]["adapter_bytes"]
    assert "| lora-prior |" in (out / "finetune_proof.md").read_text()


def test_scanner_adapt_runs_on_a_tiny_base_and_judges_both_models_on_one_scale(tmp_path):
    """End to end on a 16-pixel base: scanner-B data, one finetune, KID/FID of base and adapted samples
    against the same held-out half (so both carry the same real-vs-real baseline)."""
    spec = importlib.util.spec_from_file_location("tiny_finetune", REPO / "tests" / "training" / "test_finetune.py")
    assert spec is not None and spec.loader is not None
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    base = helpers._tiny_base(2, tmp_path / "base")
    bench = importlib.util.spec_from_file_location("scanner_adapt", REPO / "benchmarks" / "scanner_adapt.py")
    assert bench is not None and bench.loader is not None
    module = importlib.util.module_from_spec(bench)
    bench.loader.exec_module(module)
    out = tmp_path / "out"
    argv = ["--base", str(base), "--n-scans", "16", "--n-heldout", "64", "--size", "32", "--steps", "2"]
    argv += ["--batch-size", "2", "--n", "2", "--sampling-steps", "2", "--encoder-steps", "10", "--threads", "1"]
    assert module.main([*argv, "--out", str(out)]) == 0
    r = json.loads((out / "scanner_adapt.json").read_text())
    base_m, adapted = r["models"]["base"], r["models"]["adapted"]
    assert base_m["kid"]["real_baseline"] == adapted["kid"]["real_baseline"]  # one split, one encoder
    assert base_m["kid"]["synthetic"] != adapted["kid"]["synthetic"]
    assert r["adapter_bytes"] > 0 and r["finetune"]["peak_rss_mb"] > 0
    labels = (out / "data" / "labels.csv").read_text().splitlines()
    assert len(labels) == 17 and "split" not in labels[0]  # finetune splits them itself
    assert "| adapted model's samples |" in (out / "scanner_adapt.md").read_text()
