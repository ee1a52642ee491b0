"""Who and what a written DICOM series says it is: patient, study and series identity and names.

A PACS files instances under PatientID and StudyInstanceUID, so these must never be shared by
two different synthetic patients, and must stay the same when a case is written again:

* with a namespace (the protocol runner passes the protocol's sha256), the identity is
  derived from the namespace, the case id and the case's seed: a resumed or repeated run of
  one protocol rewrites the same ids, two protocols never share one;
* without one (a library call, ``medsynth convert``), from a digest of the scan's content
  (pixels, geometry, modality) and the case id: re-converting a file gives the same ids, two
  different source files never share one, even when written under the same folder name.

PatientID is ``SYN-<case>-<12 hex>`` (``ANON-`` for a converted scan), PatientName
``SYNTHETIC^<case>-<12 hex>`` (``ANONYMOUS^``), StudyID ``SYN-<12 hex>`` (SH, 16 characters),
where the hex digits are a digest of the identity; a long case id is shortened in the names
(the digest covers all of it). UIDs are ``2.25.<UUID5>`` of the identity.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import numpy as np

from medsynth.io.scan import Scan

_UID_NAMESPACE = uuid.UUID("6f1c0a8e-2b1d-5c4e-9a57-6d6564737974")  # fixed: medsynth's UIDs
_DIGEST_HEX = 12  # 48 bits: a collision between two protocols' equal case ids is ~1 in 10^14
_LO, _SH, _PN_GROUP = 64, 16, 64  # DICOM value lengths: LO, SH, one PN component group


def uid(*parts: str) -> str:
    """A '2.25.<UUID>' UID (ISO/IEC 9834-8) from a name-based UUID of ``parts``: same parts, same UID.

    pydicom's ``generate_uid(prefix=None)`` ignores ``entropy_srcs`` and draws a random
    UUID, and a prefix would need an organisation root; a UUID5 gives both properties.
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


def content_digest(scan: Scan) -> str:
    """SHA-256 of a scan's voxels, shape, affine and modality (no metadata: it may name a source)."""
    h = hashlib.sha256()
    h.update(f"{scan.modality}|{scan.array.shape}|{scan.array.dtype}".encode())
    h.update(np.ascontiguousarray(scan.affine, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(scan.array).data)  # the buffer itself: no copy of the volume
    return h.hexdigest()


@dataclass(frozen=True)
class SeriesIdentity:
    """The identifying attributes of one written series."""

    patient_id: str
    patient_name: str
    study_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str


def series_identity(
    scan: Scan,
    *,
    case_id: str,
    synthetic: bool,
    namespace: str,
    seed: int | None,
    series_description: str,
    iod: str,
) -> SeriesIdentity:
    """The patient, study and series identity of ``case_id`` (see the module docstring)."""
    source = namespace if namespace else "content:" + content_digest(scan)
    key = (source, case_id, "" if seed is None else str(seed))
    digest = hashlib.sha256(chr(31).join(("patient", *key)).encode()).hexdigest()[:_DIGEST_HEX]
    id_prefix, family = ("SYN", "SYNTHETIC") if synthetic else ("ANON", "ANONYMOUS")
    # The longer prefix bounds the case part so that PatientID (LO) and PatientName (PN) fit.
    room = min(_LO - len(id_prefix), _PN_GROUP - len(family)) - 2 - _DIGEST_HEX
    label = f"{case_id[:room]}-{digest}"
    return SeriesIdentity(
        patient_id=f"{id_prefix}-{label}",
        patient_name=f"{family}^{label}",
        study_id=f"{id_prefix}-{digest}"[:_SH],
        study_uid=uid("study", *key),
        series_uid=uid("series", *key, series_description, iod),
        frame_of_reference_uid=uid("frame-of-reference", *key),
    )


def _pathology_text(pathology: str) -> str:
    return "+".join(p for p in pathology.split("|") if p)


def description(*, synthetic: bool, modality: str, pathology: str | None, model: str | None, limit: int = _LO) -> str:
    """StudyDescription / SeriesDescription: medsynth, the condition and the model (LO, 64 characters).

    ``medsynth synthetic effusion+nodule CT, model builtin:phantom-2d``; a converted scan:
    ``converted by medsynth, CT``. A model id too long for the rest is cut, ending in ``~``.
    """
    if not synthetic:
        return f"converted by medsynth, {modality}"[:limit]
    text = "medsynth synthetic " + (f"{_pathology_text(pathology)} " if pathology else "") + modality
    if model:
        room = limit - len(text) - len(", model ")
        if room >= 2:
            text += ", model " + (model if len(model) <= room else model[: room - 1] + "~")
    return text[:limit]
