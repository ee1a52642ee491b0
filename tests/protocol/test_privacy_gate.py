"""The privacy gate in `generate`: planted memorization is caught, then resampled, dropped or fatal.

The tiny model's privacy index is built from its own samples: "training" scans include the
exact first-attempt output of chosen cases (so those cases reproduce a training scan, as a
memorizing model would), the rest of the training and the holdout sets are samples at unrelated
seeds. Everything is seeded, so which cases are flagged is fixed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from medsynth.cli import main
from medsynth.seeding import derive_seed

SEED = 777
SETTINGS = {"num_inference_steps": 2, "guidance_scale": 3.0, "sampler": "ddim"}
CLASSES = [("normal", "CT", 6), ("nodule", "MR", 6)]


def _protocol_doc(model_dir: Path, **privacy) -> dict:
    return {
        "protocol": 1,
        "name": "gated",
        "model": str(model_dir),
        "seed": SEED,
        "output": {"dir": "out", "formats": ["nifti"]},
        "sampler": {"method": "ddim", "steps": 2, "guidance_scale": 3.0, "batch_size": 6},
        "quotas": [{"pathology": p, "modality": m, "count": n} for p, m, n in CLASSES],
        "privacy": {"gate": True, "quantile": 0.99, **privacy},
    }


def _gated_model(model_dir: Path, root: Path, planted: list[tuple[str, str, int]]) -> Path:
    """A copy of ``model_dir`` whose privacy index holds the first attempts of ``planted`` cases."""
    from medsynth.models.artifact import load_model
    from medsynth.privacy import PrivacyIndex
    from medsynth.sampling import Synthesizer

    target = root / f"gated-{len(planted)}"
    shutil.copytree(model_dir, target)
    synth = Synthesizer(load_model(target))

    def sample(pathology: str, modality: str, seeds: list[int]):
        return synth.generate([pathology] * len(seeds), [modality] * len(seeds), seeds, **SETTINGS)

    train, train_groups, holdout, holdout_groups = [], [], [], []
    for pathology, modality, _ in CLASSES:
        group = f"{pathology}/{modality}"
        copies = [derive_seed(SEED, p, m, k, 0) for p, m, k in planted if (p, m) == (pathology, modality)]
        fresh = [derive_seed("train", group, i) for i in range(24)]
        held = [derive_seed("holdout", group, i) for i in range(24)]
        train += sample(pathology, modality, copies + fresh)
        train_groups += [group] * (len(copies) + len(fresh))
        holdout += sample(pathology, modality, held)
        holdout_groups += [group] * len(held)
    index = PrivacyIndex.build(
        train,
        holdout,
        train_groups=train_groups,
        holdout_groups=holdout_groups,
        train_ids=[f"train-{i:05d}" for i in range(len(train))],
        quantile=0.99,
    )
    index.save(target / "privacy")
    return target


@pytest.fixture(scope="module")
def gated(model_dirs, tmp_path_factory) -> dict[str, Path]:
    """Model copies with one planted case (normal-CT-00002) and with three."""
    root = tmp_path_factory.mktemp("gated")
    return {
        "one": _gated_model(model_dirs["2d"], root, [("normal", "CT", 2)]),
        "three": _gated_model(
            model_dirs["2d"], root, [("normal", "CT", 2), ("normal", "CT", 4), ("nodule", "MR", 1)]
        ),
    }


def _run(doc: dict, tmp_path: Path, capsys) -> tuple[int, Path, str]:
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = main(["generate", str(path)])
    return code, tmp_path / "out", capsys.readouterr().err


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_flagged_case_is_resampled_with_its_next_seed(gated, tmp_path, capsys):
    code, out, err = _run(_protocol_doc(gated["one"], on_flag="resample"), tmp_path, capsys)
    assert code == 0, err
    manifest = {r["case_id"]: r for r in _jsonl(out / "manifest.jsonl")}
    assert len(manifest) == 12
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
        assert r["privacy"]["score"] < r["privacy"]["threshold"]
    assert manifest["normal-CT-00002"]["attempt"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"]["checked"] == 12 + len(rejected)
    assert summary["privacy"]["flagged"] == len(rejected) and summary["privacy"]["failed"] is False
    assert (out / "privacy_report.html").stat().st_size > 0
    assert json.loads((out / "privacy_report.json").read_text())
    assert (out / "dataset.json").exists()


def test_a_flagged_case_is_dropped(gated, tmp_path, capsys):
    code, out, err = _run(_protocol_doc(gated["one"], on_flag="drop"), tmp_path, capsys)
    assert code == 0, err
    ids = [r["case_id"] for r in _jsonl(out / "manifest.jsonl")]
    dropped = [r["case_id"] for r in _jsonl(out / "rejected.jsonl")]
    assert "normal-CT-00002" in dropped and not set(ids) & set(dropped)
    assert len(ids) + len(dropped) == 12
    assert not (out / "nifti" / "normal-CT-00002.nii.gz").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quotas"][0]["dropped"] == sum(d.startswith("normal-CT") for d in dropped)
    assert summary["quotas"][0]["written"] == 6 - summary["quotas"][0]["dropped"]


def test_on_flag_fail_stops_the_run_with_exit_3(gated, tmp_path, capsys):
    code, out, err = _run(_protocol_doc(gated["one"], on_flag="fail"), tmp_path, capsys)
    assert code == 3
    lines = err.strip().splitlines()
    assert lines[-1].startswith("medsynth: error: privacy gate failed the run") and "normal-CT-00002" in lines[-1]
    assert not (out / "dataset.json").exists()
    assert (out / "privacy_report.html").exists() and (out / "summary.json").exists()
    assert "normal-CT-00002" not in (out / "manifest.jsonl").read_text()


def test_a_significant_flagged_rate_fails_the_run(gated, tmp_path, capsys):
    code, out, err = _run(_protocol_doc(gated["three"], on_flag="resample"), tmp_path, capsys)
    assert code == 3, err
    assert "significantly more than" in err and "binomial p=" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"]["flagged"] >= 3 and summary["privacy"]["pvalue"] < 0.01
    assert summary["written"] == 12, "the cases are written, resampled, and the run is still failed"
    assert not (out / "dataset.json").exists()


def test_gate_on_without_an_index_is_refused(model_dirs, tmp_path, capsys):
    code, out, err = _run(_protocol_doc(model_dirs["2d"]), tmp_path, capsys)
    assert code == 2 and "has no privacy index" in err and "privacy-index" in err
    assert not out.exists()
