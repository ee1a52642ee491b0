"""Regenerate the screenshots in docs/img/: the privacy report and the quickstart notebook.

    python benchmarks/screenshots.py                  # both
    python benchmarks/screenshots.py --only report    # docs/img/privacy-report.png
    python benchmarks/screenshots.py --only notebook  # docs/img/notebook.png

The report is made here, from phantoms: a training set of two classes (normal/CT large enough
for its own tau, nodule/MR judged by the pooled one), a holdout set, and "synthetic" scans that
are new phantoms plus edited copies of training scans (a flip, a shift), checked as
``medsynth privacy-check`` checks a set, with the training scans at hand. The notebook is
executed top to bottom with nbclient (in a temporary folder, as ``tests/test_notebook.py``
runs it), converted to HTML with nbconvert and screenshotted. Both pages are shot whole by
headless Chromium (``chromium``, with ``--no-sandbox`` as root) at 1280 px wide, and stored as
palette PNGs (under about 300 KB each). Needs the dev extras (nbclient, nbconvert, ipykernel)
and chromium; about 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMG = REPO / "docs" / "img"
WIDTH = 1280
MAX_HEIGHT = 16000  # Chromium's screenshots are limited in size; no page here is longer
MAX_BYTES = 300_000


# -- screenshots ----------------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        sys.exit("screenshots.py: chromium not found (apt-get install chromium)")
    return found


def _run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def _page_height(page: Path, work: Path) -> int:
    """The page's full height at ``WIDTH``, read by a script in a copy of it after load."""
    probe = page.with_name(page.stem + ".probe.html")
    script = (
        "<script>window.addEventListener('load',()=>{const p=document.createElement('pre');"
        "p.id='msr-height';p.textContent=String(document.documentElement.scrollHeight);"
        "document.body.appendChild(p);});</script></body>"
    )
    text = page.read_text(encoding="utf-8")
    probe.write_text(text.replace("</body>", script, 1) if "</body>" in text else text + script, encoding="utf-8")
    dom = _run_chromium([f"--window-size={WIDTH},1000", "--dump-dom", probe.as_uri()], work / "profile-dom").stdout
    probe.unlink()
    found = re.search(r'<pre id="msr-height">(\d+)</pre>', dom)
    if not found:
        sys.exit(f"screenshots.py: could not read the height of {page}")
    return min(int(found.group(1)), MAX_HEIGHT)


def screenshot(page: Path, target: Path, work: Path) -> Path:
    """``page`` shot whole at ``WIDTH`` px into ``target`` (a palette PNG, made smaller until it fits)."""
    from PIL import Image

    height = _page_height(page, work)
    raw = work / (target.stem + ".raw.png")
    run = _run_chromium([f"--screenshot={raw}", f"--window-size={WIDTH},{height}", page.as_uri()], work / "profile")
    if not raw.is_file():
        sys.exit(f"screenshots.py: chromium wrote no screenshot of {page}: {run.stderr[-1000:]}")
    with Image.open(raw) as shot:
        image = shot.convert("RGB")
    # A palette keeps text and the figures' colour maps; fewer colours first, then a smaller width
    # (text stays readable down to about 0.7), until the file fits.
    for scale, colors in ((1.0, 256), (1.0, 64), (0.85, 64), (0.75, 64), (0.75, 32), (0.6, 32), (0.5, 16)):
        size = (round(image.width * scale), round(image.height * scale))
        small = image if scale == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
        small.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
        if target.stat().st_size <= MAX_BYTES:
            break
    print(f"{target}: {small.width}x{small.height}, {colors} colours, {target.stat().st_size / 1000:.0f} KB")
    return target


# -- the privacy report ---------------------------------------------------------------------


def make_report(work: Path) -> Path:
    """A privacy report of phantoms (see the module docstring); returns its HTML file."""
    from scipy import ndimage

    from medsynth.data.catalog import Catalog
    from medsynth.data.phantoms import phantom_dataset
    from medsynth.lazy import LazySequence
    from medsynth.privacy.catalogs import catalog_groups
    from medsynth.privacy.index import PrivacyIndex
    from medsynth.privacy.provenance import for_datasets
    from medsynth.privacy.report import write_report

    def dataset(name: str, seed: int, ct: int, mr: int) -> Catalog:
        counts = {("normal", "CT"): ct, ("nodule", "MR"): mr}
        csv = phantom_dataset(work / name, dim=2, count=ct + mr, seed=seed, size=64, class_counts=counts)
        return Catalog.from_csv(csv)

    train, holdout, new = dataset("train", 0, 40, 12), dataset("holdout", 500, 30, 8), dataset("new", 900, 10, 4)
    tr_scans = LazySequence(len(train), train.load)
    # Two planted copies, as a memorizing model would make them: mirrored, and moved by 3 pixels.
    flipped = train.load(3)
    flipped = flipped.with_array(np.ascontiguousarray(np.flip(flipped.array, axis=-1)))
    shifted = train.load(45)
    shifted = shifted.with_array(ndimage.shift(shifted.array, (0, 3, -2), order=0, mode="nearest"))
    synthetic = [new.load(i) for i in range(len(new))] + [flipped, shifted]
    groups = [*catalog_groups(new), catalog_groups(train)[3], catalog_groups(train)[45]]
    ids = [f"synthetic-{i:03d}" for i in range(len(synthetic))]
    index = PrivacyIndex.build(
        tr_scans,
        LazySequence(len(holdout), holdout.load),
        train_groups=catalog_groups(train),
        holdout_groups=catalog_groups(holdout),
        train_ids=[f"train-{i:05d}" for i in range(len(train))],  # opaque ids, as a model's index holds
        quantile=0.99,
        min_group_size=20,  # normal/CT (30 holdout scans) gets its own tau, nodule/MR (8) the pooled one
    )
    verdicts = index.check(synthetic, groups, names=ids)
    settings = {"quantile": 0.99, "min_group_size": 20, "made_by": "benchmarks/screenshots.py (phantoms)"}
    _, html = write_report(
        work / "report",
        index=index,
        synthetic_ids=ids,
        verdicts=verdicts,
        settings=settings,
        synthetic_scans=synthetic,
        training_scans=tr_scans,
        provenance=for_datasets(train.fingerprint(), work / "new"),
    )
    flagged = [i for i, v in zip(ids, verdicts) if not v.passed]
    print(f"report: {len(ids)} checked, flagged {flagged}")
    return html


# -- the notebook ---------------------------------------------------------------------------


def render_notebook(work: Path) -> Path:
    """notebooks/quickstart.ipynb executed in ``work`` and converted to HTML; returns the HTML file."""
    import nbclient
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "TMPDIR": str(work)}
    os.environ.update(env)  # the kernel inherits them: its temporary folders land in ``work``
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    client.execute()
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    page = work / "quickstart.html"
    page.write_text(body, encoding="utf-8")
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("report", "notebook"), help="regenerate one screenshot only")
    parser.add_argument("--out", type=Path, default=IMG, help="folder for the PNGs (default docs/img)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medsynth-screenshots-") as tmp:
        work = Path(tmp)
        if args.only in (None, "report"):
            screenshot(make_report(work / "r"), args.out / "privacy-report.png", work)
        if args.only in (None, "notebook"):
            (work / "nb").mkdir()
            screenshot(render_notebook(work / "nb"), args.out / "notebook.png", work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
