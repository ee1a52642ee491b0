"""``medsynth push`` (medsynth.pacs)."""

from __future__ import annotations

import typer

from medsynth.cli.app import app


@app.command("push")
def _push(
    output_dir: str = typer.Argument(..., help="A `medsynth generate` output folder (with manifest.jsonl)."),
    dicomweb: str | None = typer.Option(
        None,
        "--dicomweb",
        help="DICOMweb service root URL (STOW-RS), e.g. https://pacs.example.org/dicom-web. Credentials come "
        "from MEDSYNTH_DICOMWEB_USER + MEDSYNTH_DICOMWEB_PASSWORD, or MEDSYNTH_DICOMWEB_TOKEN, never the URL.",
    ),
    dimse: str | None = typer.Option(None, "--dimse", help="C-STORE SCP as AET@HOST:PORT, e.g. ORTHANC@pacs:4242."),
    calling_aet: str | None = typer.Option(
        None, "--calling-aet", help="DIMSE: this side's AE title, as the PACS knows it (default MEDSYNTH)."
    ),
    ca_bundle: str | None = typer.Option(
        None,
        "--ca-bundle",
        help="PEM file of a private CA: verifies an https:// server; for DIMSE, turns on DICOM TLS.",
    ),
) -> int:
    """Store the folder's complete synthetic cases in a PACS; rerun to resume (nothing is stored twice).

    Exit status: 0 success, 2 bad input, an unreachable server or a refused login (one line).
    """
    from medsynth.pacs.push import push_folder
    from medsynth.pacs.target import parse_target

    target = parse_target(dicomweb=dicomweb, dimse=dimse, calling_aet=calling_aet, ca_bundle=ca_bundle)
    for line in push_folder(output_dir, target).lines():
        typer.echo(line)
    return 0
