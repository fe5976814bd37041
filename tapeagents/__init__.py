"""tapeagents: build, debug and improve LLM agents around tapes.

A tape is the typed, append-only record of one agent session and also its resumable state.
"""

import sys

from tapeagents.agent import Agent, Node
from tapeagents.context import ElideObservations, FailOnOverflow, KeepLast, Summarize
from tapeagents.environment import Environment, ToolEnvironment
from tapeagents.errors import (
    ContextWindowExceeded,
    CorruptTapeError,
    LeaseHeld,
    LLMError,
    ReplayMismatch,
    StoreError,
    TapeAgentsError,
    UnreadableTapesError,
    UsageError,
)
from tapeagents.llm_node import LLMNode, Summarizer
from tapeagents.orchestrator import (
    EnvironmentReacted,
    Finished,
    LLMCallMade,
    StepAppended,
    TextStreamed,
    run,
    run_sync,
)
from tapeagents.steps import (
    Action,
    AssistantMessage,
    Call,
    Error,
    ErrorObservation,
    FinalAnswer,
    LLMFailure,
    NodeFailure,
    Observation,
    ParsingFailure,
    Reasoning,
    Respond,
    SetNextNode,
    Step,
    StepMetadata,
    StopStep,
    StoreFailure,
    Summary,
    Thought,
    ToolCall,
    ToolResult,
    UnknownStep,
    UserMessage,
)
from tapeagents.tape import Tape, TapeMetadata

__version__ = "0.2.0.dev0"

__all__ = [
    "Action",
    "Agent",
    "AssistantMessage",
    "Call",
    "ContextWindowExceeded",
    "CorruptTapeError",
    "Environment",
    "EnvironmentReacted",
    "ElideObservations",
    "Error",
    "ErrorObservation",
    "FailOnOverflow",
    "FinalAnswer",
    "Finished",
    "KeepLast",
    "LLMCallMade",
    "LLMError",
    "LeaseHeld",
    "LLMFailure",
    "LLMNode",
    "Node",
    "NodeFailure",
    "Observation",
    "ParsingFailure",
    "Reasoning",
    "ReplayMismatch",
    "Respond",
    "SetNextNode",
    "Step",
    "StepAppended",
    "StepMetadata",
    "StopStep",
    "StoreFailure",
    "StoreError",
    "Summarize",
    "Summarizer",
    "Summary",
    "Tape",
    "TapeAgentsError",
    "TapeMetadata",
    "TextStreamed",
    "Thought",
    "ToolCall",
    "ToolEnvironment",
    "ToolResult",
    "UnknownStep",
    "UnreadableTapesError",
    "UsageError",
    "UserMessage",
    "run",
    "run_sync",
]


def _show_tapes_in_notebooks() -> None:
    """In IPython, tapes show themselves as HTML (`tapeagents.render.notebook`, imported lazily)."""
    if "IPython" in sys.modules:
        from tapeagents.render.notebook import register_notebook_formatter

        register_notebook_formatter()


_show_tapes_in_notebooks()
