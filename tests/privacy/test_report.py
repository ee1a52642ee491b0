"""The report names the flagged cases and gives the thresholds and counts, in JSON and in HTML."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from html.parser import HTMLParser

import numpy as np
import pytest

from medsynth.privacy.report import MAX_FLAGGED_SHOWN, write_report

CASE_HEADER = ["case", "group (τ used)", "nearest training scan", "score", "τ", "SSIM", "p-value", "matched transform"]


class _Tables(HTMLParser):
    """Every table of a page as rows of cells: ``(tag, text, colspan, images)``."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[tuple[str, str, int, int]]]] = []
        self._cell: list | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = [tag, "", int(dict(attrs).get("colspan") or 1), 0]
        elif tag == "img" and self._cell is not None:
            self._cell[3] += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(tuple(self._cell))
            self._cell = None


def _tables(page: str) -> list[list[list[tuple[str, str, int, int]]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def _table(page: str, header: str) -> list[list[str]]:
    """The texts of the table whose header row has a column ``header``."""
    (table,) = [t for t in _tables(page) if header in [c[1] for c in t[0]]]
    return [[c[1] for c in row] for row in table]


# tau: a/CT 0.30 (5 holdout scans), b/MR pooled 0.40 (2 < min_group_size 3).
SCORES = [0.10, 0.20, 0.30, 0.40, 0.50, 0.90, 0.95]
GROUPS = ["a/CT"] * 5 + ["b/MR"] * 2


def _verdict(score, tau, nearest, group, used, closer=True):
    return {
        "score": score,
        "threshold": tau,
        "passed": score <= tau,
        "pvalue": 0.5,
        "nearest": nearest,
        "nearest_index": int(nearest[-1]) if nearest else -1,
        "ratio": 0.8,
        "ssim": 0.7,
        "group_used": used,
        "holdout_score": 0.2,
        "closer_to_train": closer,
        "group": group,
    }


CASES = {
    "case-<1>": _verdict(0.99, 0.30, "train-00001", "a/CT", "a/CT"),  # flagged; its id needs escaping
    "case-2": _verdict(0.20, 0.30, "train-00002", "a/CT", "a/CT", closer=False),
    "case-3": _verdict(0.97, 0.40, "train-00001", "b/MR", "pooled"),  # flagged
    "case-4": _verdict(0.00, 0.40, "", "b/MR", "pooled", closer=False),  # no body
}
FLAGGED = ["case-<1>", "case-3"]


@pytest.fixture
def report(make_index, tmp_path):
    """``report(**write_report_options) -> (json dict, html text)``."""
    index = make_index(
        SCORES,
        GROUPS,
        train_self_scores=[0.2, 0.45, 0.1, 0.3],
        selftest={"planted": 18, "recall": 17 / 18, "per_edit": {"exact": 1.0}, "sources": 2},
    )

    def write(**options):
        json_path, html_path = write_report(
            tmp_path / "out",
            index=index,
            synthetic_ids=list(CASES),
            verdicts=list(CASES.values()),
            settings={"quantile": 0.5, "on_flag": "drop"},
            **options,
        )
        return json.loads(json_path.read_text()), html_path.read_text()

    return write


def test_the_json_lists_flagged_cases_thresholds_and_counts(report):
    summary, _ = report(training_thumbnails=False)
    assert [s["case_id"] for s in summary["samples"] if s["flagged"]] == FLAGGED
    assert [s["case_id"] for s in summary["samples"]] == list(CASES)
    assert summary["thresholds"] == {"pooled": 0.40, "a/CT": 0.30}
    assert summary["group_sizes"] == {"a/CT": {"train": 4, "holdout": 5}, "b/MR": {"train": 0, "holdout": 2}}
    assert (summary["n_checked"], summary["n_flagged"], summary["share_flagged"]) == (4, 2, 0.5)
    assert summary["n_without_body"] == 1
    assert (summary["unique_training_matched"], summary["unique_training_matched_by_flagged"]) == (2, 1)
    assert summary["closer_to_train_test"]["n_closer"] == 2 and summary["closer_to_train_test"]["n"] == 3
    # Training pairs above their group's tau (a/CT: 0.30): only train-00001 ~ train-00002 (0.45; 0.30 is not above).
    assert summary["train_near_duplicates"] == [{"a": "train-00001", "b": "train-00002", "score": 0.45}]
    assert summary["settings"] == {"quantile": 0.5, "on_flag": "drop"}
    assert summary["samples"][2]["group_used"] == "pooled" and summary["samples"][2]["threshold"] == 0.40


def test_the_html_names_flagged_cases_only_and_gives_taus_and_counts(report):
    _, page = report(training_thumbnails=False)
    assert "4 synthetic cases checked; <b>2 flagged</b> (50.0%)" in page
    cases = _table(page, "matched transform")
    assert cases[0] == CASE_HEADER
    # Flagged cases only, in order; the group named with the tau that judged it; ids escaped.
    assert cases[1:] == [
        ["case-<1>", "a/CT", "train-00001", "0.9900", "0.3000", "0.700", "0.5", "—"],
        ["case-3", "b/MR (pooled τ)", "train-00001", "0.9700", "0.4000", "0.700", "0.5", "—"],
    ]
    assert "case-<1>" not in page and "case-2" not in page and "case-4" not in page
    assert _table(page, "τ from") == [
        ["group", "train", "holdout", "τ", "τ from"],
        ["a/CT", "4", "5", "0.3000", "own"],
        ["b/MR", "0", "2", "0.4000", "pooled"],
    ]
    assert _table(page, "its near duplicate")[1:] == [["train-00001", "train-00002", "0.4500"]]
    assert "1 cases had no body to compare" in page and "<b>94.4%</b>" in page
    assert "shown; all are in the JSON" not in page  # 2 flagged <= MAX_FLAGGED_SHOWN
    # No thumbnails of cases (dict verdicts carry no map) nor of training scans: the histogram only.
    assert page.count("data:image/png;base64") == 1
    assert "This report holds no images of the training data" in page


def test_training_thumbnails_show_beside_each_flagged_case(report):
    _, page = report()  # training_thumbnails=True by default
    assert page.count("data:image/png;base64") == 1 + len(FLAGGED)


def test_the_html_shows_the_first_flagged_cases_and_the_json_all(make_index, tmp_path):
    n = MAX_FLAGGED_SHOWN + 1
    ids = [f"copy-{i:03d}" for i in range(n)]
    json_path, html_path = write_report(
        tmp_path,
        index=make_index(SCORES, GROUPS),
        synthetic_ids=ids,
        verdicts=[CASES["case-3"]] * n,
        settings={},
        training_thumbnails=False,
    )
    page = html_path.read_text()
    assert f"(first {MAX_FLAGGED_SHOWN} shown; all are in the JSON)" in page
    assert [i for i in ids if f"<td>{i}</td>" in page] == ids[:MAX_FLAGGED_SHOWN]
    assert [s["case_id"] for s in json.loads(json_path.read_text())["samples"] if s["flagged"]] == ids


# -- part 4: what a board reads ----------------------------------------------------------------


def test_every_table_column_has_a_header_and_image_rows_span_them_all(report):
    _, page = report()
    tables = _tables(page)
    assert len(tables) >= 5  # provenance, groups, flagged cases, near duplicates, self-test
    for table in tables:
        head, *rows = table
        assert head and all(tag == "th" and text.strip() for tag, text, _, _ in head), head
        for row in rows:
            assert all(tag == "td" for tag, *_ in row)
            # A data row has one cell per header, or is one cell spanning them all (an image row, "none").
            assert sum(span for _, _, span, _ in row) == len(head), (head, row)
    cases = next(t for t in tables if [c[1] for c in t[0]] == CASE_HEADER)
    image_rows = [row for row in cases[1:] if row[0][3]]
    assert len(image_rows) == len(FLAGGED) and all(len(row) == 1 for row in image_rows)


def test_the_provenance_block_and_the_notice_open_the_report(report):
    from medsynth.privacy.provenance import ReportProvenance

    prov = ReportProvenance(
        model={"id": "builtin:phantom-2d", "sha256": "ab" * 32},
        index={"path": "privacy/index.safetensors", "sha256": "cd" * 32},
        protocol={"name": "study-7", "file": "study.yaml", "sha256": "ef" * 32, "plan_sha256": "01" * 32},
        training_set={"counts": {"a/CT": 4}, "file_list_sha256": "23" * 32, "source": "config.json"},
    )
    summary, page = report(provenance=prov)
    assert summary["provenance"] == prov.to_dict()
    # The date is SOURCE_DATE_EPOCH's (pinned in tests/conftest.py), so two runs' reports compare byte for byte.
    pinned = datetime.fromtimestamp(int(os.environ["SOURCE_DATE_EPOCH"]), UTC)
    assert summary["provenance"]["created"] == pinned.strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = dict(_table(page, "what")[1:])
    assert rows["model"] == "builtin:phantom-2d" and rows["model digest (SHA-256)"] == "ab" * 32
    assert rows["privacy index digest (SHA-256)"] == "cd" * 32 and rows["protocol"] == "study-7 (study.yaml)"
    assert rows["protocol file digest (SHA-256)"] == "ef" * 32 and rows["plan digest (SHA-256)"] == "01" * 32
    assert rows["training set"] == "4 scans (a/CT: 4) — config.json"
    assert rows["training file list digest (SHA-256)"] == "23" * 32
    assert rows["report written"] == summary["provenance"]["created"] and rows["medsynth version"]
    # At the top: the notice, then the provenance, before any result.
    notice, block, result = (page.index(s) for s in ("msr-notice", "<h2>Provenance", "<h2>Result"))
    assert notice < block < result
    # The index's feature maps of training scans are shown beside the flagged cases: sensitive.
    assert "Sensitive: this report contains feature maps of training scans" in page


def test_unknown_provenance_is_said_not_left_out(report):
    summary, page = report(training_thumbnails=False)
    rows = dict(_table(page, "what")[1:])
    assert rows["model"] == rows["training set"] == rows["plan digest (SHA-256)"] == "not recorded"
    assert rows["protocol"] == "none (not made by a protocol run)"
    assert set(summary["provenance"]) == {"model", "index", "protocol", "training_set", "created", "medsynth_version"}


def test_the_notice_says_when_nothing_was_flagged(make_index, tmp_path):
    _, html_path = write_report(
        tmp_path,
        index=make_index(SCORES, GROUPS),
        synthetic_ids=["case-2"],
        verdicts=[CASES["case-2"]],
        settings={},
    )
    page = html_path.read_text()
    assert "No case was flagged, so this report holds no images of the training data" in page
    assert "Sensitive" not in page and _table(page, "matched transform")[1:] == [["none"]]


def test_near_duplicate_pairs_are_listed_once_with_the_count_expected(make_index, tmp_path):
    # train-00000 and train-00001 are each other's nearest (found from both ends), as are 2 and 3.
    index = make_index(SCORES, GROUPS, train_self_scores=[0.9, 0.9, 0.8, 0.8])
    index.train_self_nearest = np.array([1, 0, 3, 2])
    json_path, html_path = write_report(
        tmp_path, index=index, synthetic_ids=["case-2"], verdicts=[CASES["case-2"]], settings={}
    )
    summary, page = json.loads(json_path.read_text()), html_path.read_text()
    assert summary["train_near_duplicates"] == [
        {"a": "train-00000", "b": "train-00001", "score": 0.9},
        {"a": "train-00002", "b": "train-00003", "score": 0.8},
    ]
    assert summary["train_near_duplicate_pairs"] == 2 and summary["train_scans_above_tau"] == 4
    assert summary["train_scans_above_tau_expected"] == 2.0  # (1 - q) of the 4 searched, q = 0.5
    assert _table(page, "its near duplicate")[1:] == [
        ["train-00000", "train-00001", "0.9000"],
        ["train-00002", "train-00003", "0.8000"],
    ]
    assert "They make 2 distinct pairs; a pair whose scans are each other's nearest is found from both ends" in page
    assert "about 2.0 of the 4 searched scans above τ" in page


def test_the_near_duplicate_list_is_cut_but_the_count_is_not(make_index, tmp_path):
    index = make_index(SCORES, GROUPS, train_self_scores=[0.9, 0.9, 0.8, 0.8])
    index.train_self_nearest = np.array([1, 0, 3, 2])
    json_path, html_path = write_report(
        tmp_path, index=index, synthetic_ids=["c"], verdicts=[CASES["case-2"]], settings={}, near_duplicate_limit=1
    )
    assert json.loads(json_path.read_text())["train_near_duplicate_pairs"] == 2
    assert "They make 2 distinct pairs (the 1 most alike listed)" in html_path.read_text()


def _histogram_panels(monkeypatch, index, verdicts, tmp_path) -> list:
    from medsynth.privacy import report_figures

    drawn: list = []
    real = report_figures.histograms

    def spy(panels):
        drawn.extend(panels)
        return real(panels)

    monkeypatch.setattr(report_figures, "histograms", spy)
    write_report(tmp_path, index=index, synthetic_ids=list(range(len(verdicts))), verdicts=verdicts, settings={})
    return drawn


def test_a_histogram_per_group_with_its_own_tau_and_one_for_the_pooled(make_index, monkeypatch, tmp_path):
    own = _histogram_panels(monkeypatch, make_index(SCORES, GROUPS), list(CASES.values()), tmp_path / "a")
    assert [p.title for p in own] == ["a/CT (own τ from 5 holdout scans)", "groups judged by the pooled τ: b/MR"]
    assert [p.tau for p in own] == [0.30, 0.40]
    # Each panel holds its own group's synthetic scores: case-<1> (a/CT), case-3 (b/MR, pooled).
    assert [list(p.series[1][0]) for p in own] == [[0.99, 0.20], [0.97]]
    assert list(own[0].series[0][0]) == SCORES[:5]  # a/CT's holdout only
    # Every group pooled (2 holdout scans each < 3): one panel.
    pooled = _histogram_panels(
        monkeypatch, make_index(SCORES[:4], ["a/CT", "a/CT", "b/MR", "b/MR"]), [CASES["case-3"]], tmp_path / "b"
    )
    assert [p.title for p in pooled] == ["all groups (pooled τ)"]


def test_histograms_are_large_labelled_and_on_the_data_range():
    from medsynth.privacy.report_figures import HistPanel, histogram_figure

    scores = np.array([0.91, 0.93, 0.95, 0.97])
    fig = histogram_figure(
        [HistPanel("g", [(scores, "holdout → train"), (scores[:2], "synthetic → train")], 0.96, "τ")] * 2
    )
    width, height = fig.get_size_inches() * 90
    assert width >= 1000 and height >= 2 * 300  # pixels at the report's 90 dpi
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        lo, hi = ax.get_xlim()
        assert 0.85 < lo < 0.91 and 0.97 < hi < 1.0  # the scores' own range, not 0.5-1.0
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["holdout → train (n = 4)", "synthetic → train (n = 2)", "τ = 0.960"]


def test_the_self_test_table_says_what_each_of_its_edits_does(make_index, tmp_path):
    from medsynth.privacy.report_html import EDIT_WORDS
    from medsynth.privacy.selftest import edits

    names = list(edits(np.random.default_rng(0)))
    assert len(names) == 9 and set(names) <= set(EDIT_WORDS)
    selftest = {"planted": 18, "recall": 0.5, "per_edit": dict.fromkeys(names, 0.5), "sources": 2}
    _, html_path = write_report(
        tmp_path,
        index=make_index(SCORES, GROUPS, selftest=selftest),
        synthetic_ids=["c"],
        verdicts=[CASES["case-2"]],
        settings={},
    )
    rows = _table(html_path.read_text(), "what it does to the copy")[1:]
    assert [r[0] for r in rows] == names and [r[2] for r in rows] == ["50%"] * 9
    assert all(r[1] == EDIT_WORDS[r[0]] for r in rows)


def test_each_test_has_one_sentence_of_interpretation(report):
    _, page = report()
    sections = page.split("<h2>")[1:]
    tests = ["Result", "Similarity distributions", "Closer to train", "Flagged cases", "Near duplicates", "Detector"]
    for name in tests:
        (section,) = [s for s in sections if s.startswith(name)]
        assert section.count('<p class="msr-why">Interpretation: ') == 1, name
