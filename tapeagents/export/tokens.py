"""Token-level training examples: `input_ids` and `labels` in a local model's own chat template.

The prompt is tokenized exactly as `LocalLLM` tokenizes it to generate, and the answer exactly as
the model would write it, ending with its end-of-turn token. Labels are -100 on every prompt
token, so the loss falls on the answer only. Lengths are counted in tokens: an example longer
than `max_length` is dropped, or (with `truncation="left"`) loses prompt tokens from the start;
the answer itself is never cut, and every drop or cut is counted in the report. The local
models read text only: an image in a prompt is written as a note (`IMAGE_NOTE`), and counted in
the report's `images_as_notes`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from tapeagents.errors import UsageError
from tapeagents.export.examples import TrainingExample
from tapeagents.export.files import open_output
from tapeagents.export.report import ExportReport

if TYPE_CHECKING:
    from tapeagents.llms.local import LocalLLM

__all__ = [
    "IGNORE_INDEX",
    "TokenExample",
    "Truncation",
    "read_token_jsonl",
    "token_examples",
    "write_token_jsonl",
]

IGNORE_INDEX = -100
"""The label of tokens that do not count in the loss (PyTorch's cross-entropy default)."""

Truncation = Literal["drop", "left"]
"""What to do with an example longer than the limit: drop it, or cut its prompt from the start."""


class TokenExample(BaseModel):
    """One training example as token ids, with the loss on the answer's tokens only."""

    tape_id: str
    start: int
    """Index of the first step of the answer on its tape."""
    split: Literal["train", "validation"] = "train"
    input_ids: list[int]
    labels: list[int]
    """The token id where the model must predict it (the answer), -100 elsewhere."""
    attention_mask: list[int]

    @property
    def target_ids(self) -> list[int]:
        """The labelled token ids (the answer and its end-of-turn token)."""
        return [label for label in self.labels if label != IGNORE_INDEX]


def token_examples(
    examples: Iterable[TrainingExample],
    llm: LocalLLM | str = "smollm2-135m",
    *,
    max_length: int | None = 2048,
    truncation: Truncation = "drop",
    report: ExportReport | None = None,
) -> Iterator[TokenExample]:
    """Tokenize training examples for a local model (its tokenizer only is loaded).

    Args:
        examples: From `training_examples`.
        llm: The `LocalLLM` to train, or its model name / directory.
        max_length: The most tokens one example may have (default 2048; None: the model's
            context window).
        truncation: `drop` an example that is too long, or cut its prompt from the `left`.
        report: Token counts, drops and cuts are added to it.
    """
    from tapeagents.llms.local import LocalLLM

    model = llm if isinstance(llm, LocalLLM) else LocalLLM(llm)
    limit = max_length if max_length is not None else model.context_window
    if limit is not None and limit < 2:
        raise UsageError(f"max_length must be at least 2 tokens, got {limit}.")
    report = report if report is not None else ExportReport()
    for example in examples:
        prompt_ids, answer_ids = model.encode(example.prompt, example.output)
        if limit is not None and len(prompt_ids) + len(answer_ids) > limit:
            keep = limit - len(answer_ids)
            if truncation == "left" and keep > 0:
                prompt_ids = prompt_ids[len(prompt_ids) - keep :]
                report.truncated += 1
            else:
                what = "answer" if keep <= 0 else "example"
                report.skip(f"{what} longer than {limit} tokens")
                continue
        ids = prompt_ids + answer_ids
        report.images_as_notes += _images_of(example)
        report.tokens += len(ids)
        report.target_tokens += len(answer_ids)
        yield TokenExample(
            tape_id=example.tape_id,
            start=example.start,
            split=example.split,
            input_ids=ids,
            labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
            attention_mask=[1] * len(ids),
        )


def _images_of(example: TrainingExample) -> int:
    """How many image parts the example's prompt holds."""
    return sum(
        1
        for message in example.prompt.messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image_url"
    )


def write_token_jsonl(
    examples: Iterable[TokenExample],
    path: str | Path,
    *,
    validation_path: str | Path | None = None,
    on_example: Callable[[TokenExample], None] | None = None,
) -> int:
    """Write token examples as JSONL (`input_ids`, `labels`, `attention_mask` and provenance).

    Validation examples go to `validation_path`, or are left out without one. Returns how many
    examples were written.
    """
    files = {"train": open_output(path)}
    count = 0
    try:
        if validation_path is not None:
            files["validation"] = open_output(validation_path)
        for example in examples:
            out = files.get(example.split)
            if out is None:
                continue
            out.write(example.model_dump_json() + "\n")
            count += 1
            if on_example is not None:
                on_example(example)
    finally:
        for out in files.values():
            out.close()
    return count


def read_token_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a token JSONL file, checked to have `input_ids` and matching `labels`."""
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
                ids, labels = record.get("input_ids"), record.get("labels")
                if not isinstance(ids, list) or not isinstance(labels, list):
                    raise UsageError(f"{path}, line {number}: needs 'input_ids' and 'labels'.")
                if len(ids) != len(labels):
                    raise UsageError(
                        f"{path}, line {number}: {len(ids)} input_ids but {len(labels)} labels."
                    )
                records.append(
                    {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}
                )
    except OSError as error:
        raise UsageError(f"Cannot read {path}: {error.strerror or error}.") from None
    return records
