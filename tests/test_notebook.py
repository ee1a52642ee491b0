"""Execute notebooks/quickstart.ipynb top to bottom (nbclient), as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from medsynth.models.artifact import builtin_models, resolve_model_path

    if "phantom-2d" not in builtin_models():
        pytest.skip("builtin:phantom-2d is not trained yet (medsynth/models/pretrained/phantom-2d)")
    if not (resolve_model_path("builtin:phantom-2d") / "privacy").is_dir():
        pytest.skip("builtin:phantom-2d has no privacy index yet (medsynth privacy-index)")
    # One intra-op thread in the kernel: the test machine's 2 cores are shared with other jobs.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's tempfile.mkdtemp lands here
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    assert not any(o.output_type == "error" for cell in outputs.values() for o in cell)
    text = "".join(o.get("text", "") for cell in outputs.values() for o in cell if o.output_type == "stream")
    assert "pathologies:" in text and "'CT'" in text and "'MR'" in text
    assert "wrote 6 of 6 requested cases" in text
    images = [o for cell in outputs.values() for o in cell if "image/png" in o.get("data", {})]
    assert len(images) == 2, "the sample grid and the protocol's cases are plotted inline"
    html = [o for cell in outputs.values() for o in cell if "text/html" in o.get("data", {})]
    assert any("privacy" in "".join(o["data"]["text/html"]).lower() for o in html)
    report = list(tmp_path.glob("medsynth-quickstart-*/output/privacy_report.html"))
    assert len(report) == 1
