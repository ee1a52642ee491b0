"""The report names the flagged cases and gives the thresholds and counts, in JSON and in HTML."""

from __future__ import annotations

import json

import pytest

from medsynth.privacy.report import MAX_FLAGGED_SHOWN, write_report

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
    # Training pairs above the pooled tau (0.40): only train-00001 ~ train-00002 (0.45).
    assert summary["train_near_duplicates"] == [{"a": "train-00001", "b": "train-00002", "score": 0.45}]
    assert summary["settings"] == {"quantile": 0.5, "on_flag": "drop"}
    assert summary["samples"][2]["group_used"] == "pooled" and summary["samples"][2]["threshold"] == 0.40


def test_the_html_names_flagged_cases_only_and_gives_taus_and_counts(report):
    _, page = report(training_thumbnails=False)
    assert "4 synthetic cases checked; <b>2 flagged</b> (50.0%)" in page
    assert "<td>case-&lt;1&gt;</td><td>0.9900</td><td>0.3000</td><td>a/CT</td><td>train-00001</td>" in page
    assert "<td>case-3</td><td>0.9700</td><td>0.4000</td><td>pooled</td><td>train-00001</td>" in page
    assert "case-<1>" not in page and "case-2" not in page and "case-4" not in page
    assert "<tr><td>a/CT</td><td>4</td><td>5</td><td>0.3000</td></tr>" in page
    assert "<tr><td>b/MR</td><td>0</td><td>2</td><td>0.4000 (pooled)</td></tr>" in page
    assert "<li>train-00001 ~ train-00002 (0.450)</li>" in page
    assert "1 cases had no body to compare" in page and "<b>94.4%</b>" in page
    assert "shown; all are in the JSON" not in page  # 2 flagged <= MAX_FLAGGED_SHOWN
    # No thumbnails of cases (dict verdicts carry no map) nor of training scans: the histogram only.
    assert page.count("data:image/png;base64") == 1


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
