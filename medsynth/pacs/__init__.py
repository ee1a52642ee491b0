"""medsynth.pacs: push a generation output folder into a PACS (DICOMweb STOW-RS or DIMSE C-STORE).

``target.py`` parses where to (``--dicomweb URL``, ``--dimse AET@HOST:PORT``) and reads DICOMweb
credentials from the environment only; ``dicomweb.py`` and ``dimse.py`` store instances with
``dicomweb-client`` and ``pynetdicom``; ``record.py`` is the push record (what was stored where),
which makes a push resumable and idempotent; ``push.py`` pushes a folder's complete cases, or one
case at a time during ``medsynth generate`` (``output.push`` of a protocol).

Names are imported lazily, so parsing a target does not load the network libraries.

Example:
    >>> from medsynth.pacs import parse_target, push_folder            # doctest: +SKIP
    >>> target = parse_target(dicomweb="https://pacs.example.org/dicom-web")  # doctest: +SKIP
    >>> push_folder("synthetic/study", target).stored                # doctest: +SKIP
"""

from __future__ import annotations

from medsynth.lazy_import import lazy_getattr

_LAZY = {
    "Target": "medsynth.pacs.target",
    "parse_target": "medsynth.pacs.target",
    "PushResult": "medsynth.pacs.push",
    "Pusher": "medsynth.pacs.push",
    "push_folder": "medsynth.pacs.push",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
