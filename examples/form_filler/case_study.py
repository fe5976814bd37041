"""The form-filling case study: teach a 135M student with a teacher's tapes, then measure it.

1. The teacher (the scripted expert, or an LLM teacher with `--teacher litellm:<model>`) helps
   simulated users fill in the *train* companies' forms; every tape is stored and scored.
2. The successful tapes are exported as training examples re-rendered for the student: the
   student's compact prompt for each tape prefix, and the teacher's action as the answer.
3. The local SmolLM2-135M-Instruct is LoRA fine-tuned on them (CPU is enough).
4. The teacher, the base student and the fine-tuned student help simulated users on the
   *test* companies' forms, which no training tape contains; the table compares them.

Run `python -m examples.form_filler --help` for the options; `--tiny` checks the pipeline in a
minute. Everything goes under `--out` (default `runs/form_filler`): the tape store, the
exported examples, the adapter, and `results.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from tapeagents.environments.form_filler import (
    BEHAVIOURS,
    Dialogue,
    DialogueScore,
    UserGoal,
    evaluate,
    expert_agent,
    make_goals,
    student_agent,
    summarize,
    teacher_agent,
)

from tapeagents.agent import Agent
from tapeagents.export import ExportReport, Selection, training_examples, write_chat_jsonl
from tapeagents.llms import LLM
from tapeagents.store import TapeStore

if TYPE_CHECKING:
    from tapeagents.finetune import FinetuneResult

__all__ = ["CaseStudyConfig", "CaseStudyResult", "main", "run_case_study"]


class CaseStudyConfig(BaseModel):
    """What to run; the defaults are the full case study reported in docs/form-filler.md."""

    out: Path = Path("runs/form_filler")
    teacher: str = "expert"
    """"expert" (scripted, offline), or a model string for the LLM teacher."""
    slips: float = 0.15
    """Share of the expert's `set_field`s made wrong on purpose on the train forms; the student
    learns the recoveries, not the slips (they are labelled "slip" and left out of the export)."""
    behaviours: list[str] = Field(default_factory=lambda: list(BEHAVIOURS))
    train_seeds: list[int] = Field(default_factory=lambda: [0, 1])
    """One train dialogue per train form, behaviour and seed."""
    vary_values: bool = True
    """Train users make up most of their values instead of taking the forms' examples."""
    test_seeds: list[int] = Field(default_factory=lambda: [0])
    max_train_dialogues: int | None = None
    max_test_dialogues: int | None = None
    student_model: str = "smollm2-135m"
    max_steps: int | None = 200
    """Optimizer steps (None: `epochs` over the examples)."""
    epochs: float = 1.0
    batch_size: int = 8
    learning_rate: float = 1e-3
    lora_r: int = 16
    lora_alpha: int = 32
    validation: float = 0.05
    max_new_tokens: int = 128
    max_turns: int = 20
    """Most user messages in a test dialogue (the expert needs at most 11)."""
    evaluate_base: bool = True
    seed: int = 0
    adapter: Path | None = None
    """An adapter this script trained before (`out/adapter`): fine-tuning is skipped."""
    processes: int = 1
    """Processes that evaluate each student, a share of the test goals each (one core each:
    the local model runs on one thread per process)."""


class CaseStudyResult(BaseModel):
    """The figures of a case-study run (also written to `out/results.json`)."""

    config: CaseStudyConfig
    train_dialogues: int
    teacher_train_correct: int
    export: dict[str, Any]
    finetune: dict[str, Any]
    test: dict[str, dict[str, Any]]
    """Summary of each subject on the test goals: "teacher", "base student", "fine-tuned"."""
    ratio: float | None
    """Fine-tuned student's correct completions over the teacher's."""
    seconds: dict[str, float]

    def table(self) -> str:
        """The comparison as a Markdown table."""
        rows = [
            "| assistant | correct | completed | field accuracy | turns | "
            "validation errors | unanswered questions | agent errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, s in self.test.items():
            rows.append(
                f"| {name} | {s['correct']}/{s['dialogues']} ({s['correct_rate']:.0%}) | "
                f"{s['completed_rate']:.0%} | {s['field_accuracy']:.2f} | {s['mean_turns']:.1f} | "
                f"{s['validation_errors']} | {s['unanswered_questions']}/{s['questions']} | "
                f"{s['agent_errors']} |"
            )
        if self.ratio is not None:
            rows.append("")
            rows.append(f"Fine-tuned student / teacher (correct completions): {self.ratio:.0%}")
        return "\n".join(rows)


TAGS = {
    "teacher train": "teacher_train",
    "teacher": "teacher_test",
    "base student": "student_base",
    "fine-tuned student": "student_tuned",
}
"""The tag of each group of tapes in the store (`tapeagents ls --tag student_tuned`)."""


def _teacher(config: CaseStudyConfig, *, slips: float = 0.0) -> Agent:
    if config.teacher == "expert":
        return expert_agent(slips=slips, seed=config.seed)
    return teacher_agent(config.teacher, think=False)  # its tapes must export for the student


def _progress(label: str, total: int) -> Any:
    done = 0

    def report(dialogue: Dialogue) -> None:
        nonlocal done
        done += 1
        score = dialogue.score
        print(
            f"[{label}] {done}/{total} {score.task_id}: {score.outcome} "
            f"({score.turns} turns, {score.agent_errors} agent errors)",
            flush=True,
        )

    return report


async def _evaluate(
    label: str, agent: Agent, goals: Sequence[UserGoal], store: TapeStore, max_turns: int
) -> list[Dialogue]:
    return await evaluate(
        agent,
        goals,
        store=store,
        max_turns=max_turns,
        tags=["case_study", TAGS[label]],
        on_dialogue=_progress(label, len(goals)),
    )


def _student_llm(config: CaseStudyConfig, adapter: Path | None = None) -> LLM:
    from tapeagents.llms import LocalLLM

    return LocalLLM(
        config.student_model,
        max_new_tokens=config.max_new_tokens,
        adapter=str(adapter) if adapter else None,
    )


def _trained(adapter: Path) -> FinetuneResult:
    """The result of an earlier fine-tuning run, read back from its adapter directory."""
    from tapeagents.finetune import FinetuneResult

    saved = adapter / "tapeagents-finetune.json"
    if not saved.is_file():
        raise SystemExit(f"{adapter} is not an adapter of `tapeagents finetune` (no {saved.name}).")
    return FinetuneResult.model_validate(json.loads(saved.read_text())["result"])


async def _student_scores(
    label: str, config: CaseStudyConfig, adapter: Path | None, goals: list[UserGoal]
) -> list[DialogueScore]:
    """The student's scores on the goals, its tapes stored in `out/tapes.db`."""
    agent = student_agent(_student_llm(config, adapter), name=TAGS[label])
    with TapeStore(f"sqlite:///{config.out / 'tapes.db'}") as store:
        dialogues = await _evaluate(label, agent, goals, store, config.max_turns)
    return [d.score for d in dialogues]


def _student_share(
    label: str, config: CaseStudyConfig, adapter: Path | None, goals: list[UserGoal]
) -> list[DialogueScore]:
    """One worker process's share of a student's test dialogues."""
    return asyncio.run(_student_scores(label, config, adapter, goals))


async def _evaluate_student(
    label: str, config: CaseStudyConfig, adapter: Path | None, goals: list[UserGoal]
) -> list[DialogueScore]:
    """A student's scores on the goals, in `config.processes` worker processes."""
    if config.processes <= 1:
        return await _student_scores(label, config, adapter, goals)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    n = min(config.processes, len(goals))
    shares = [goals[i::n] for i in range(n)]  # interleaved: every share gets every behaviour
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _student_share, label, config, adapter, share)
                for share in shares
            )
        )
    by_task = {score.task_id: score for share in done for score in share}
    return [by_task[goal.id] for goal in goals]


async def run_case_study(config: CaseStudyConfig) -> CaseStudyResult:
    """Run the four stages (see the module docstring) and return the figures."""
    from tapeagents.finetune import FinetuneConfig, finetune

    seconds: dict[str, float] = {}
    config.out.mkdir(parents=True, exist_ok=True)
    store = TapeStore(f"sqlite:///{config.out / 'tapes.db'}")
    behaviours: Any = tuple(config.behaviours)
    train_goals = make_goals(
        "train", behaviours=behaviours, seeds=config.train_seeds, vary=config.vary_values
    )
    test_goals = make_goals("test", behaviours=behaviours, seeds=config.test_seeds)
    train_goals = train_goals[: config.max_train_dialogues]
    test_goals = test_goals[: config.max_test_dialogues]

    # 1. teacher tapes on the train forms
    start = time.perf_counter()
    train = await _evaluate(
        "teacher train", _teacher(config, slips=config.slips), train_goals, store, max_turns=30
    )
    for dialogue in train:  # the deliberate mistakes are not for learning
        for index, step in enumerate(dialogue.tape.steps):
            if step.metadata.extra.get("slip"):
                store.annotate(dialogue.tape.id, index, label="slip", author="case_study")
    seconds["teacher_tapes"] = time.perf_counter() - start

    # 2. export them, re-rendered for the student
    start = time.perf_counter()
    student_llm = _student_llm(config)
    report = ExportReport()
    examples = list(
        training_examples(
            store,
            student_agent(student_llm),
            Selection(tape_ids=[d.tape.id for d in train], outcome="success", drop_labels=["slip"]),
            validation=config.validation,
            seed=config.seed,
            report=report,
        )
    )
    train_examples = [e for e in examples if e.split == "train"]
    validation_examples = [e for e in examples if e.split == "validation"]
    write_chat_jsonl(
        examples, config.out / "train.jsonl", validation_path=config.out / "valid.jsonl"
    )
    print(report.summary(), flush=True)
    seconds["export"] = time.perf_counter() - start

    # 3. LoRA fine-tune the student
    start = time.perf_counter()
    if config.adapter is not None:
        tuned = _trained(config.adapter)
    else:
        tuned = finetune(
            train_examples,
            FinetuneConfig(
                output_dir=config.out / "adapter",
                model=config.student_model,
                max_steps=config.max_steps,
                epochs=config.epochs,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                lora_r=config.lora_r,
                lora_alpha=config.lora_alpha,
                seed=config.seed,
                logging_steps=10,
            ),
            validation=validation_examples or None,
            on_step=lambda step, total, logs: (
                print(f"[finetune] step {step}/{total} {logs}", flush=True)
                if step % 10 == 0
                else None
            ),
        )
    seconds["finetune"] = time.perf_counter() - start

    # 4. evaluate on the test forms
    start = time.perf_counter()
    dialogues = await _evaluate("teacher", _teacher(config), test_goals, store, config.max_turns)
    seconds["test teacher"] = time.perf_counter() - start
    test: dict[str, dict[str, Any]] = {"teacher": summarize(d.score for d in dialogues)}
    students: dict[str, Path | None] = {"fine-tuned student": tuned.adapter_dir}
    if config.evaluate_base:
        students = {"base student": None, **students}
    for label, adapter in students.items():
        start = time.perf_counter()
        scores = await _evaluate_student(label, config, adapter, test_goals)
        seconds[f"test {label}"] = time.perf_counter() - start
        test[label] = summarize(scores)
    teacher_correct = test["teacher"]["correct"]
    tuned_correct = test["fine-tuned student"]["correct"]
    result = CaseStudyResult(
        config=config,
        train_dialogues=len(train),
        teacher_train_correct=sum(d.score.correct for d in train),
        export={
            "examples": report.examples,
            "train": report.train,
            "validation": report.validation,
            "problems": len(report.problems),
            "skipped": dict(report.skipped),
        },
        finetune={
            "steps": tuned.steps,
            "examples": tuned.examples,
            "tokens": tuned.tokens,
            "target_tokens": tuned.target_tokens,
            "train_loss": tuned.train_loss,
            "eval_loss": tuned.eval_loss,
            "seconds": round(tuned.seconds, 1),
            "adapter": str(tuned.adapter_dir),
        },
        test=test,
        ratio=tuned_correct / teacher_correct if teacher_correct else None,
        seconds={k: round(v, 1) for k, v in seconds.items()},
    )
    (config.out / "results.json").write_text(result.model_dump_json(indent=1))
    return result


TINY = {
    "train_seeds": [0],
    "max_train_dialogues": 4,
    "max_test_dialogues": 1,
    "max_steps": 2,
    "batch_size": 2,
    "max_turns": 2,
    "max_new_tokens": 48,
    "evaluate_base": False,
}
"""The settings of `--tiny`: a handful of tapes and steps, to check the pipeline only."""


def main(argv: list[str] | None = None) -> CaseStudyResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = CaseStudyConfig()
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument(
        "--teacher", default=defaults.teacher, help='"expert" or a model, e.g. litellm:gpt-4o'
    )
    parser.add_argument("--train-seeds", type=int, nargs="+", default=defaults.train_seeds)
    parser.add_argument("--test-seeds", type=int, nargs="+", default=defaults.test_seeds)
    parser.add_argument("--max-train-dialogues", type=int, default=None)
    parser.add_argument("--max-test-dialogues", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--lora-r", type=int, default=defaults.lora_r)
    parser.add_argument("--slips", type=float, default=defaults.slips)
    parser.add_argument("--max-turns", type=int, default=defaults.max_turns)
    parser.add_argument("--no-base", action="store_true", help="skip the base student")
    parser.add_argument(
        "--adapter", type=Path, default=None, help="reuse an adapter this script trained"
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="processes evaluating each student (1 core each)"
    )
    parser.add_argument("--tiny", action="store_true", help="a minute-long pipeline check")
    args = parser.parse_args(argv)
    settings: dict[str, Any] = {
        "out": args.out,
        "teacher": args.teacher,
        "train_seeds": args.train_seeds,
        "test_seeds": args.test_seeds,
        "max_train_dialogues": args.max_train_dialogues,
        "max_test_dialogues": args.max_test_dialogues,
        "max_steps": args.max_steps,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "lora_r": args.lora_r,
        "lora_alpha": 2 * args.lora_r,
        "evaluate_base": not args.no_base,
        "slips": args.slips,
        "max_turns": args.max_turns,
        "adapter": args.adapter,
        "processes": args.processes,
    }
    if args.tiny:
        settings.update(TINY)
    config = CaseStudyConfig(**settings)
    result = asyncio.run(run_case_study(config))
    print()
    print(result.table())
    print(f"\nStages (seconds): {json.dumps(result.seconds)}")
    print(f"Everything is in {config.out}/ (tapes.db, train.jsonl, adapter/, results.json).")
    return result
