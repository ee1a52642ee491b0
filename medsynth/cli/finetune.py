"""``medsynth finetune`` and ``medsynth merge`` (medsynth.adapters)."""

from __future__ import annotations

import typer

from medsynth.cli.app import app


@app.command("finetune")
def _finetune(
    config: str = typer.Argument(..., help="Fine-tuning YAML (see docs/finetuning.md)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from checkpoints in the work folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Teach a trained model new pathologies/modalities or a new scanner (LoRA, embedding or full fine-tuning).

    Writes an adapter directory that names its base by id and sha256 and stores only what changed;
    `medsynth generate` and load_model use it as a model. Works under torchrun too.
    """
    from medsynth.adapters.config import load_config

    cfg = load_config(config)  # validate before the slow import of the networks and peft
    from medsynth.adapters.store import adapter_bytes
    from medsynth.adapters.train import finetune

    out = finetune(cfg, resume=resume, progress=progress, command=f"medsynth finetune {config}")
    typer.echo(f"adapter directory: {out} ({adapter_bytes(out):,} bytes of weights)")


@app.command("merge")
def _merge(
    adapted: str = typer.Argument(..., help="A fine-tuned (adapter) model directory."),
    out: str = typer.Argument(..., help="The standalone model directory to write."),
    scale: float = typer.Option(None, "--scale", min=0.0, help="Adapter scale to merge at (default: the adapter's)."),
) -> None:
    """Write a standalone model directory: the base with the adapter folded in (LoRA merged)."""
    from medsynth.adapters.store import merge

    typer.echo(f"model directory: {merge(adapted, out, scale=scale)}")
