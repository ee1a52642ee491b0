"""Modality codes: the DICOM vocabulary a user-given modality (``convert --modality``) is checked against.

The known codes are the Defined Terms of DICOM CID 33 "Modality" as pydicom ships them
(``pydicom.sr.codedict.codes.cid33``: CT, MR, PT, US, CR, DX, MG, NM, XA, OT, ...), so the
list follows the standard as pydicom is updated instead of being copied here.
"""

from __future__ import annotations

import difflib
from functools import cache

from medsynth.errors import InputError

# Shown in messages: the codes people mean most of the time.
COMMON_MODALITIES = ("CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT")


@cache
def known_modalities() -> frozenset[str]:
    """The DICOM Modality Defined Terms (CID 33), upper-case."""
    from pydicom.sr.codedict import codes

    cid = codes.cid33
    return frozenset(str(getattr(cid, name).value).upper() for name in cid.dir())


def check_modality(value: str, where: str = "modality") -> str:
    """``value`` as an upper-case DICOM modality code; ``InputError`` when it is not one.

    Example:
        >>> check_modality("ct")
        'CT'
    """
    code = str(value).strip().upper()
    known = known_modalities()
    if code in known:
        return code
    close = difflib.get_close_matches(code, sorted(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise InputError(
        f"{where} {value!r} is not a DICOM modality code{hint}; expected one of DICOM CID 33, "
        f"e.g. {', '.join(COMMON_MODALITIES)}"
    )
