"""The CLI shell: exit statuses and one-line errors shared by every command."""

from __future__ import annotations

from medsynth.cli import main


def test_usage_errors_exit_2_not_internal_error(capsys):
    assert main(["inspect", "--bogus"]) == 2
    assert main(["convert"]) == 2  # missing arguments
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err


def test_usage_errors_are_one_line_naming_the_option_and_value(capsys):
    assert main(["generate", "protocol.yaml", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("medsynth generate: error: ")
    assert "'--threads'" in err and "(got '0')" in err and "medsynth generate --help" in err
    assert main(["evaluate", "utility", "--blur-sigma=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'--blur-sigma'" in err and "(got '-1')" in err, err
    assert main(["generate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Missing argument 'protocol'" in err and "(got" not in err, err


def test_version_exits_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("medsynth ")
