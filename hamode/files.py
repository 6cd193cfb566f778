"""Writing result files: whole or not at all (a temporary file renamed into place), so an interrupted write never
leaves half a table. Used by hamode compare, the prediction writer and the scripts."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["write_csv", "write_text"]


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_csv(path: str | os.PathLike, headers: Sequence[object], rows: Iterable[Sequence[object]]) -> None:
    """Write a CSV table: a header row, then ``rows`` (as `write_text()`)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(headers)
    w.writerows(rows)
    write_text(path, buf.getvalue())
