"""The CLI shell: exit statuses and one-line errors shared by every command."""

from __future__ import annotations

from medsynth.cli import main


def test_usage_errors_exit_2_not_internal_error(capsys):
    assert main(["inspect", "--bogus"]) == 2
    assert main(["convert"]) == 2  # missing arguments
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err


def test_version_exits_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("medsynth ")
