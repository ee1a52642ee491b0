"""``medsynth privacy-check`` and ``medsynth privacy-index`` (medsynth.privacy)."""

from __future__ import annotations

import typer

from medsynth.cli.app import app


@app.command("privacy-check")
def _privacy_check(
    train: str = typer.Option(..., "--train", help="Training set CSV (path,pathology,modality)."),
    holdout: str = typer.Option(..., "--holdout", help="Holdout CSV: scans the model never saw, other patients."),
    synthetic: str = typer.Option(..., "--synthetic", help="Synthetic set: a dataset CSV or a medsynth output dir."),
    out: str = typer.Option(..., "--out", help="Folder for privacy_report.json and .html."),
    quantile: float = typer.Option(0.99, "--quantile", help="tau = this quantile of holdout->train similarity."),
    strict: bool = typer.Option(False, "--strict", help="Fail when any case is flagged."),
) -> int:
    """Check any synthetic set for near copies of training scans; exit 0 pass, 3 fail, 2 bad input."""
    from pathlib import Path

    from medsynth.privacy.check import privacy_check

    r = privacy_check(Path(train), Path(holdout), Path(synthetic), Path(out), quantile, strict)
    typer.echo(f"privacy check passed: {r['flagged']} of {r['checked']} flagged; report: {r['report']}")
    return 0


@app.command("privacy-index")
def _privacy_index(
    model: str = typer.Argument(..., help="Model directory or builtin:NAME."),
    train: str = typer.Option(..., "--train", help="The model's training set CSV."),
    holdout: str = typer.Option(..., "--holdout", help="Holdout CSV (never trained on, disjoint by patient)."),
    quantile: float = typer.Option(0.99, "--quantile"),
    force: bool = typer.Option(
        False, "--force", help="Build it even when --train is not the model's training set (recorded in the index)."
    ),
) -> int:
    """Rebuild a model's privacy index (MODEL/privacy) from its training and holdout sets."""
    from pathlib import Path

    from medsynth.privacy.check import privacy_index

    path = privacy_index(model, Path(train), Path(holdout), quantile, force=force)
    typer.echo(f"privacy index written to {path}")
    return 0
