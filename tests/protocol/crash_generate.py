"""Run `medsynth generate ...` and SIGKILL this very process at a chosen moment (test helper).

Usage: python crash_generate.py KIND N -- generate PROTOCOL [options]

KIND, counted from the start of this process:
  after-append N    right after the N-th manifest line is written and fsynced
  mid-append N      after writing half of the N-th manifest line (a torn line)
  at-replace N      at the N-th rename of a finished temporary into place, before it happens
                    (a complete .tmp- file or DICOM folder is left, others of the case may exist)
The kill is a real SIGKILL: no finally blocks, no atexit, no flushing.
"""

from __future__ import annotations

import os
import signal
import sys

from medsynth.cli import main
from medsynth.io.atomic import TMP_PREFIX
from medsynth.protocol import manifest


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(kind: str, n: int) -> None:
    count = {"n": 0}

    def due() -> bool:
        count["n"] += 1
        return count["n"] == n

    original_append = manifest.JsonlAppender.append

    def append(self, record):  # type: ignore[no-untyped-def]
        if self.path.name.startswith("manifest"):
            if kind == "mid-append" and due():
                data = (record.to_json() + "\n").encode()
                os.write(self._fd, data[: len(data) // 2])
                os.fsync(self._fd)
                _die()
            original_append(self, record)
            if kind == "after-append" and due():
                _die()
            return
        original_append(self, record)

    manifest.JsonlAppender.append = append

    if kind == "at-replace":
        original_replace = os.replace

        def replace(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
            if os.path.basename(os.fspath(src)).startswith(TMP_PREFIX) and due():
                _die()
            return original_replace(src, dst, *args, **kwargs)

        os.replace = replace


if __name__ == "__main__":
    kind, n, sep, *rest = sys.argv[1:]
    assert sep == "--", "usage: crash_generate.py KIND N -- generate ..."
    install(kind, int(n))
    sys.exit(main(rest))
