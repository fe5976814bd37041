"""How tapes, steps and LLM calls become rows of the tape store, and back: the row builders,
the loaders, and the prebuilt statements of the write path."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import BindParameter, Row, bindparam, insert, select, update

from tapeagents.errors import CorruptTapeError, StoreError, UsageError
from tapeagents.llms.base import LLMCall, LLMOutput, Prompt, TokenLogprob, Usage
from tapeagents.steps import Step, load_step, step_kinds
from tapeagents.store.blobs import MissingBlob, externalize, insert_blobs, internalize
from tapeagents.store.records import TapeSummary
from tapeagents.store.schema import blobs, llm_calls, steps, tape_tags, tapes
from tapeagents.tape import Tape, TapeMetadata

__all__ = [
    "CorruptCallError",
    "Statements",
    "StepRow",
    "call_from_row",
    "call_row",
    "dumps",
    "jsonable",
    "one_line",
    "outcome_columns",
    "parse_call_json",
    "parse_steps",
    "step_row",
    "summary_from_row",
    "tape_from_row",
]

StepRow = tuple[str, int, str, str]
"""A stored step as the loaders take it: (tape id, index, kind, JSON data)."""


def outcome_columns(metadata: TapeMetadata) -> dict[str, Any]:
    """The `tapes` columns that come from the tape's metadata."""
    return {
        "metadata": metadata.model_dump_json(),
        "task_id": metadata.task_id,
        "outcome": metadata.outcome,
        "reward": metadata.reward,
    }


def dumps(value: Any) -> str:
    """Compact JSON, as the store writes it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def jsonable(value: Any) -> Any:
    """A value as JSON-ready data (pydantic models dumped)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def parse_steps(
    rows: Sequence[StepRow], texts: Mapping[str, str], tape_id: str | None = None
) -> list[Step]:
    """Steps from `(tape id, index, kind, data)` rows; `texts` has the blobs they refer to.

    Args:
        rows: The step rows, in order.
        texts: The texts of the blobs they refer to.
        tape_id: The tape being read, when its rows come from its ancestors too (a fork).

    Raises:
        CorruptTapeError: A row cannot be read; the error names the tape and the step.
    """
    kinds = step_kinds()
    loaded: list[Step] = []
    for seg_id, idx, kind, data in rows:
        try:
            loaded.append(_parse_step(kind, data, texts, kinds))
        except _Unreadable as error:
            where = "" if tape_id in (None, seg_id) else f" (stored with its ancestor {seg_id})"
            raise CorruptTapeError(tape_id or seg_id, f"step {idx}{where} {error}", idx) from None
    return loaded


class _Unreadable(Exception):
    """Why one row cannot be read, for the error that names its tape."""


def _parse_step(
    kind: Any, data: Any, texts: Mapping[str, str], kinds: dict[str, type[Step]]
) -> Step:
    if not isinstance(kind, str) or not isinstance(data, str):
        raise _Unreadable(
            f"has a {type(kind).__name__} kind and {type(data).__name__} data where the store "
            "writes text"
        )
    try:
        text = insert_blobs(data, texts)
    except MissingBlob as error:
        raise _Unreadable(
            f"refers to the long text {error.key}, which is missing from the blobs table"
        ) from None
    cls = kinds.get(kind)
    try:
        if cls is not None:
            return cls.model_validate_json(text)
        value = json.loads(text)
        if not isinstance(value, dict):
            raise _Unreadable(
                f"has the unknown kind {kind!r} and holds {_json_type(value)} where a step's "
                "JSON object belongs"
            )
        return load_step({"kind": kind, **value})
    except ValueError as error:
        raise _Unreadable(f"({kind}) is corrupt: {one_line(error)}") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    return f"the JSON value {json.dumps(value)[:40]}"


def one_line(error: BaseException) -> str:
    """What went wrong, in one line: the first problem of a pydantic validation error (with a
    count of the others), the message of invalid JSON."""
    if isinstance(error, ValidationError):
        problems = error.errors(include_url=False, include_input=False)
        if not problems:
            return str(error).splitlines()[0]
        first = problems[0]
        where = ".".join(str(part) for part in first["loc"])
        text = f"{where}: {first['msg']}" if where else first["msg"]
        if len(problems) > 1:
            text += f" (and {len(problems) - 1} more problems)"
        return text
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON: {error}"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def step_row(tape_id: str, index: int, step: Step, found: dict[str, str]) -> dict[str, Any]:
    """A `steps` row; defaults are left out of the JSON (loading restores them)."""
    meta = step.metadata
    data = externalize(step.model_dump(mode="json", exclude_defaults=True), found)
    return {
        "tape_id": tape_id,
        "idx": index,
        "kind": step.kind,
        "agent": meta.agent,
        "node": meta.node,
        "llm_call_id": meta.llm_call_id,
        "created_at": meta.created_at,
        "data": dumps(data),
    }


def call_row(call: LLMCall, found: dict[str, str]) -> dict[str, Any]:
    """An `llm_calls` row, its long texts moved to `found`; usage and logprobs have columns of
    their own, and defaults are left out of the JSON (loading restores them)."""
    output = call.output.model_dump(
        mode="json", exclude={"logprobs", "usage"}, exclude_defaults=True
    )
    prompt = call.prompt.model_dump(mode="json", exclude_defaults=True)
    logprobs = call.output.logprobs
    return {
        "id": call.id,
        "model": call.model,
        "parameters": dumps(call.parameters) if call.parameters else None,
        "prompt": dumps(externalize(prompt, found)),
        "output": dumps(externalize(output, found)),
        "logprobs": dumps([lp.model_dump() for lp in logprobs]) if logprobs else None,
        "prompt_tokens": call.output.usage.prompt_tokens,
        "completion_tokens": call.output.usage.completion_tokens,
        "cost": call.output.cost,
        "latency": call.latency,
        "created_at": call.created_at,
        "retries": call.retries,
    }


class CorruptCallError(StoreError):
    """A stored LLM call cannot be read (its row was damaged or changed outside tapeagents).

    `llm_calls_of` turns it into a `CorruptTapeError` that names the tape and the step.
    """

    def __init__(self, call_id: str, reason: str) -> None:
        self.call_id = call_id
        self.reason = reason
        super().__init__(
            f"The LLM call {call_id} cannot be read: it {reason}. The database was damaged or "
            "changed outside tapeagents: restore it from a backup."
        )

    def __reduce__(self) -> tuple[type[CorruptCallError], tuple[str, str]]:
        return type(self), (self.call_id, self.reason)


def parse_call_json(row: Row[Any]) -> tuple[Any, Any]:
    """The parsed prompt and output JSON of an `llm_calls` row."""
    try:
        return json.loads(row.prompt), json.loads(row.output)
    except (ValueError, TypeError) as error:
        raise CorruptCallError(
            row.id, f"has a corrupt prompt or output ({one_line(error)})"
        ) from None


def call_from_row(row: Row[Any], prompt: Any, output: Any, texts: Mapping[str, str]) -> LLMCall:
    """An LLM call from its `llm_calls` row, its parsed prompt and output JSON, and the texts of
    the blobs they refer to."""
    try:
        llm_output = LLMOutput.model_validate(internalize(output, texts))
        llm_output.usage = Usage(
            prompt_tokens=row.prompt_tokens or 0, completion_tokens=row.completion_tokens or 0
        )
        if row.logprobs:
            llm_output.logprobs = [
                TokenLogprob.model_validate(lp) for lp in json.loads(row.logprobs)
            ]
        return LLMCall(
            id=row.id,
            model=row.model,
            parameters=json.loads(row.parameters or "{}"),
            prompt=Prompt.model_validate(internalize(prompt, texts)),
            output=llm_output,
            latency=row.latency or 0.0,
            created_at=row.created_at,
            retries=row.retries or 0,
        )
    except MissingBlob as error:
        raise CorruptCallError(
            row.id, f"refers to the long text {error.key}, which is missing from the blobs table"
        ) from None
    except (ValueError, TypeError) as error:
        raise CorruptCallError(row.id, f"has a corrupt row ({one_line(error)})") from None


def tape_from_row(row: Row[Any], tape_steps: list[Step]) -> Tape[Any, Any]:
    """A tape from its `tapes` row and its steps."""
    try:
        metadata = TapeMetadata.model_validate_json(row.metadata or "{}")
        context = json.loads(row.context) if row.context else None
        loaded: Tape[Any, Any] = Tape(
            id=row.id,
            parent_id=row.parent_id,
            fork_index=row.fork_index,
            author=row.author,
            context=context,
            metadata=metadata,
        )
    except (ValueError, TypeError) as error:
        raise CorruptTapeError(row.id, f"its header is corrupt ({one_line(error)})") from None
    loaded.steps = tape_steps
    return loaded


def summary_from_row(row: Row[Any], tags: list[str]) -> TapeSummary:
    """A tape's header from its `tapes` row and its tags."""
    try:
        return _summary(row, tags)
    except ValueError as error:
        raise CorruptTapeError(row.id, f"its header is corrupt ({one_line(error)})") from None


def _summary(row: Row[Any], tags: list[str]) -> TapeSummary:
    return TapeSummary(
        id=row.id,
        parent_id=row.parent_id,
        fork_index=row.fork_index,
        author=row.author,
        agent=row.agent,
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
        length=row.length,
        task_id=row.task_id,
        outcome=row.outcome,
        reward=row.reward,
        tags=sorted(tags),
    )


class Statements:
    """The statements of the write path, built once per store (building them costs more than
    running them on SQLite)."""

    def __init__(self, dialect: str) -> None:
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]
        else:
            raise UsageError(f"The tape store supports SQLite and PostgreSQL, not {dialect}.")
        self.insert_blobs = dialect_insert(blobs).on_conflict_do_nothing(index_elements=["hash"])
        self.insert_calls = dialect_insert(llm_calls).on_conflict_do_nothing(index_elements=["id"])
        self.insert_steps = insert(steps)
        self.insert_tags = insert(tape_tags)
        self.insert_tape = insert(tapes)
        by_id = tapes.c.id == bindparam("tape")
        status: dict[str, BindParameter[Any]] = {
            "status": bindparam("status"),
            "updated_at": bindparam("now"),
        }
        self.set_status = update(tapes).where(by_id).values(**status)
        outcome: dict[str, BindParameter[Any]] = {
            name: bindparam(name) for name in ("metadata", "task_id", "outcome", "reward")
        }
        self.set_status_and_outcome = update(tapes).where(by_id).values(**status, **outcome)
        self.select_tags = select(tape_tags.c.tag).where(tape_tags.c.tape_id == bindparam("tape"))
        self.select_length_status = select(tapes.c.length, tapes.c.status).where(
            tapes.c.id == bindparam("tape")
        )
        self.move_length = (
            update(tapes)
            .where(tapes.c.id == bindparam("tape"), tapes.c.length == bindparam("start"))
            .values(length=bindparam("end"), updated_at=bindparam("now"))
        )
        self.escapes_nul = dialect == "postgresql"
        """PostgreSQL text cannot hold NUL: searches look for U+FFFD in its place."""
        # Text search (`TapeFilter.text`). Both statements take LIKE patterns with `!` as the
        # escape character, as bound parameters. `steps_with_text`: the tapes with a step whose
        # JSON text holds :encoded (the search text as JSON writes it, a cheap first cut) and
        # one of whose string values (never a key, never a blob hash) matches :pattern.
        # `steps_citing_blobs`: the tapes with a step that references a blob matching
        # :pattern; each step's references are read once, so the cost grows with the steps,
        # not with steps times matching blobs.
        if dialect == "sqlite":
            self.steps_with_text = (
                "SELECT s.tape_id FROM steps AS s WHERE s.data LIKE :encoded ESCAPE '!' "
                "AND EXISTS (SELECT 1 FROM json_tree(s.data) AS r WHERE r.type = 'text' "
                "AND r.key IS NOT '$blob' AND r.value LIKE :pattern ESCAPE '!')"
            )
            references = "json_tree(s.data) AS r", "r.key = '$blob' AND r.value"
        else:
            # jsonb holds no NUL: an unescaped \u0000 becomes \ufffd before the cast, and a
            # blob reference becomes null (its hash is no text of the tape).
            without_nul = r"regexp_replace(s.data, '(?<!\\)((?:\\\\)*)\\u0000', '\1\\ufffd', 'g')"
            ref = r"""'\{"\$blob":"([0-9a-f]{32})"\}'"""
            without_refs = f"regexp_replace({without_nul}, {ref}, 'null', 'g')"
            self.steps_with_text = (
                "SELECT s.tape_id FROM steps AS s WHERE s.data LIKE :encoded ESCAPE '!' "
                "AND EXISTS (SELECT 1 FROM jsonb_path_query(CAST("
                f"{without_refs} AS jsonb), 'strict $.**') AS r(v) WHERE "
                "jsonb_typeof(r.v) = 'string' AND r.v #>> '{}' LIKE :pattern ESCAPE '!')"
            )
            references = f"regexp_matches(s.data, {ref}, 'g') AS r(ref)", "r.ref[1]"
        self.steps_citing_blobs = (
            f"SELECT s.tape_id FROM steps AS s, {references[0]} WHERE s.data LIKE :reference "
            f"AND {references[1]} IN (SELECT hash FROM blobs WHERE text LIKE :pattern ESCAPE '!')"
        )
