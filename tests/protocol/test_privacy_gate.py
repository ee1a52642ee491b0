"""The privacy gate in `generate`: planted memorization is caught, then resampled, dropped or fatal.

The tiny model's privacy index is built from its own samples: "training" scans include the
exact first-attempt output of chosen cases (so those cases reproduce a training scan, as a
memorizing model would), the rest of the training and the holdout sets are samples at unrelated
seeds. Everything is seeded, so which cases are flagged is fixed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medsynth.cli import main
from medsynth.seeding import derive_seed

SEED = 777  # conftest.GATED_SEED: the planted copies are first attempts of this protocol's cases
# Cases normal-CT-00000..00003 and nodule-MR-00000: of the planted copies only normal-CT-00002.
ONE = [{"pathology": "normal", "modality": "CT", "count": 4}, {"pathology": "nodule", "modality": "MR", "count": 1}]
# normal-CT-00000..00005 and nodule-MR-00000..00005: all three planted copies.
THREE = [{"pathology": "normal", "modality": "CT", "count": 6}, {"pathology": "nodule", "modality": "MR", "count": 6}]


@pytest.fixture
def doc(gated_protocol):
    return lambda model, quotas=ONE, **privacy: gated_protocol(model, quotas, **privacy)


def _run(doc: dict, tmp_path: Path, capsys) -> tuple[int, Path, str]:
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = main(["generate", str(path)])
    return code, tmp_path / "out", capsys.readouterr().err


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_flagged_case_is_resampled_with_its_next_seed(gated_model, doc, tmp_path, capsys):
    # alpha 0.001: the planted copy plus a by-design false flag (about 1% of fresh samples at
    # quantile 0.99) must not fail this run; the flagged-rate failure has its own test below.
    code, out, err = _run(doc(gated_model, on_flag="resample", alpha=0.001), tmp_path, capsys)
    assert code == 0, err
    manifest = {r["case_id"]: r for r in _jsonl(out / "manifest.jsonl")}
    assert len(manifest) == 5
    rejected = _jsonl(out / "rejected.jsonl")
    planted = [r for r in rejected if r["case_id"] == "normal-CT-00002"]
    assert [(r["attempt"], r["final"]) for r in planted] == [(0, False)]
    assert planted[0]["privacy"]["passed"] is False
    assert planted[0]["privacy"]["nearest"] == "train-00000"  # the planted copy
    # At quantile 0.99 about 1% of fresh samples are flagged by design; each flagged attempt is
    # followed by the next attempt of the same case.
    flagged = {(r["case_id"], r["attempt"]) for r in rejected}
    for cid, r in manifest.items():
        assert [(cid, a) for a in range(r["attempt"])] == sorted(k for k in flagged if k[0] == cid)
        assert r["seed"] == derive_seed(SEED, r["pathology"], r["modality"], int(cid[-5:]), r["attempt"])
        assert r["privacy"]["gate"] is True and r["privacy"]["passed"] is True
        assert r["privacy"]["score"] <= r["privacy"]["threshold"]
    assert manifest["normal-CT-00002"]["attempt"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"]["checked"] == 5 + len(rejected)
    assert summary["privacy"]["flagged"] == len(rejected) and summary["privacy"]["failed"] is False
    html = (out / "privacy_report.html").read_text()
    assert "normal-CT-00002#attempt0" in html and "data:image/png;base64," in html
    assert json.loads((out / "privacy_report.json").read_text())
    assert (out / "dataset.json").exists()


def test_a_flagged_case_is_dropped(gated_model, doc, tmp_path, capsys):
    code, out, err = _run(doc(gated_model, on_flag="drop", alpha=0.001), tmp_path, capsys)
    assert code == 0, err
    ids = [r["case_id"] for r in _jsonl(out / "manifest.jsonl")]
    dropped = [r["case_id"] for r in _jsonl(out / "rejected.jsonl")]
    assert "normal-CT-00002" in dropped and not set(ids) & set(dropped)
    assert len(ids) + len(dropped) == 5
    assert not (out / "nifti" / "normal-CT-00002.nii.gz").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quotas"][0]["dropped"] == sum(d.startswith("normal-CT") for d in dropped)
    assert summary["quotas"][0]["written"] == 4 - summary["quotas"][0]["dropped"]


def test_on_flag_fail_stops_the_run_with_exit_3(gated_model, doc, tmp_path, capsys):
    code, out, err = _run(doc(gated_model, on_flag="fail"), tmp_path, capsys)
    assert code == 3
    lines = err.strip().splitlines()
    assert lines[-1].startswith("medsynth: error: privacy gate failed the run") and "normal-CT-00002" in lines[-1]
    assert not (out / "dataset.json").exists()
    assert (out / "privacy_report.html").exists() and (out / "summary.json").exists()
    assert "normal-CT-00002" not in (out / "manifest.jsonl").read_text()


def test_a_significant_flagged_rate_fails_the_run(gated_model, doc, tmp_path, capsys):
    code, out, err = _run(doc(gated_model, THREE, on_flag="resample"), tmp_path, capsys)
    assert code == 3, err
    assert "significantly more than" in err and "binomial p=" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"]["flagged"] >= 3 and summary["privacy"]["pvalue"] < 0.01
    assert summary["written"] == 12, "the cases are written, resampled, and the run is still failed"
    assert not (out / "dataset.json").exists()


def test_a_case_flagged_on_every_attempt_fails_the_run(gated_model, doc, tmp_path, capsys):
    code, out, err = _run(doc(gated_model, on_flag="resample", max_attempts=1, alpha=0.001), tmp_path, capsys)
    assert code == 3
    assert "1 case(s) were flagged on every attempt (max_attempts 1) (normal-CT-00002)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quotas"][0]["out_of_attempts"] == 1 and summary["quotas"][0]["written"] == 3
    assert not (out / "dataset.json").exists()


def test_gate_on_without_an_index_is_refused(model_dirs, doc, tmp_path, capsys):
    code, out, err = _run(doc(model_dirs["2d"]), tmp_path, capsys)
    assert code == 2 and "has no privacy index" in err and "privacy-index" in err
    assert not out.exists()
