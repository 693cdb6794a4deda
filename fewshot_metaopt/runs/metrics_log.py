"""``metrics.jsonl``: one JSON object per line, appended as training goes.

Every checkpoint records how many bytes of the log it has seen; resuming cuts the log back to
that length, so the lines written between the checkpoint and a crash (and a line the crash
cut in half) are dropped and written again, identically, by the resumed run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic_files import write_failure
from .errors import RunError


class MetricsLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "ab")

    def append(self, record: dict[str, Any]) -> None:
        try:
            self._file.write((json.dumps(record) + "\n").encode("utf-8"))
            self._file.flush()
        except OSError as err:
            raise write_failure(self.path, err) from None

    def sync(self) -> int:
        """Flush to disk; returns the log's length, for the checkpoint about to be written."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:
            raise write_failure(self.path, err) from None
        return self._file.tell()

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # the failed write was reported when it happened; the checkpoint cuts the log back

    @staticmethod
    def cut_back(path: Path, length: int) -> None:
        """Drop everything after the first ``length`` bytes (what a checkpoint saw)."""
        size = path.stat().st_size if path.exists() else 0
        if size < length:
            raise RunError(f"{path} is shorter ({size} bytes) than its checkpoint says it was ({length}); the run is damaged")
        with open(path, "ab") as f:
            f.truncate(length)
            f.flush()
            os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete line of the log (a last line cut short by a crash is left out)."""
    if not path.is_file():
        raise RunError(f"{path} does not exist: the run has logged nothing yet")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise RunError(f"{path} line {number} is not JSON") from None
    return records
