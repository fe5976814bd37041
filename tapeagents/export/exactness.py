"""Whether the examples rebuilt from a tape equal the LLM calls recorded when it was made.

With the agent that made the tape, `tape_examples` must give back every recorded request and
answer; `check_exact` says where it does not, and what differs first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from tapeagents.agent import Agent
from tapeagents.export.examples import TrainingExample, tape_examples
from tapeagents.export.report import ExportReport
from tapeagents.llms import LLMCall
from tapeagents.tape import Tape

if TYPE_CHECKING:
    from tapeagents.store import TapeStore

__all__ = ["ExactnessReport", "check_exact"]


class ExactnessReport(BaseModel):
    """Whether a tape's examples equal the LLM calls recorded when it was made."""

    tape_id: str
    checked: int = 0
    """Examples compared with their recorded call."""
    differences: list[str] = Field(default_factory=list)
    """One line per example that differs, with what differs first."""
    missing: int = 0
    """Examples whose recorded call is not available (steps written by hand, for example)."""

    @property
    def exact(self) -> bool:
        return not self.differences

    def explain(self) -> str:
        if self.exact:
            return f"Tape {self.tape_id}: {self.checked} examples equal their recorded calls."
        return "\n".join(
            [f"Tape {self.tape_id}: {len(self.differences)} of {self.checked} examples differ:"]
            + [f"  {line}" for line in self.differences]
        )


def check_exact(
    tape: Tape[Any, Any],
    agent: Agent,
    llm_calls: Sequence[LLMCall] | TapeStore,
) -> ExactnessReport:
    """Compare the examples `agent` rebuilds from `tape` with the calls recorded on the tape.

    With the agent that made the tape, every request must equal the recorded prompt and every
    answer the recorded output (text and tool calls). A model that answers in a non-canonical
    form (extra spaces, JSON in a code fence) gives an answer that differs in form only; the
    line says so.
    """
    from tapeagents.store import TapeStore

    calls = llm_calls.llm_calls_of(tape) if isinstance(llm_calls, TapeStore) else llm_calls
    by_id = {call.id: call for call in calls}
    report = ExportReport()
    examples = tape_examples(tape, agent, report=report, on_problem="skip_output")
    result = ExactnessReport(tape_id=tape.id)
    result.differences += [f"not reproducible: {p}" for p in report.problems]
    for example in examples:
        call = by_id.get(example.llm_call_id or "")
        if call is None:
            result.missing += 1
            continue
        result.checked += 1
        where = f"step {example.start} (call {call.id[:8]})"
        if example.prompt.messages != call.prompt.messages:
            result.differences.append(f"{where}: {_first_message_difference(example, call)}")
        elif example.prompt.tools != call.prompt.tools:
            result.differences.append(f"{where}: the tools differ")
        elif example.output.as_message() != call.output.as_message():
            result.differences.append(
                f"{where}: the answer differs: recorded {call.output.raw_text()[:200]!r}, "
                f"rebuilt {example.output.raw_text()[:200]!r}"
            )
    return result


def _first_message_difference(example: TrainingExample, call: LLMCall) -> str:
    rebuilt, recorded = example.prompt.messages, call.prompt.messages
    for i, (a, b) in enumerate(zip(rebuilt, recorded, strict=False)):
        if a != b:
            return f"message {i} differs: recorded {b!r:.200}, rebuilt {a!r:.200}"
    return f"the request has {len(rebuilt)} messages, the recorded one {len(recorded)}"
