"""``medsynth evaluate fidelity|utility`` (medsynth.evaluation)."""

from __future__ import annotations

import typer

from medsynth.cli.app import app

evaluate_app = typer.Typer(
    help="Judge synthetic scans against real ones: fidelity, diversity, conditional accuracy, utility.",
    no_args_is_help=True,
)
app.add_typer(evaluate_app, name="evaluate")


@evaluate_app.command("fidelity")
def _evaluate_fidelity(
    real: str = typer.Option(..., "--real", help="Real dataset CSV (path,pathology,modality)."),
    synthetic: str = typer.Option(
        ..., "--synthetic", help="Synthetic dataset CSV, or a `medsynth generate` output folder."
    ),
    out: str = typer.Option(..., "--out", help="Folder for fidelity.json and the PNG plots."),
    size: int = typer.Option(64, "--size", min=8, help="Side scans are resized to for every figure."),
    encoder_steps: int = typer.Option(
        400, "--encoder-steps", min=1, help="Training steps of the feature encoder (batch 32)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the real-data split and the encoder."),
) -> None:
    """FID, KID, MMD, precision/recall, MS-SSIM diversity, conditional accuracy; each with a real baseline."""
    from medsynth.evaluation.fidelity import FidelityConfig, evaluate_fidelity
    from medsynth.evaluation.sources import load_labelled

    report = evaluate_fidelity(
        load_labelled(real, role="--real"),
        load_labelled(synthetic, role="--synthetic"),
        out,
        FidelityConfig(in_size=size, encoder_steps=encoder_steps, seed=seed),
    )
    fmt = lambda x: "n/a" if x is None else f"{x:.4g}"  # noqa: E731
    typer.echo(f"{'metric':22s} {'synthetic':>10s} {'real baseline':>14s}")
    for name, v in report["metrics"].items():
        typer.echo(f"{name:22s} {fmt(v['synthetic']):>10s} {fmt(v['real_baseline']):>14s}")
    typer.echo(f"wrote {out}/fidelity.json and {', '.join(report['plots'])}")


@evaluate_app.command("utility")
def _evaluate_utility(
    train: str = typer.Option(..., "--train", help="Real training dataset CSV."),
    test: str = typer.Option(..., "--test", help="Real test dataset CSV (subject-disjoint from --train)."),
    synthetic: str = typer.Option(
        ..., "--synthetic", help="Synthetic dataset CSV, or a `medsynth generate` output folder."
    ),
    out: str = typer.Option(..., "--out", help="Folder for utility.json and the PNG plots."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Training runs per arm (mean and 95% t-interval)."),
    ratios: str | None = typer.Option(
        None, "--ratios", help="Comma-separated synthetic:real ratios to sweep, e.g. 0.5,1,2."
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Optimisation steps per run (default: 5 epochs of --train)."
    ),
    size: int = typer.Option(64, "--size", min=8, help="Side scans are resized to for the classifier."),
    seed: int = typer.Option(0, "--seed", help="Base seed."),
    augment: bool = typer.Option(False, "--augment", help="Random flips and small shifts of training batches."),
    blur_sigma: float = typer.Option(
        0.0,
        "--blur-sigma",
        min=0.0,
        help="Texture augmentation: blur training batches (sigma up to this, voxels) in every arm, so the "
        "classifier cannot use 'smoother than real' as a cue for synthetic cases' class.",
    ),
) -> None:
    """Train the same classifier on real, real+synthetic and synthetic data; score on real test data."""
    from medsynth.errors import InputError
    from medsynth.evaluation.sources import load_labelled
    from medsynth.evaluation.utility import UtilityConfig, evaluate_utility

    ratio_list = None
    if ratios:
        try:
            ratio_list = [float(r) for r in ratios.split(",") if r.strip()]
        except ValueError:
            raise InputError(f"--ratios {ratios!r}: expected comma-separated numbers, e.g. 0.5,1,2") from None
    report = evaluate_utility(
        load_labelled(train, role="--train"),
        load_labelled(test, role="--test"),
        load_labelled(synthetic, role="--synthetic"),
        out,
        UtilityConfig(in_size=size, steps=steps, seeds=seeds, seed=seed, augment=augment, blur_sigma=blur_sigma),
        ratios=ratio_list,
    )
    for name, arm in report["arms"].items():
        recall = ", ".join(f"{c} {v:.3f}" for c, v in arm["per_class_recall"].items())
        typer.echo(
            f"{name:15s} balanced accuracy {arm['balanced_accuracy']:.3f}  AUROC {arm['auroc']:.3f}  recall: {recall}"
        )
    typer.echo(f"wrote {out}/utility.json and {', '.join(report['plots'])}")
