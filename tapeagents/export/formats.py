"""Training examples as files and datasets: OpenAI chat fine-tuning JSONL, Hugging Face datasets.

Both keep the request's messages in OpenAI form (`tool_calls` with JSON-text `arguments`,
`tool` messages with `tool_call_id`) and end with the answer, the one assistant message to
learn. In the JSONL, earlier assistant messages carry `"weight": 0`, so OpenAI's fine-tuning
learns each answer once, from the example that ends with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tapeagents.errors import UsageError
from tapeagents.export.examples import TrainingExample
from tapeagents.export.files import open_output
from tapeagents.export.json_texts import example_texts
from tapeagents.export.report import ExportReport

if TYPE_CHECKING:
    import datasets

__all__ = ["chat_line", "chat_record", "read_chat_jsonl", "to_hf_dataset", "write_chat_jsonl"]


def chat_record(example: TrainingExample) -> dict[str, Any]:
    """The example as one OpenAI chat fine-tuning record: `messages` (and `tools`)."""
    messages: list[dict[str, Any]] = []
    for message in example.prompt.messages:
        if message.get("role") == "assistant":
            message = {**message, "weight": 0}
        messages.append(message)
    messages.append(example.output.as_message())
    record: dict[str, Any] = {"messages": messages}
    if example.prompt.tools:
        record["tools"] = example.prompt.tools
    return record


def chat_line(example: TrainingExample) -> str:
    """The example's chat JSONL line: `json.dumps(chat_record(example), ensure_ascii=False)`
    and a newline, joined from the texts the export made once per tape."""
    texts = example_texts(example)
    line = '{"messages": [' + (
        f"{texts.line}, {texts.output}]" if texts.line else f"{texts.output}]"
    )
    if example.prompt.tools:
        line += ', "tools": ' + texts.tools
    return line + "}\n"


def write_chat_jsonl(
    examples: Iterable[TrainingExample],
    path: str | Path,
    *,
    validation_path: str | Path | None = None,
    on_example: Callable[[TrainingExample], None] | None = None,
) -> ExportReport:
    """Write examples as OpenAI chat fine-tuning JSONL, one example a line.

    Validation examples go to `validation_path` when given, else they are left out (and
    counted); pass `validation=0` to the exporter to keep everything in one file.

    Returns:
        Counts of what was written (the exporter's report has the rest).
    """
    written = ExportReport()
    counts = {"train": 0, "validation": 0}
    files: dict[str, IO[str]] = {}
    try:
        files["train"] = open_output(path)
        if validation_path is not None:
            files["validation"] = open_output(validation_path)
        for example in examples:
            out = files.get(example.split)
            if out is None:
                written.skip("validation examples without a validation file")
                continue
            out.write(chat_line(example))
            counts[example.split] += 1
            if on_example is not None:
                on_example(example)
    finally:
        for out in files.values():
            out.close()
    written.train, written.validation = counts["train"], counts["validation"]
    written.examples = written.train + written.validation
    return written


def read_chat_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a chat JSONL file (as `write_chat_jsonl` writes them), checked."""
    records = []
    try:
        with open(path, encoding="utf-8") as source:
            for number, line in enumerate(source, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise UsageError(f"{path}, line {number}: not JSON ({error}).") from None
                messages = record.get("messages") if isinstance(record, dict) else None
                if not isinstance(messages, list) or not messages:
                    raise UsageError(f"{path}, line {number}: a record needs a 'messages' list.")
                if messages[-1].get("role") != "assistant":
                    raise UsageError(
                        f"{path}, line {number}: the last message must be the assistant's answer."
                    )
                records.append(record)
    except OSError as error:
        raise UsageError(f"Cannot read {path}: {error.strerror or error}.") from None
    return records


def to_hf_dataset(
    examples: Iterable[TrainingExample], *, prompt_completion: bool = False
) -> datasets.Dataset:
    """The examples as a Hugging Face `datasets.Dataset`.

    Columns: `messages` (the request and, last, the answer), `tools` (the tool specifications as
    JSON text, which TRL reads, or None), `tape_id`, `step`, `task_id` and `split`. With
    `prompt_completion`, `prompt` and `completion` replace `messages`, so TRL's SFTTrainer
    computes the loss on the answer only.
    """
    try:
        import datasets
    except ImportError as error:
        raise UsageError(
            f"Hugging Face datasets are in the finetune extra: pip install "
            f"'tapeagents[finetune]' ({error})."
        ) from error
    rows = []
    for example in examples:
        row: dict[str, Any] = {}
        answer = example.output.as_message()
        if prompt_completion:
            row["prompt"] = example.prompt.messages
            row["completion"] = [answer]
        else:
            row["messages"] = [*example.prompt.messages, answer]
        row["tools"] = json.dumps(example.prompt.tools) if example.prompt.tools else None
        row.update(
            tape_id=example.tape_id,
            step=example.start,
            task_id=example.task_id,
            split=example.split,
        )
        rows.append(row)
    if not rows:
        raise UsageError("No examples to put in a dataset; check the selection and the report.")
    return datasets.Dataset.from_list(rows)
