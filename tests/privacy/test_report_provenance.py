"""The reports' provenance: filled in by the callers (a protocol run, ``privacy-check``), digests only.

A board ties a report to the model, protocol and training set it judged by these fields; none
of them may carry a path of a training scan or an identifier from the training data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from medsynth.cli import main
from medsynth.data.catalog import Catalog
from medsynth.data.phantoms import phantom_dataset
from medsynth.errors import PrivacyError
from medsynth.models.artifact import load_config, model_sha256, resolve_model_path
from medsynth.privacy.check import privacy_check
from medsynth.privacy.index import PrivacyIndex
from medsynth.privacy.provenance import for_datasets, for_model

HEX64 = set("0123456789abcdef")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _strings(doc: object) -> list[str]:
    """Every string in a JSON document, keys included."""
    if isinstance(doc, dict):
        return [s for k, v in doc.items() for s in (str(k), *_strings(v))]
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return [str(doc)]


def test_a_model_reports_its_id_digests_and_training_fingerprint_only():
    root = resolve_model_path("builtin:phantom-2d")
    prov = for_model(root, model_id="builtin:phantom-2d", model_sha256=model_sha256(root)).to_dict()
    assert prov["model"] == {"id": "builtin:phantom-2d", "sha256": model_sha256(root)}
    assert prov["index"] == {"path": "privacy/index.safetensors", "sha256": _sha256(root / "privacy/index.safetensors")}
    fingerprint = load_config(root).fingerprint
    assert prov["training_set"]["counts"] == fingerprint["counts"] and sum(fingerprint["counts"].values()) > 0
    assert prov["training_set"]["file_list_sha256"] == fingerprint["file_list_sha256"]
    assert prov["protocol"] == {}
    # No path (the model folder is resolved on this machine) and no training scan's id.
    train_ids = set(PrivacyIndex.load(root / "privacy").train_ids)
    for text in _strings(prov):
        assert str(root) not in text and text not in train_ids
    lesion = for_model(root, model_id="builtin:phantom-2d", model_sha256="x", index_dir="lesion/privacy").to_dict()
    assert lesion["index"]["sha256"] == _sha256(root / "lesion/privacy/index.safetensors")


def test_a_protocol_run_writes_its_model_and_protocol_into_the_report(tmp_path):
    doc = {
        "protocol": 1,
        "name": "provenance-check",
        "model": "builtin:phantom-2d",
        "seed": 5,
        "output": {"dir": "out", "formats": ["nifti"]},
        "sampler": {"method": "ddim", "steps": 3, "batch_size": 2},
        "quotas": [{"pathology": "normal", "modality": "CT", "count": 2}],
        "privacy": {"gate": True, "quantile": 0.99, "on_flag": "drop"},
    }
    path = tmp_path / "my-study.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["generate", str(path)]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    prov = json.loads((out / "privacy_report.json").read_text())["provenance"]
    assert prov["model"] == summary["model"] and prov["model"]["id"] == "builtin:phantom-2d"
    assert prov["protocol"]["name"] == "provenance-check" and prov["protocol"]["file"] == "my-study.yaml"
    assert prov["protocol"]["sha256"] == summary["protocol"]["sha256"] == _sha256(path)
    assert len(prov["protocol"]["plan_sha256"]) == 64 and set(prov["protocol"]["plan_sha256"]) <= HEX64
    assert prov["training_set"]["counts"] == load_config(resolve_model_path("builtin:phantom-2d")).fingerprint["counts"]
    assert not any(str(tmp_path) in s for s in _strings(prov))
    page = (out / "privacy_report.html").read_text()
    assert f"<td>{summary['model']['sha256']}</td>" in page and "<td>provenance-check (my-study.yaml)</td>" in page


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("check")

    def csv(name: str, seed: int, count: int) -> Path:
        return phantom_dataset(
            root / name, dim=2, count=count, seed=seed, size=48, pathologies=("normal",), modalities=("CT",)
        )

    return {"root": root, "train": csv("train", 0, 8), "holdout": csv("holdout", 500, 8)}


def test_privacy_check_reports_the_training_csv_fingerprint_and_shows_training_scans(datasets):
    out = datasets["root"] / "report"
    # The training set checked as "synthetic": every case is a copy, the check fails after writing the report.
    with pytest.raises(PrivacyError):
        privacy_check(datasets["train"], datasets["holdout"], datasets["train"], out, quantile=0.9)
    report = json.loads((out / "privacy_report.json").read_text())
    prov = report["provenance"]
    fingerprint = Catalog.from_csv(datasets["train"]).fingerprint()
    assert prov["training_set"]["counts"] == fingerprint["counts"] == {"normal/CT": 8}
    assert prov["training_set"]["file_list_sha256"] == fingerprint["file_list_sha256"]
    assert prov["model"] == {} and prov["protocol"] == {}  # a CSV says nothing of what made it
    train_paths = [str(r.path) for r in Catalog.from_csv(datasets["train"]).records]
    for text in _strings(prov):
        assert str(datasets["root"]) not in text and not any(Path(p).name in text for p in train_paths)
    page = (out / "privacy_report.html").read_text()
    assert "Sensitive: this report contains images of training scans" in page
    assert "nearest training scan as stored" in page  # the scans themselves, not the index's maps
    assert page.count('<tr class="msr-img">') == report["n_flagged"] > 0


def test_privacy_check_names_the_model_of_a_medsynth_output(tmp_path):
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {
                "model": {"id": "builtin:phantom-2d", "sha256": "ab" * 32},
                "protocol": {"name": "study", "sha256": "cd" * 32},
                "output_dir": "/somewhere/private",
            }
        )
    )
    prov = for_datasets({"counts": {"a/CT": 3}, "file_list_sha256": "ef" * 32}, tmp_path).to_dict()
    assert prov["model"] == {"id": "builtin:phantom-2d", "sha256": "ab" * 32}
    assert prov["protocol"] == {"name": "study", "sha256": "cd" * 32, "file": "named in the output's summary.json"}
    assert "/somewhere/private" not in json.dumps(prov)
    (tmp_path / "summary.json").write_text("{not json")
    assert for_datasets({}, tmp_path).to_dict()["model"] == {}  # unreadable: not recorded, not an error
