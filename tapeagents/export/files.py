"""The files the exporters write, opened in one way: parents created, errors said plainly."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from tapeagents.errors import UsageError

__all__ = ["open_output"]


def open_output(path: str | Path, *, binary: bool = False) -> IO[Any]:
    """Open `path` for writing (UTF-8 text, or bytes), creating its directory.

    Raises:
        UsageError: The file cannot be written (a directory in the way, no permission...).
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if binary:
            return open(path, "wb")  # noqa: SIM115 - closed by the caller
        return open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the caller
    except OSError as error:
        raise UsageError(f"Cannot write {path}: {error.strerror or error}.") from None
