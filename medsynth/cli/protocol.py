"""``medsynth validate|generate|demo|protocol-schema`` (medsynth.protocol)."""

from __future__ import annotations

import typer

from medsynth.cli.app import app

_THREADS_HELP = (
    "CPU threads for sampling (default: torch's, one per core). On a machine shared with other "
    "jobs, fewer threads than cores avoids oversubscription, which can slow sampling many times."
)
_MAX_MEMORY_HELP = (
    'Memory budget of decoding (and of extend\'s encoding): bytes or a size such as "4GB", "512MiB"; '
    "overrides the protocol's sampler.max_memory. Default: half the free RAM (GPU memory on CUDA). "
    "Larger volumes then decode slab by slab, with the same result."
)


def _run_protocol(
    protocol: str,
    out: str | None,
    device: str,
    as_json: bool,
    force: bool,
    threads: int | None,
    max_memory: str | None = None,
) -> None:
    import json

    from medsynth.errors import PrivacyError
    from medsynth.protocol.progress import JsonProgress, RichProgress
    from medsynth.protocol.runner import format_summary, generate

    def show(summary: dict) -> None:
        if as_json:
            typer.echo(json.dumps({"event": "summary", **summary}, sort_keys=True))
        else:
            for line in format_summary(summary):
                typer.echo(line)

    if max_memory is not None:
        from medsynth.sampling.memory import parse_memory

        max_memory = parse_memory(max_memory, field="--max-memory")  # type: ignore[assignment]
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        result = generate(
            protocol,
            out=out,
            device=device,
            force=force,
            progress=JsonProgress() if as_json else RichProgress(),
            max_memory=max_memory,
        )
    except PrivacyError as exc:
        # What the failed run still wrote, if anything. getattr until errors.PrivacyError
        # declares its ``result`` field (issue 12); then this is ``exc.result``.
        so_far = getattr(exc, "result", None)
        if so_far is not None:
            show(so_far.summary)
        raise
    if result.summary.get("rank", 0) == 0 and "quotas" in result.summary:
        show(result.summary)


@app.command("validate")
def _validate(
    protocol: str = typer.Argument(..., help="The protocol YAML file."),
    out: str | None = typer.Option(None, "--out", help="Output folder overriding output.dir (shown only)."),
) -> None:
    """Check a protocol completely before any model runs; exit 2 with one line per problem."""
    from medsynth.protocol.plan import validate_protocol

    plan = validate_protocol(protocol, out=out)
    p = plan.protocol
    cases = sum(q.count for q in plan.quotas)
    typer.echo(f"{protocol}: OK: protocol {p.protocol}, name {p.name}")
    typer.echo(f"  model {plan.model.id} ({plan.model.spatial_dims}D, {plan.model.kind})")
    for q in plan.quotas:
        how = f"extend {len(q.extend.sources)} source(s) at strength {q.extend.strength}" if q.extend else "sample"
        typer.echo(
            f"  {q.where}: {q.count} x {q.group}, {q.method} {q.steps} steps, guidance {q.guidance_scale:g}, {how}"
        )
    typer.echo(f"  {cases} cases in {len(plan.batches)} batches of at most {p.sampler.batch_size}")
    typer.echo(f"  formats {', '.join(p.output.formats)} -> {plan.output_dir}")
    gate = f"on (quantile {p.privacy.quantile}, on_flag {p.privacy.on_flag})" if p.privacy.gate else "OFF"
    typer.echo(f"  privacy gate {gate}")
    for use in plan.indexes:
        typer.echo(f"  {use.name} {use.path}:")
        for line in use.strength.lines():
            typer.echo(f"    {line}")
        for weak in use.weaknesses:
            typer.echo(f"    WEAK (accepted by privacy.accept_weak_index): {weak}")


@app.command("generate")
def _generate(
    protocol: str = typer.Argument(..., help="The protocol YAML file."),
    out: str | None = typer.Option(None, "--out", help="Output folder (overrides the protocol's output.dir)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (under torchrun: each rank's GPU)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable progress: one JSON object per line."),
    force: bool = typer.Option(False, "--force", help="Discard an existing run in the output folder; start over."),
    threads: int | None = typer.Option(None, "--threads", min=1, help=_THREADS_HELP),
    max_memory: str | None = typer.Option(None, "--max-memory", help=_MAX_MEMORY_HELP),
) -> None:
    """Generate exactly the protocol's quotas, gated for memorization; rerun to resume.

    Exit status: 0 success, 2 bad input, 3 the privacy gate failed the run.
    """
    _run_protocol(protocol, out, device, as_json, force, threads, max_memory)


@app.command("demo")
def _demo(
    out: str = typer.Option("demo-output", "--out", help="Output folder."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable progress lines."),
    threads: int | None = typer.Option(None, "--threads", min=1, help=_THREADS_HELP),
) -> None:
    """Run the shipped demo protocol end to end (2D phantoms, DICOM + NIfTI + PNG, privacy report)."""
    from medsynth.protocol import DEMO_PROTOCOL

    if not as_json:
        typer.echo(f"medsynth demo: running {DEMO_PROTOCOL} into {out}")
    _run_protocol(str(DEMO_PROTOCOL), out, device, as_json, False, threads)


@app.command("protocol-schema")
def _protocol_schema() -> None:
    """Print the JSON Schema of protocol files (version 1)."""
    import json

    from medsynth.protocol.schema import protocol_json_schema

    typer.echo(json.dumps(protocol_json_schema(), indent=2, sort_keys=True))
