"""Progress of a generation run: rich bars per quota (stderr), JSON lines (stdout), or nothing.

Every reporter has the same three methods, so the runner does not care which one it has.
A JSON progress line looks like::

    {"event": "case", "quota": 1, "class": "nodule/CT", "case_id": "nodule-CT-00003",
     "done": 4, "total": 40, "elapsed_s": 12.1, "eta_s": 108.9}
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Progress:
    """Reports nothing (library use)."""

    def start(self, quotas: list[tuple[str, int, int]]) -> None:
        """``quotas``: (label, total cases, cases already done) per quota."""

    def case(self, quota: int, case_id: str) -> None:
        """One more case of quota ``quota`` is written."""

    def event(self, name: str, **fields: Any) -> None:
        """Something worth a line (a resume, a privacy rejection)."""

    def close(self) -> None:
        """Stop drawing."""


class JsonProgress(Progress):
    """One JSON object per line on ``stream`` (stdout by default), flushed at once."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self._t0 = time.monotonic()
        self._labels: list[str] = []
        self._done: list[int] = []
        self._total: list[int] = []
        self._start_done: list[int] = []

    def _emit(self, record: dict[str, Any]) -> None:
        self.stream.write(json.dumps(record, sort_keys=True) + "\n")
        self.stream.flush()

    def start(self, quotas: list[tuple[str, int, int]]) -> None:
        self._labels = [q[0] for q in quotas]
        self._total = [q[1] for q in quotas]
        self._done = [q[2] for q in quotas]
        self._start_done = list(self._done)
        self._emit({"event": "start", "quotas": [{"class": label, "total": t, "done": d} for label, t, d in quotas]})

    def case(self, quota: int, case_id: str) -> None:
        self._done[quota] += 1
        elapsed = time.monotonic() - self._t0
        made = sum(self._done) - sum(self._start_done)
        left = sum(self._total) - sum(self._done)
        self._emit(
            {
                "event": "case",
                "quota": quota,
                "class": self._labels[quota],
                "case_id": case_id,
                "done": self._done[quota],
                "total": self._total[quota],
                "elapsed_s": round(elapsed, 3),
                "eta_s": round(elapsed / made * left, 1) if made else None,
            }
        )

    def event(self, name: str, **fields: Any) -> None:
        self._emit({"event": name, **fields})


class RichProgress(Progress):
    """A rich progress bar per quota with count, elapsed time and ETA, drawn on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _RichBars

        self.console = Console(stderr=True)
        self._bars = _RichBars(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: list[Any] = []

    def start(self, quotas: list[tuple[str, int, int]]) -> None:
        self._bars.start()
        self._tasks = [self._bars.add_task(label, total=total, completed=done) for label, total, done in quotas]

    def case(self, quota: int, case_id: str) -> None:
        self._bars.advance(self._tasks[quota])

    def event(self, name: str, **fields: Any) -> None:
        detail = ", ".join(f"{k}={v}" for k, v in fields.items())
        self._bars.console.print(f"{name}: {detail}" if detail else name)

    def close(self) -> None:
        self._bars.stop()
