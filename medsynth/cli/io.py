"""``medsynth inspect`` and ``medsynth convert`` (medsynth.io)."""

from __future__ import annotations

import typer

from medsynth.cli.app import app
from medsynth.errors import MedsynthError
from medsynth.io.formats import FORMATS, choices_text

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
