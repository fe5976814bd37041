"""From tapes to training data and evaluation records.

Training examples: every model output on a tape becomes the exact request the target agent's
node sends for the tape up to there, and the answer its `inverse` writes for the steps. Write
them as OpenAI chat fine-tuning JSONL, a Hugging Face dataset, or token ids for a local model.
What the target agent cannot reproduce is reported in an `ExportReport`, never dropped silently.

    from tapeagents.export import ExportReport, Selection, training_examples, write_chat_jsonl

    report = ExportReport()
    examples = training_examples(store, agent, Selection(outcome="success"), validation=0.1,
                                 report=report)
    write_chat_jsonl(examples, "train.jsonl", validation_path="valid.jsonl")
    print(report.summary())

`export_chat_jsonl(store, agent, "train.jsonl", workers=4)` does both in one call, with worker
processes for large stores (the same file as one process).

Evaluation records: one per tape (`eval_records`), and the subjects × tasks `response_matrix`.
"""

from tapeagents.export.evaluation import (
    EvalRecord,
    ResponseMatrix,
    Score,
    eval_record,
    eval_records,
    missing_scores,
    read_eval_records,
    response_matrix,
    write_eval_records,
)
from tapeagents.export.exactness import ExactnessReport, check_exact
from tapeagents.export.examples import TrainingExample, tape_examples, training_examples
from tapeagents.export.formats import (
    chat_record,
    read_chat_jsonl,
    to_hf_dataset,
    write_chat_jsonl,
)
from tapeagents.export.report import ExportError, ExportProblem, ExportReport, OnProblem
from tapeagents.export.selection import Selection, SplitBy, split_of
from tapeagents.export.tokens import (
    IGNORE_INDEX,
    TokenExample,
    Truncation,
    read_token_jsonl,
    token_examples,
    write_token_jsonl,
)
from tapeagents.export.workers import export_chat_jsonl

__all__ = [
    "IGNORE_INDEX",
    "EvalRecord",
    "ExactnessReport",
    "ExportError",
    "ExportProblem",
    "ExportReport",
    "OnProblem",
    "ResponseMatrix",
    "Score",
    "Selection",
    "SplitBy",
    "TokenExample",
    "TrainingExample",
    "Truncation",
    "chat_record",
    "check_exact",
    "eval_record",
    "eval_records",
    "export_chat_jsonl",
    "missing_scores",
    "read_chat_jsonl",
    "read_eval_records",
    "read_token_jsonl",
    "response_matrix",
    "split_of",
    "tape_examples",
    "to_hf_dataset",
    "token_examples",
    "training_examples",
    "write_chat_jsonl",
    "write_eval_records",
    "write_token_jsonl",
]
