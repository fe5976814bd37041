"""How tapes, steps and LLM calls become rows of the tape store, and back: the row builders,
the loaders, and the prebuilt statements of the write path."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from sqlalchemy import BindParameter, Row, bindparam, insert, select, update

from tapeagents.errors import StoreError, UsageError
from tapeagents.llms.base import LLMCall, LLMOutput, Prompt, TokenLogprob, Usage
from tapeagents.steps import Step, load_step, step_kinds
from tapeagents.store.blobs import externalize, insert_blobs, internalize
from tapeagents.store.records import TapeSummary
from tapeagents.store.schema import blobs, llm_calls, steps, tape_tags, tapes
from tapeagents.tape import Tape, TapeMetadata

__all__ = [
    "Statements",
    "StepRow",
    "call_from_row",
    "call_row",
    "dumps",
    "jsonable",
    "outcome_columns",
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


def parse_steps(rows: Sequence[StepRow], texts: Mapping[str, str]) -> list[Step]:
    """Steps from `(tape id, index, kind, data)` rows; `texts` has the blobs they refer to."""
    kinds = step_kinds()
    loaded: list[Step] = []
    for seg_id, idx, kind, data in rows:
        text = insert_blobs(data, texts)
        cls = kinds.get(kind)
        try:
            if cls is not None:
                loaded.append(cls.model_validate_json(text))
            else:
                loaded.append(load_step({"kind": kind, **json.loads(text)}))
        except ValueError as error:
            raise StoreError(
                f"Step {idx} of tape {seg_id} cannot be loaded ({error}); the row is "
                "corrupt. Export the tape to see the others."
            ) from None
    return loaded


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


def call_from_row(row: Row[Any], prompt: Any, output: Any, texts: Mapping[str, str]) -> LLMCall:
    """An LLM call from its `llm_calls` row, its parsed prompt and output JSON, and the texts of
    the blobs they refer to."""
    llm_output = LLMOutput.model_validate(internalize(output, texts))
    llm_output.usage = Usage(
        prompt_tokens=row.prompt_tokens or 0, completion_tokens=row.completion_tokens or 0
    )
    if row.logprobs:
        llm_output.logprobs = [TokenLogprob(**lp) for lp in json.loads(row.logprobs)]
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


def tape_from_row(row: Row[Any], tape_steps: list[Step]) -> Tape[Any, Any]:
    """A tape from its `tapes` row and its steps."""
    try:
        metadata = TapeMetadata.model_validate_json(row.metadata or "{}")
        context = json.loads(row.context) if row.context else None
    except ValueError as error:
        raise StoreError(f"Tape {row.id} has a corrupt header: {error}") from None
    loaded: Tape[Any, Any] = Tape(
        id=row.id,
        parent_id=row.parent_id,
        fork_index=row.fork_index,
        author=row.author,
        context=context,
        metadata=metadata,
    )
    loaded.steps = tape_steps
    return loaded


def summary_from_row(row: Row[Any], tags: list[str]) -> TapeSummary:
    """A tape's header from its `tapes` row and its tags."""
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
