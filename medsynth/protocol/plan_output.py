"""Checks of a protocol's ``output`` against the model and the world: its formats, and its PACS.

``check_formats``: a 3D model's cases need formats that hold volumes (not png).

``check_push``: ``validate_protocol`` (so ``medsynth validate`` and the start of ``medsynth
generate``) asks the server of ``output.push`` once (QIDO-RS for DICOMweb, C-ECHO for DIMSE)
with the credentials in the environment: an unreachable server, an untrusted certificate, a
refused login or a rejected AE title is one line, exit 2, before any case is generated. The
runner then pushes each case as it finishes (``push_target``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medsynth.errors import MedsynthError
from medsynth.io.formats import FORMATS, get_format
from medsynth.pacs.target import Target, parse_target
from medsynth.protocol.schema import Protocol, ProtocolFile
from medsynth.protocol.schema_push import DicomwebPushSpec

if TYPE_CHECKING:
    from medsynth.protocol.plan import ModelInfo


def check_formats(add: Callable[[Any, str], None], p: Protocol, model: ModelInfo) -> None:
    """One error per format that cannot hold the model's cases (png for a 3D model)."""
    for fmt in p.output.formats:
        if model.spatial_dims != 2 and not get_format(fmt).holds_3d:
            volumetric = " and/or ".join(f.name for f in FORMATS.values() if f.holds_3d)
            add(
                ("output", "formats"),
                f"{fmt} is only for 2D models; model {model.ref} is {model.spatial_dims}D: use {volumetric}",
            )


def push_target(source: ProtocolFile) -> Target | None:
    """The protocol's push target (``ca_bundle`` relative to the protocol file), or None.

    Raises:
        InputError: the CA bundle is not a file.
    """
    spec = source.protocol.output.push
    if spec is None:
        return None
    bundle = None if spec.ca_bundle is None else source.base_dir / spec.ca_bundle
    where = f"{source.path}: output.push"
    if isinstance(spec, DicomwebPushSpec):
        return parse_target(dicomweb=spec.dicomweb, ca_bundle=bundle, where=where)
    return parse_target(dimse=spec.dimse, calling_aet=spec.calling_aet, ca_bundle=bundle, where=where)


def check_push(source: ProtocolFile) -> list[str]:
    """The error lines (none, or one) of the protocol's push: a bad CA bundle, or a server that cannot be used now."""
    from medsynth.pacs.push import check_target

    try:
        target = push_target(source)
    except MedsynthError as exc:
        return [str(exc)]
    if target is None:
        return []
    try:
        check_target(target)
    except MedsynthError as exc:
        return [f"{source.path}: output.push: {exc} (checked before generating anything)"]
    return []
