"""The shipped protocols: the demo runs end to end; the worked examples validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsynth.cli import main
from medsynth.models.artifact import builtin_models, resolve_model_path
from medsynth.protocol import DEMO_PROTOCOL
from medsynth.protocol.schema import load_protocol

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "protocols").glob("*.yaml"))


def _needs(model: str) -> None:
    """The shipped models exist and carry their privacy index (the gate is on by default)."""
    assert model.split(":", 1)[1] in builtin_models(), f"{model} is not shipped"
    assert (resolve_model_path(model) / "privacy" / "index.json").is_file(), f"{model} ships no privacy index"


def test_the_packaged_demo_is_the_repository_demo():
    assert DEMO_PROTOCOL.read_bytes() == (REPO / "protocols" / "demo.yaml").read_bytes()
    assert len(EXAMPLES) >= 3


def _with_backgrounds(path: Path, where: Path) -> Path:
    """``path`` itself, or for a protocol inserting into a dataset a copy beside a small phantom
    dataset at the place it names (its header comment says how to make the full one)."""
    quotas = load_protocol(path).protocol.quotas or []
    datasets = [q.insert.into.dataset for q in quotas if q.insert is not None and not isinstance(q.insert.into, str)]
    if not datasets:
        return path
    from medsynth.data.phantoms import BASE_PATHOLOGIES, phantom_dataset

    dim = 3 if "3d" in path.name else 2
    for csv in datasets:
        phantom_dataset(
            (where / csv).parent, dim=dim, count=8, seed=1, size=32, masks=True, pathologies=BASE_PATHOLOGIES
        )
    copy = where / path.name
    copy.write_bytes(path.read_bytes())
    return copy


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_worked_examples_validate(path, tmp_path, capsys):
    _needs(load_protocol(path).protocol.model)
    assert main(["validate", str(_with_backgrounds(path, tmp_path))]) == 0, capsys.readouterr().err
    assert "OK" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    _needs("builtin:phantom-2d")
    out = tmp_path / "demo-output"
    assert main(["demo", "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"privacy report: {out / 'privacy_report.html'}" in printed
    assert f"wrote 24 of 24 requested cases to {out}" in printed
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert {(r["pathology"], r["modality"]) for r in lines} == {
        (p, m) for p in ("normal", "nodule", "mass", "effusion") for m in ("CT", "MR")
    }
    assert all(set(r["files"]) == {"dicom", "nifti", "png"} and r["privacy"]["gate"] for r in lines)
    assert (out / "privacy_report.html").stat().st_size > 1000
    assert json.loads((out / "dataset.json").read_text())["training"]
