"""The report as a reader sees it: headless Chromium renders it, and its images load.

A report with flagged cases drawn from real scans: a small phantom index, a flipped copy of a
training scan (caught) and a new phantom. The page is screenshotted and its DOM dumped after
load, with the natural size of every image read by a script in a copy of the page.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsynth.data.phantoms import make_phantom
from medsynth.privacy import report_figures as figs
from medsynth.privacy.index import PrivacyIndex
from medsynth.privacy.report import write_report

WINDOW = (1280, 3000)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    """A phantom index, its training scans, the checked scans (a flipped copy, a new one) and their report."""
    train = [make_phantom(dim=2, pathologies="normal", modality="CT", seed=s, size=64) for s in range(8)]
    holdout = [make_phantom(dim=2, pathologies="normal", modality="CT", seed=100 + s, size=64) for s in range(8)]
    index = PrivacyIndex.build(
        train,
        holdout,
        train_groups=["normal/CT"] * 8,
        holdout_groups=["normal/CT"] * 8,
        quantile=0.9,
        run_selftest=False,
    )
    copy = train[3].with_array(np.ascontiguousarray(np.flip(train[3].array, axis=-1)))
    new = make_phantom(dim=2, pathologies="normal", modality="CT", seed=500, size=64)
    checked = [copy, new]
    verdicts = index.check(checked, ["normal/CT"] * 2, names=["copy", "new"])
    out = tmp_path_factory.mktemp("render")
    _, html = write_report(
        out,
        index=index,
        synthetic_ids=["case-copy", "case-new"],
        verdicts=[v.to_dict() for v in verdicts],  # as a manifest holds them: no aligned maps
        settings={"quantile": 0.9},
        synthetic_scans=checked,
        training_scans=train,
    )
    return {"index": index, "train": train, "checked": checked, "verdicts": verdicts, "html": html}


def _panels(case: dict, k: int) -> list[figs.Panel]:
    v = case["verdicts"][k]
    j = case["index"].train_ids.index(v.nearest)
    return figs.case_panels(
        synthetic=case["checked"][k],
        synthetic_map=None,
        training=case["train"][j],
        training_map=case["index"].train_maps[j],
        transform=v.to_dict()["transform"],
        cfg=case["index"].feature_config,
    )


def test_a_flagged_copy_is_drawn_beside_its_training_scan_and_their_difference_is_blank(case):
    copy = case["verdicts"][0]
    assert not copy.passed and copy.nearest == "train-00003" and copy.to_dict()["transform"]["flip_axes"]
    panels = _panels(case, 0)
    assert [p.title.split("\n")[0] for p in panels] == [
        "synthetic scan",
        "nearest training scan",
        "difference after alignment",
    ]
    # The scans as stored (HU in the lung window), not feature maps; the copy's difference after
    # the matched flip is blank, a different phantom's is not.
    assert panels[0].vmin == figs.CT_WINDOW[1] and panels[0].image.max() > 100
    assert np.allclose(np.flip(panels[0].image, axis=-1), panels[1].image)
    assert float(np.abs(panels[2].image).mean()) < 1e-3
    assert float(np.abs(_panels(case, 1)[2].image).mean()) > 0.02


def test_every_image_is_an_inline_png_of_a_readable_size(case):
    page = case["html"].read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    n_flagged = sum(not v.passed for v in case["verdicts"])
    assert len(sources) == 1 + n_flagged  # the histograms and one figure per flagged case
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            # Large: the histograms 1000+ px wide, each case's panels about 250 px a side.
            assert im.format == "PNG" and im.width >= 760 and im.height >= 300


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--disable-gpu", f"--user-data-dir={profile}", *args]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_chromium_renders_the_report_and_loads_its_images(case, tmp_path):
    shot = tmp_path / "report.png"
    url = case["html"].resolve().as_uri()
    run = _chromium([f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url], tmp_path / "profile")
    assert shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == WINDOW
        grey = np.asarray(im.convert("L"), float)
    # Not blank: text, tables and figures cover a good part of the page, in many shades.
    assert (grey < 200).mean() > 0.02 and grey.std() > 20 and len(np.unique(grey)) > 50
    # Each image's natural size as the browser decoded it, written into the DOM after load.
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load',()=>{const p=document.createElement('pre');p.id='msr-natural';"
        "p.textContent=JSON.stringify([...document.images].map(i=>[i.complete,i.naturalWidth,i.naturalHeight]));"
        "document.body.appendChild(p);});</script></body>"
    )
    probe.write_text(case["html"].read_text().replace("</body>", script))
    dom = _chromium(["--dump-dom", probe.resolve().as_uri()], tmp_path / "profile2").stdout
    found = re.search(r'<pre id="msr-natural">([^<]*)</pre>', dom)
    assert found, dom[-2000:]
    sizes = json.loads(found.group(1))
    assert len(sizes) == 1 + sum(not v.passed for v in case["verdicts"])
    assert all(done and w >= 760 and h >= 300 for done, w, h in sizes), sizes
