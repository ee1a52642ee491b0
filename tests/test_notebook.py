"""Execute notebooks/quickstart.ipynb top to bottom (nbclient), as a user would, and read its outputs."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"

# Run in the notebook's kernel after its last cell: what its two figures say and show.
PROBE = """
import json as _json
print(_json.dumps({
    name: {
        "suptitle": fig.get_suptitle(),
        "axes": [{"title": ax.get_title(), "clim": [list(map(float, im.get_clim())) for im in ax.images]}
                 for ax in fig.axes],
    }
    for name, fig in (("samples", globals().get("samples_fig")), ("cases", globals().get("cases_fig")))
    if fig is not None
}))
"""


def _execute(tmp_path: Path, monkeypatch) -> tuple[list[dict], dict]:
    """The notebook's code-cell outputs (in order) and the probe's view of its figures."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from medsynth.models.artifact import builtin_models, resolve_model_path

    if "phantom-2d" not in builtin_models():
        pytest.skip("builtin:phantom-2d is not trained yet (medsynth/models/pretrained/phantom-2d)")
    if not (resolve_model_path("builtin:phantom-2d") / "privacy").is_dir():
        pytest.skip("builtin:phantom-2d has no privacy index yet (medsynth privacy-index)")
    # One intra-op thread in the kernel: the test machine's 2 cores are shared with other jobs.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel starts in tmp_path, as it would start in the notebook's folder under Jupyter.
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        # nbclient writes each executed cell back into the notebook: the probe is appended
        # for its run and taken out again before the notebook's own outputs are read.
        nb.cells.append(nbformat.v4.new_code_cell(PROBE))
        client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
        probe = nb.cells.pop()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    probed = json.loads("".join(o.get("text", "") for o in probe.outputs if o.output_type == "stream"))
    return outputs, probed


def _html(o: dict) -> str:
    return "".join(o.get("data", {}).get("text/html", ""))


def test_quickstart_notebook(tmp_path, monkeypatch):
    from medsynth.io.dicom.write import CT_WINDOWS

    outputs, figures = _execute(tmp_path, monkeypatch)

    assert not [o for o in outputs if o.output_type == "error"]
    streams = [o for o in outputs if o.output_type == "stream"]
    stderr = [o.text for o in streams if o.name == "stderr"]
    # A TqdmWarning here means ipywidgets is missing (pip install -e '.[dev]'): diffusers imports tqdm.auto.
    assert not stderr, f"the notebook wrote to stderr: {stderr}"
    text = "".join(o.text for o in streams)
    assert "warning" not in text.lower()
    assert "pathologies:" in text and "'CT'" in text and "'MR'" in text
    assert "wrote 6 of 6 requested cases" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2, "the sample grid and the protocol's cases are plotted inline"

    # The report: one HTML output whose page sits, escaped, in an iframe's srcdoc.
    html_out = [_html(o) for o in outputs if _html(o)]
    frames = [h for h in html_out if "<iframe" in h]
    assert len(frames) == 1
    srcdoc = re.search(r'<iframe[^>]*\ssrcdoc="([^"]*)"', frames[0])
    assert srcdoc, "the report is an iframe's srcdoc"
    page = html.unescape(srcdoc.group(1))
    report = list(tmp_path.glob("medsynth-quickstart-*/output/privacy_report.html"))
    assert len(report) == 1
    assert page == report[0].read_text()
    assert "<style" in page  # so the next line tests something: the report has a stylesheet ...
    assert not any("<style" in h for h in html_out)  # ... which stays inside the iframe

    # No absolute path anywhere; links resolve from the notebook's folder.
    visible = (
        text
        + "".join("".join(o.get("data", {}).get("text/plain", "")) for o in outputs)
        + "".join(h.replace(srcdoc.group(1), "") for h in html_out)
    )
    for absolute in (str(tmp_path), "/tmp/", str(Path.home()), "file:"):
        assert absolute not in visible
    links = re.findall(r'(?:href|src)="([^"]*)"', "".join(h.replace(srcdoc.group(1), "") for h in html_out))
    assert links
    for link in links:
        assert not link.startswith("/") and "://" not in link
        assert (tmp_path / html.unescape(link)).is_file()

    # CT in the mediastinum window, named in the figure's title; MR in a percentile window.
    assert set(figures) == {"samples", "cases"}, "the notebook's figures are samples_fig and cases_fig"
    name, level, width = next(w for w in CT_WINDOWS if w[0] == "MEDIASTINUM")
    ct_clim = [level - width / 2, level + width / 2]
    for fig, ct_axes in (
        (figures["samples"], [a for a in figures["samples"]["axes"] if a["title"].startswith("CT")]),
        (figures["cases"], [a for a in figures["cases"]["axes"] if "-CT-" in a["title"]]),
    ):
        assert f"{name.lower()} window W{width:g}/L{level:g}" in fig["suptitle"]
        assert "MR 0.5–99.5th percentile window" in fig["suptitle"]
        assert ct_axes and all(a["clim"] == [ct_clim] for a in ct_axes)
