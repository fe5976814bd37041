"""Moving tapes between stores: JSONL files with one tape (and its LLM calls) a line."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tapeagents.errors import CorruptTapeError, StoreError, UnreadableTapesError, UsageError
from tapeagents.llms.base import LLMCall
from tapeagents.store import reads, writes
from tapeagents.store.engine import Database
from tapeagents.store.rows import one_line
from tapeagents.tape import Tape

__all__ = ["export_jsonl", "import_jsonl"]


def export_jsonl(database: Database, path: str | Path, tape_ids: Iterable[str] | None) -> int:
    """Write tapes (all of them when `tape_ids` is None) to a JSONL file; return how many.

    Raises:
        UnreadableTapesError: Some tapes cannot be read: all the others were written, and the
            error says which were left out and why.
    """
    ids = list(tape_ids) if tape_ids is not None else reads.all_ids(database)
    unreadable: list[CorruptTapeError] = []
    try:
        with open(path, "w", encoding="utf-8") as out:
            for tape_id in ids:
                try:
                    line = _export_line(database, tape_id)
                except CorruptTapeError as error:
                    unreadable.append(error)
                    continue
                out.write(line + "\n")
    except OSError as error:
        raise StoreError(f"Cannot write {path}: {error.strerror or error}.") from None
    if unreadable:
        raise UnreadableTapesError(len(ids) - len(unreadable), unreadable, str(path))
    return len(ids)


def _export_line(database: Database, tape_id: str) -> str:
    tape = reads.get(database, tape_id)
    summary = reads.summary(database, tape_id)
    calls = reads.llm_calls_of(database, tape)
    return json.dumps(
        {
            "tape": tape.model_dump(mode="json"),
            "status": summary.status,
            "agent": summary.agent,
            "llm_calls": [c.model_dump(mode="json") for c in calls],
        },
        ensure_ascii=False,
    )


def import_jsonl(database: Database, path: str | Path) -> int:
    """Read tapes written by `export_jsonl`, skipping those already stored; return how many
    were added."""
    count = 0
    try:
        source = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as error:
        raise StoreError(f"Cannot read {path}: {error.strerror or error}.") from None
    with source:
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
                if not isinstance(record, dict) or "tape" not in record:
                    raise ValueError("a JSON object with a 'tape' field was expected")
                tape: Tape[Any, Any] = Tape.model_validate(record["tape"])
                calls = [LLMCall.model_validate(c) for c in record.get("llm_calls", [])]
            except (ValueError, KeyError, TypeError, UsageError) as error:
                raise StoreError(
                    f"{path}, line {number}: not a tape record ({one_line(error)}). The lines "
                    f"before it were imported ({count} new tape{'' if count == 1 else 's'}); fix "
                    "or remove this line and import the file again (tapes already stored are "
                    "skipped)."
                ) from None
            if reads.status(database, tape.id) is not None:
                continue
            with database.write() as connection:
                writes.save_tape(
                    database,
                    connection,
                    tape,
                    status=record.get("status") or "imported",
                    agent=record.get("agent"),
                    llm_calls=calls,
                )
            count += 1
    return count
