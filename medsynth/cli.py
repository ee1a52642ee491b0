"""The ``medsynth`` command line: thin; it parses, calls the library, maps errors to exit codes.

Exit status: 0 success, 2 bad input (``MedsynthError``), 3 privacy gate failed (``PrivacyError``), 4 a fault of the
machine (``MachineError``), 130 interrupted, 1 an internal error (a bug: please report it with ``--debug`` output).
Errors print as one line, ``medsynth: error: ...`` (usage errors name the command and the value
given: ``medsynth generate: error: Invalid value for '--threads': ... (got '0'); see ...``);
``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from types import ModuleType

import click
import typer

from medsynth import __version__
from medsynth.errors import MedsynthError, os_fault
from medsynth.io.formats import FORMATS, choices_text

_typer_click: ModuleType
try:  # typer >= 0.25 vendors its own click: its exceptions are not click's
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

_EXIT = (click.exceptions.Exit, typer.Exit)
_USAGE = (click.exceptions.ClickException, _typer_click.ClickException)
_ABORT = (click.exceptions.Abort, typer.Abort)

app = typer.Typer(
    name="medsynth",
    help="Synthetic medical images from latent diffusion models, with a privacy gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medsynth {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool | None = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """medsynth: train, generate, gate and evaluate synthetic scans."""


# --- commands are registered below, one block per library module -------------------------


# --- evaluate (medsynth.evaluation): fidelity and downstream utility -------------------------
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


# --- io (medsynth.io): inspect and convert scans -------------------------------------------
# Help texts name the formats of the registry, so that a new format shows up in them.
_FORMAT_CHOICES = choices_text()
_DESTINATION_HELP = (
    f"Output file ({', '.join(n for n, f in FORMATS.items() if not f.is_folder)}) "
    f"or folder ({', '.join(n for n, f in FORMATS.items() if f.is_folder)})."
)


@app.command("inspect")
def _inspect(
    paths: list[str] = typer.Argument(..., help="Scan files, DICOM folders or trees of scans."),  # noqa: B008 (typer's idiom for a list argument)
    as_json: bool = typer.Option(False, "--json", help="One JSON object per scan on stdout."),
) -> int:
    """One line per scan: path, modality, 2D/3D, shape, spacing (mm) and orientation code.

    Headers only: no pixel data is decoded, so it is fast on any file. A scan whose geometry
    was guessed says so. A file that cannot be read is reported on stderr and the rest are
    still inspected; the exit status is 2 when any failed.
    """
    import json

    from medsynth.io import describe_scan, describe_scans

    failed = 0
    for path in paths:
        for label, item in describe_scans(path):
            if isinstance(item, MedsynthError):
                failed += 1
                msg = " ".join(str(item).split())  # one line, whatever the reader wrote
                msg = msg if msg.startswith(label) else f"{label}: {msg}"
                typer.echo(f"medsynth: error: {msg}", err=True)
                continue
            facts = describe_scan(item)
            if as_json:
                typer.echo(json.dumps({"path": label, **facts}))
            else:
                typer.echo(
                    f"{label}  {facts['modality']}  {facts['spatial_dims']}D"
                    f"  shape={'x'.join(map(str, facts['shape']))}"
                    f"  spacing={'x'.join(f'{v:g}' for v in facts['spacing'])}mm"
                    f"  orientation={facts['orientation']}"
                    + (f"  channels={facts['channels']}" if facts["channels"] > 1 else "")
                    + (f"  geometry=guessed ({facts['geometry_guessed']})" if facts["geometry_guessed"] else "")
                )
    return 2 if failed else 0


@app.command("convert")
def _convert(
    src: str = typer.Argument(..., help="A scan file or a DICOM series folder."),
    dst: str = typer.Argument(..., help=_DESTINATION_HELP),
    fmt: str = typer.Option(..., "--format", help=f"Output format: {_FORMAT_CHOICES}."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing destination."),
    modality: str | None = typer.Option(
        None,
        "--modality",
        help="The source's DICOM modality code (CT, MR, DX...) when its file stores none (NIfTI, PNG); "
        "it must agree with a DICOM's own Modality.",
    ),
    allow_guessed_geometry: bool = typer.Option(
        False,
        "--allow-guessed-geometry",
        help="Write DICOM even when the source's geometry was guessed (PNG, NIfTI without sform/qform, "
        "DICOM without positions); the files say so in ImageComments.",
    ),
) -> None:
    """Convert one scan between DICOM, NIfTI and PNG; nothing is written when it fails."""
    from medsynth.io import convert

    written, scan = convert(
        src, dst, fmt, overwrite=overwrite, modality=modality, allow_guessed_geometry=allow_guessed_geometry
    )
    typer.echo(f"wrote {written} ({fmt}, {scan.modality} {scan.spatial_dims}D, shape {scan.shape})")


# --- protocol (medsynth.protocol): validate, generate, demo, protocol-schema ------------------
_THREADS_HELP = (
    "CPU threads for sampling (default: torch's, one per core). On a machine shared with other "
    "jobs, fewer threads than cores avoids oversubscription, which can slow sampling many times."
)


def _run_protocol(protocol: str, out: str | None, device: str, as_json: bool, force: bool, threads: int | None) -> None:
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

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        result = generate(
            protocol, out=out, device=device, force=force, progress=JsonProgress() if as_json else RichProgress()
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
) -> None:
    """Generate exactly the protocol's quotas, gated for memorization; rerun to resume.

    Exit status: 0 success, 2 bad input, 3 the privacy gate failed the run.
    """
    _run_protocol(protocol, out, device, as_json, force, threads)


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


# --- training (medsynth.training): train a model directory from a YAML config -----------------
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
) -> None:
    """Write built-in chest phantoms (CT and MR; normal, nodule, mass, effusion) and labels.csv."""
    from medsynth.data.phantoms import phantom_dataset

    labels = phantom_dataset(out, dim=dim, count=count, fmt=fmt, seed=seed, size=size, masks=masks)
    typer.echo(f"wrote {count} {dim}D phantoms ({fmt}, {size}^{dim}) to {out}; labels: {labels}")


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


def _given(param_names: list[str], args: list[str]) -> str | None:
    """The value typed for an option (``--opt V`` or ``--opt=V``), or None."""
    for i, a in enumerate(args):
        for name in param_names:
            if a == name and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(name + "="):
                return a[len(name) + 1 :]
    return None


def _usage_line(exc: Exception, args: list[str]) -> str:
    """Click's three-line usage error as one line: command, message, the value given, where to look."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "medsynth"
    message = (exc.format_message() if hasattr(exc, "format_message") else str(exc)).rstrip(".")
    param = getattr(exc, "param", None)
    names = list(getattr(param, "opts", []) or [])
    value = _given(names, args) if names else None
    got = f" (got {value!r})" if value is not None else ""
    return f"{command}: error: {message}{got}; see '{command} --help'"


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="medsynth", standalone_mode=False)
    except _EXIT as exc:
        return exc.exit_code
    except _USAGE as exc:  # usage errors: unknown option, missing argument, value out of range
        print(_usage_line(exc, args), file=sys.stderr)
        return 2
    except _ABORT:
        print("medsynth: error: aborted", file=sys.stderr)
        return 130
    except MedsynthError as exc:
        if debug:
            raise
        print(f"medsynth: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medsynth: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not the user's fault: still one line unless --debug
        if debug:
            raise
        fault = os_fault(exc)  # a full disk, a read-only folder (exit 4), a bad path (2): not bugs
        internal = f"internal error: {type(exc).__name__}: {exc} "
        internal += "(rerun with --debug for the traceback and please report it)"
        print(f"medsynth: error: {fault or internal}", file=sys.stderr)
        return fault.exit_code if fault else 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
