"""``medsynth train`` and ``medsynth phantoms`` (medsynth.training, medsynth.data.phantoms)."""

from __future__ import annotations

import typer

from medsynth.cli.app import app
from medsynth.io.formats import choices_text

_FORMAT_CHOICES = choices_text()


@app.command("train")
def _train(
    config: str = typer.Argument(..., help="Training YAML (see docs/training.md and configs/)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from checkpoints in the work folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    lesion_only: bool = typer.Option(
        False,
        "--lesion-only",
        help="Train only the lesion model, into the model already in output_dir (trained on this config's data).",
    ),
    check: bool = typer.Option(
        False, "--check", help="Check the config and every scan of every split; train nothing, write nothing."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Training scans off the grid's field of view are errors, not warnings."
    ),
) -> None:
    """Train an autoencoder and a conditioned latent diffusion model; write the model directory.

    When the training data has masks, a lesion model is trained too (MODEL/lesion/; docs/training.md).
    Works under torchrun too: `torchrun --nproc_per_node=N -m medsynth.cli train CONFIG.yaml`.
    """
    from medsynth.training.config import load_config

    cfg = load_config(config)  # validate before the slow import of the networks
    if check:
        from medsynth.training.checks import check_config

        for line in check_config(cfg, strict=strict).notes:
            typer.echo(line)
        typer.echo(f"{config}: OK, ready to train")
        return
    from medsynth.training.pipeline import train

    command = f"medsynth train {config}" + (" --lesion-only" if lesion_only else "")
    out = train(cfg, resume=resume, progress=progress, command=command, lesion_only=lesion_only, strict=strict)
    typer.echo(f"model directory: {out}")


# --- built-in phantoms (medsynth.data.phantoms) ---------------------------------------------
@app.command("phantoms")
def _phantoms(
    out: str = typer.Argument(..., help="Output folder: scans named case-NNNNN plus labels.csv."),
    dim: int = typer.Option(2, "--dim", help="2 (axial slices) or 3 (volumes)."),
    count: int = typer.Option(..., "--count", help="Number of scans, balanced over pathology x modality."),
    fmt: str = typer.Option("nifti", "--format", help=f"{_FORMAT_CHOICES}."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed; a different seed gives different subjects."),
    size: int = typer.Option(64, "--size", help="Voxels per axis, 32..256 (field of view 350 mm)."),
    masks: bool = typer.Option(
        False,
        "--masks",
        help="Also write each lesion's mask beside its scan (NIfTI label map; PNG for --format png) "
        "and a mask column in labels.csv.",
    ),
    pathologies: str = typer.Option(
        None,
        "--pathologies",
        help="Comma-separated classes to balance over, e.g. normal,nodule,mass,effusion (the four the shipped "
        "models know) or normal,pneumothorax; join findings of one class with |. Default: all five.",
        show_default=False,
    ),
    scanner: str = typer.Option(
        "A", "--scanner", help="A (smooth CT kernel, T2-weighted MR) or B (sharp CT kernel, T1-weighted MR, coil bias)."
    ),
) -> None:
    """Write built-in chest phantoms (CT and MR; normal, nodule, mass, effusion, pneumothorax) and labels.csv."""
    from medsynth.data.phantoms import PATHOLOGIES, phantom_dataset

    classes = PATHOLOGIES if pathologies is None else _pathology_classes(pathologies)
    labels = phantom_dataset(
        out, dim=dim, count=count, fmt=fmt, seed=seed, size=size, masks=masks, pathologies=classes, scanner=scanner
    )
    typer.echo(f"wrote {count} {dim}D phantoms ({fmt}, {size}^{dim}) to {out}; labels: {labels}")


def _pathology_classes(text: str) -> list[str]:
    """The classes of ``--pathologies a,b|c``, each checked (with a did-you-mean), before any file is written."""
    from medsynth.conditions import pathology_label
    from medsynth.data.phantoms import parse_pathologies
    from medsynth.errors import InputError

    entries = [e.strip() for e in text.split(",")]
    if not any(entries) or not all(entries):
        raise InputError(
            f"--pathologies {text!r}: expected comma-separated phantom pathologies, e.g. normal,nodule; "
            "an entry is empty"
        )
    classes: list[str] = []
    for entry in entries:
        try:
            label = pathology_label(parse_pathologies(entry))
        except InputError as exc:
            raise InputError(f"--pathologies {text!r}: {exc}") from None
        if label in classes:
            raise InputError(f"--pathologies {text!r}: {entry!r} names the class {label!r} twice; give each class once")
        classes.append(label)
    return classes
