"""LoRA fine-tuning of a local model on exported examples: a thin layer over TRL's SFTTrainer.

Examples are token ids in the model's own chat template (`tapeagents.export.token_examples`),
with the loss on the answers only; chat records (OpenAI JSONL) and training examples are
tokenized that way first. The result is a peft adapter directory that `LocalLLM(adapter=...)`
loads, and on request a merged model directory that any Hugging Face or vLLM server can serve.

torch, transformers, trl, peft and datasets are imported on first use (extra `finetune`).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tapeagents.errors import UsageError
from tapeagents.export import ExportReport, TrainingExample
from tapeagents.export.formats import read_chat_jsonl
from tapeagents.export.tokens import IGNORE_INDEX, TokenExample, read_token_jsonl
from tapeagents.llms.base import LLMOutput, Prompt, ToolCallRequest

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "TrainingData",
    "finetune",
    "load_records",
]

INSTALL_HINT = "pip install 'tapeagents[finetune]'"
RESULT_FILE = "tapeagents-finetune.json"
"""Written into the output directory: the configuration, the base model and the figures."""

TrainingData = str | Path | Iterable[TokenExample | TrainingExample | dict[str, Any]]
"""A JSONL file (chat records or token records), or examples in memory."""


class FinetuneConfig(BaseModel):
    """How to fine-tune. The defaults suit the 135M local model on a CPU."""

    model_config = ConfigDict(extra="forbid")

    output_dir: Path
    """Where the adapter goes (and `merged/`, with `merge`)."""
    model: str = "smollm2-135m"
    """The base model, as `LocalLLM` names it: "smollm2-135m", a HF model directory or a .gguf."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (default: `epochs` over the data)."""
    epochs: float = 1.0
    batch_size: int = 4
    """Examples per device and step."""
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    """Modules that get LoRA weights ("all-linear": every linear layer but the output head)."""
    max_length: int | None = 2048
    """Longest example in tokens when tokenizing chat records (longer ones are dropped)."""
    seed: int = 0
    merge: bool = False
    """Also write the base model with the adapter merged in, under `output_dir/merged`."""
    device: str | None = None
    """"cpu" or "cuda"; default: CUDA when available."""
    bf16: bool | None = None
    """Train in bfloat16 (default: on GPUs that support it)."""
    gradient_checkpointing: bool = False
    """Save memory at the cost of time (worth it for large models on GPUs)."""
    deepspeed: str | None = None
    """A DeepSpeed JSON config, passed to the trainer (launch with `accelerate launch`)."""
    logging_steps: int = 1
    eval_steps: int | None = None
    """Evaluate on the validation data every this many steps (always once at the end)."""
    trainer_args: dict[str, Any] = Field(default_factory=dict)
    """More `trl.SFTConfig` arguments, passed as they are."""


class FinetuneResult(BaseModel):
    """What a fine-tuning run produced."""

    adapter_dir: Path
    merged_dir: Path | None = None
    base_model: str
    """The base model (as configured) the adapter belongs to."""
    examples: int
    validation_examples: int = 0
    tokens: int
    """Tokens in the training examples."""
    target_tokens: int
    """Tokens the loss was computed on (the answers)."""
    steps: int
    train_loss: float | None = None
    eval_loss: float | None = None
    losses: list[float] = Field(default_factory=list)
    """The training loss at each logged step."""
    seconds: float

    def llm_kwargs(self) -> dict[str, Any]:
        """Arguments that load the fine-tuned model: `LocalLLM(**result.llm_kwargs())`."""
        return {"model": self.base_model, "adapter": str(self.adapter_dir)}


StepCallback = Callable[[int, int, dict[str, float]], None]
"""Called after each optimizer step with (step, total steps, the latest logged values)."""


def finetune(
    train: TrainingData,
    config: FinetuneConfig,
    *,
    validation: TrainingData | None = None,
    on_step: StepCallback | None = None,
    report: ExportReport | None = None,
) -> FinetuneResult:
    """LoRA fine-tune `config.model` on `train`; return where the adapter is and how it went.

    Args:
        train: Training examples: a JSONL file of chat records (`tapeagents export --format
            openai`) or of token records (`--format tokens`), or examples in memory
            (`TrainingExample`s, `TokenExample`s, chat or token records).
        config: Model, output directory and training settings.
        validation: Examples to compute the validation loss on, in the same forms.
        on_step: Progress callback (the CLI draws a progress bar with it).
        report: Token counts and examples dropped while tokenizing are added to it.

    Example:
        >>> result = finetune("train.jsonl", FinetuneConfig(output_dir="runs/x", max_steps=20))
        >>> llm = LocalLLM(adapter=str(result.adapter_dir))
    """
    modules = _import_backend()
    torch, transformers, trl, peft, datasets = modules
    from tapeagents.llms.local import LocalLLM, available_cores, resolve_model_dir

    report = report if report is not None else ExportReport()
    llm = LocalLLM(config.model)
    records = load_records(train, llm, max_length=config.max_length, report=report)
    if not records:
        raise UsageError("No training examples: check the export's report for what was left out.")
    eval_records = (
        load_records(validation, llm, max_length=config.max_length, report=ExportReport())
        if validation is not None
        else []
    )
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads_before = torch.get_num_threads()
    if device == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        # Training owns the machine: every core (8 steps of 8 case-study examples, model load
        # included, on 2 idle cores: 125 s on one thread, 83 s on two). Generation's thread
        # setting comes back afterwards.
        torch.set_num_threads(available_cores())
    bf16 = config.bf16
    if bf16 is None:
        bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    path = resolve_model_dir(llm.model)
    output_dir = Path(config.output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    with _quiet(transformers):
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lora = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
    )
    steps = config.max_steps
    per_step = config.batch_size * config.gradient_accumulation_steps
    total = steps if steps else max(1, math.ceil(len(records) / per_step * config.epochs))
    arguments: dict[str, Any] = {
        "output_dir": str(output_dir / "trainer"),
        "max_steps": steps if steps else -1,
        "num_train_epochs": config.epochs,
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup_steps,
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "data_seed": config.seed,
        "logging_steps": config.logging_steps,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": device == "cpu",
        "bf16": bf16,
        "activation_checkpointing": config.gradient_checkpointing,
        "dataloader_pin_memory": device != "cpu",
        "max_length": None,  # examples come cut to size: the trainer must never cut an answer
        "packing": False,
        "eval_strategy": "steps" if eval_records and config.eval_steps else "no",
        "eval_steps": config.eval_steps,
        "deepspeed": config.deepspeed,
    }
    if device == "cpu":
        arguments["optim"] = "adamw_torch"  # the fused optimizer is for GPUs
    arguments.update(config.trainer_args)
    start = time.perf_counter()
    train_set = datasets.Dataset.from_list(records)
    eval_set = datasets.Dataset.from_list(eval_records) if eval_records else None
    losses: list[float] = []
    callback = _callback(transformers, total, losses, on_step)
    with warnings.catch_warnings():
        # peft reads a deprecated transformers property; nothing to do about it here
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning
        )
        trainer = trl.SFTTrainer(
            model=model,
            args=trl.SFTConfig(**arguments),
            train_dataset=train_set,
            eval_dataset=eval_set,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[callback],
        )
        trainer.remove_callback(transformers.PrinterCallback)  # progress goes to `on_step`
        try:
            trained = trainer.train()
            eval_loss = None
            if eval_set is not None:
                eval_loss = float(trainer.evaluate()["eval_loss"])
        finally:
            torch.set_num_threads(threads_before)
    merged_dir = None
    with _quiet(transformers):
        trainer.model.save_pretrained(output_dir)
        if config.merge:
            merged_dir = output_dir / "merged"
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(merged_dir)
            tokenizer.save_pretrained(merged_dir)
    result = FinetuneResult(
        adapter_dir=output_dir,
        merged_dir=merged_dir,
        base_model=config.model,
        examples=len(records),
        validation_examples=len(eval_records),
        tokens=sum(len(r["input_ids"]) for r in records),
        target_tokens=sum(sum(1 for t in r["labels"] if t != IGNORE_INDEX) for r in records),
        steps=int(trained.global_step),
        train_loss=float(trained.training_loss) if trained.training_loss is not None else None,
        eval_loss=eval_loss,
        losses=losses,
        seconds=time.perf_counter() - start,
    )
    (output_dir / RESULT_FILE).write_text(
        json.dumps(
            {"config": config.model_dump(mode="json"), "result": result.model_dump(mode="json")},
            indent=1,
        )
    )
    return result


def load_records(
    data: TrainingData,
    llm: Any,
    *,
    max_length: int | None = 2048,
    report: ExportReport | None = None,
) -> list[dict[str, Any]]:
    """Training data as token records (`input_ids`, `labels`, `attention_mask`) for `llm`."""
    from tapeagents.export.tokens import token_examples

    report = report if report is not None else ExportReport()
    if isinstance(data, str | Path):
        items: list[Any] = _read_jsonl(Path(data))
    else:
        items = list(data)
    records: list[dict[str, Any]] = []
    pending: list[TrainingExample] = []
    for item in items:
        if isinstance(item, TokenExample):
            records.append(_token_record(item.input_ids, item.labels))
        elif isinstance(item, TrainingExample):
            pending.append(item)
        elif isinstance(item, dict) and "input_ids" in item:
            records.append(_token_record(item["input_ids"], item["labels"]))
        elif isinstance(item, dict) and "messages" in item:
            pending.append(_from_chat_record(item))
        else:
            raise UsageError(
                f"Cannot train on {type(item).__name__}: give training examples, token examples, "
                "chat records ({'messages': [...]}) or token records ({'input_ids': [...]})."
            )
    for token in token_examples(pending, llm, max_length=max_length, report=report):
        records.append(_token_record(token.input_ids, token.labels))
    return records


def _token_record(ids: list[int], labels: list[int]) -> dict[str, Any]:
    if len(ids) != len(labels):
        raise UsageError(f"A token record has {len(ids)} input_ids but {len(labels)} labels.")
    return {"input_ids": list(ids), "labels": list(labels), "attention_mask": [1] * len(ids)}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as source:
            first = next((line for line in source if line.strip()), "")
    except OSError as error:
        raise UsageError(f"Cannot read {path}: {error.strerror or error}.") from None
    try:
        keys = json.loads(first) if first else {}
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not JSONL: {error}.") from None
    if "input_ids" in keys:
        return read_token_jsonl(path)
    return read_chat_jsonl(path)


def _from_chat_record(record: dict[str, Any]) -> TrainingExample:
    """A chat record (OpenAI fine-tuning form) as a training example: the last message is the
    answer, the others the request."""
    *history, answer = record["messages"]
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in history]
    calls = [
        ToolCallRequest(
            id=call.get("id", ""),
            name=call["function"]["name"],
            arguments=call["function"].get("arguments", "{}"),
        )
        for call in answer.get("tool_calls") or []
    ]
    return TrainingExample(
        tape_id="",
        start=0,
        stop=0,
        agent="",
        node="",
        prompt=Prompt(messages=messages, tools=record.get("tools")),
        output=LLMOutput(content=answer.get("content"), tool_calls=calls),
    )


def _import_backend() -> tuple[Any, Any, Any, Any, Any]:
    try:
        import datasets
        import peft
        import torch
        import transformers
        import trl
    except ImportError as error:
        raise UsageError(
            f"Fine-tuning needs torch, transformers, trl, peft and datasets ({error}). "
            f"Install them with: {INSTALL_HINT}"
        ) from error
    return torch, transformers, trl, peft, datasets


def _callback(
    transformers: Any, total: int, losses: list[float], on_step: StepCallback | None
) -> Any:
    class Progress(transformers.TrainerCallback):
        """Collects the logged losses and reports each step with the latest values."""

        def __init__(self) -> None:
            self.latest: dict[str, float] = {}
            self.reported = -1

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" in logs:
                losses.append(float(logs["loss"]))
            self.latest.update({k: float(v) for k, v in logs.items() if isinstance(v, int | float)})
            self._report(state)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step % max(1, args.logging_steps):  # else on_log reports it
                self._report(state)

        def _report(self, state: Any) -> None:
            step = int(state.global_step)
            if on_step is not None and step != self.reported:
                self.reported = step
                on_step(step, int(state.max_steps or total), dict(self.latest))

    return Progress()


class _quiet:
    """Hide transformers' loading progress bars."""

    def __init__(self, transformers: Any) -> None:
        self._logging = transformers.utils.logging
        self._was = False

    def __enter__(self) -> None:
        self._was = self._logging.is_progress_bar_enabled()
        self._logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        if self._was:
            self._logging.enable_progress_bar()
