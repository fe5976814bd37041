"""`tapeagents export`: stored tapes as backups, training data or evaluation records."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tapeagents.cli.common import DbOption, err, fail, open_store, out
from tapeagents.errors import UsageError
from tapeagents.loading import load_agent

if TYPE_CHECKING:
    from tapeagents.agent import Agent
    from tapeagents.export import ExportReport, Selection
    from tapeagents.store import TapeStore

__all__ = ["app"]

app = typer.Typer()

PANEL = "Training and evaluation"


class Format(StrEnum):
    tapes = "tapes"
    openai = "openai"
    hf = "hf"
    tokens = "tokens"
    eval = "eval"


class SplitBy(StrEnum):
    task = "task"
    tape = "tape"


class OnProblem(StrEnum):
    skip_tape = "skip_tape"
    skip_output = "skip_output"
    raise_ = "raise"


class Truncation(StrEnum):
    drop = "drop"
    left = "left"


_NEEDS_AGENT = {Format.openai, Format.hf, Format.tokens}


@app.command("export", rich_help_panel=PANEL)
def export(
    out_path: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Where to write: a JSONL file (tapes, openai, tokens), a directory (hf), or a "
            "JSONL/CSV file (eval).",
        ),
    ],
    tape_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[ID]...", help="Tape ids or prefixes (default: all tapes)."),
    ] = None,
    format: Annotated[
        Format,
        typer.Option(
            "--format",
            "-f",
            help="tapes: tapes and LLM calls (a backup `import` reads); openai: chat fine-tuning "
            "JSONL; hf: a Hugging Face dataset; tokens: token ids and labels for the local "
            "model; eval: one evaluation record per tape.",
        ),
    ] = Format.tapes,
    agent_path: Annotated[
        str | None,
        typer.Option(
            "--agent",
            metavar="MODULE:ATTR",
            help="The agent whose nodes rebuild the requests and answers (openai, hf, tokens): "
            "the one that made the tapes, or a student with its own prompts.",
        ),
    ] = None,
    from_agent: Annotated[
        str | None, typer.Option(help="Only tapes run by the agent of this name.")
    ] = None,
    status: Annotated[str | None, typer.Option(help="Only tapes whose run ended so.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only tapes with this tag.")] = None,
    task_id: Annotated[str | None, typer.Option(help="Only tapes of this task.")] = None,
    outcome: Annotated[
        str | None, typer.Option(help="Only tapes with this outcome (e.g. success).")
    ] = None,
    min_reward: Annotated[
        float | None, typer.Option(help="Only tapes with at least this reward.")
    ] = None,
    min_rating: Annotated[
        float | None,
        typer.Option(help="Leave out outputs (and tapes) whose latest rating is below this."),
    ] = None,
    drop_label: Annotated[
        list[str] | None,
        typer.Option(help="Leave out outputs (or tapes) annotated with this label; repeatable."),
    ] = None,
    keep_label: Annotated[
        list[str] | None,
        typer.Option(help="Keep only outputs (or tapes) annotated with this label; repeatable."),
    ] = None,
    rated_only: Annotated[
        bool, typer.Option("--rated-only", help="Keep only outputs rated at least --min-rating.")
    ] = False,
    validation: Annotated[
        float,
        typer.Option(min=0.0, max=0.99, help="Share of tasks (or tapes) for validation."),
    ] = 0.0,
    validation_out: Annotated[
        Path | None,
        typer.Option(help="Where the validation examples go (openai, tokens)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split.")] = 0,
    split_by: Annotated[
        SplitBy, typer.Option(help="Keep together the tapes of one task, or of one lineage.")
    ] = SplitBy.task,
    dedupe: Annotated[
        bool, typer.Option("--dedupe/--no-dedupe", help="Leave out repeated examples.")
    ] = True,
    on_problem: Annotated[
        OnProblem,
        typer.Option(
            help="What an output the agent cannot reproduce costs: its tape, itself, "
            "or the export (raise)."
        ),
    ] = OnProblem.skip_tape,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes that rebuild the examples (openai; a database file or server: "
            "each reads its share of the tapes itself).",
        ),
    ] = 1,
    model: Annotated[
        str, typer.Option(help="The local model whose tokenizer makes token ids (tokens).")
    ] = "smollm2-135m",
    max_length: Annotated[
        int, typer.Option(min=2, help="Longest example in tokens (tokens).")
    ] = 2048,
    truncation: Annotated[
        Truncation,
        typer.Option(help="A too long example is dropped, or its prompt cut on the left."),
    ] = Truncation.drop,
    matrix: Annotated[
        Path | None,
        typer.Option(help="Also write the subjects × tasks matrix here, CSV or .json (eval)."),
    ] = None,
    report_path: Annotated[
        Path | None, typer.Option("--report", help="Write the export report as JSON here.")
    ] = None,
    db: DbOption = None,
) -> None:
    """Export tapes: as a backup, as training examples, or as evaluation records.

    Training formats rebuild every model output on the selected tapes with --agent's nodes; what
    the agent cannot reproduce is reported with the tape, the step and the reason.
    """
    from tapeagents.export import Selection

    if format in _NEEDS_AGENT and agent_path is None:
        raise UsageError(
            f"--format {format.value} rebuilds prompts with an agent: pass --agent MODULE:ATTR "
            "(the agent that made the tapes, or the one to train)."
        )
    if validation_out is not None and not validation:
        raise UsageError("--validation-out needs --validation SHARE (for example 0.1).")
    if validation_out is not None and format not in (Format.openai, Format.tokens):
        raise UsageError(
            f"--validation-out is for --format openai and tokens; --format {format.value} "
            + ("keeps both splits in one DatasetDict." if format is Format.hf else "has no split.")
        )
    with open_store(db) as store:
        ids = [store.resolve_id(i) for i in tape_ids] if tape_ids else None
        if format is Format.tapes:
            _export_tapes(store, ids, out_path)
            return
        selection = Selection(
            tape_ids=ids,
            agent=from_agent,
            status=status,
            tag=tag,
            task_id=task_id,
            outcome=outcome,
            min_reward=min_reward,
            min_rating=min_rating,
            drop_labels=drop_label or [],
            keep_labels=keep_label or [],
            rated_only=rated_only,
        )
        if format is Format.eval:
            _left_out(_export_eval(store, selection, out_path, matrix))
            return
        assert agent_path is not None
        agent, _ = load_agent(agent_path)
        options = {
            "dedupe": dedupe,
            "validation": validation,
            "seed": seed,
            "split_by": split_by.value,
            "on_problem": on_problem.value,
        }
        report = _export_examples(
            store,
            agent,
            selection,
            format,
            out_path,
            validation_out,
            options,
            model=model,
            max_length=max_length,
            truncation=truncation.value,
            workers=workers,
        )
    if report_path is not None:
        report_path.write_text(report.model_dump_json(indent=1) + "\n")
    _print_report(report, format, out_path, validation_out)
    _left_out(report, listed=True)


def _export_tapes(store: TapeStore, ids: list[str] | None, out_path: Path) -> None:
    """`--format tapes`: every readable tape is written; unreadable ones are listed, exit 1."""
    from tapeagents.errors import UnreadableTapesError
    from tapeagents.export import ExportReport

    report = ExportReport()
    try:
        count = store.export_jsonl(out_path, ids)
    except UnreadableTapesError as error:
        count = error.written
        for problem in error.unreadable:
            report.unreadable_tape(problem)
    out().print(f"Exported {count} tape{'' if count == 1 else 's'} to {escape(str(out_path))}.")
    _left_out(report)


def _left_out(report: ExportReport, *, listed: bool = False) -> None:
    """Exit with code 1 when the export left out tapes the store cannot read, after listing
    them on stderr (unless the report printed above `listed` them)."""
    if not report.unreadable:
        return
    if not listed:
        for line in report.unreadable_lines():
            err().print(f"[yellow]{escape(line)}[/]")
    count = len(report.unreadable)
    raise fail(
        f"{count} tape{' was' if count == 1 else 's were'} left out because the store cannot "
        f"read {'it' if count == 1 else 'them'}; every other tape was exported. Restore the "
        "database from a backup, or delete the tapes listed above with `tapeagents rm ID`.",
        code=1,
    )


def _progress(*, auto_refresh: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]exporting[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tapes"),
        TimeElapsedColumn(),
        console=err(),
        transient=True,
        auto_refresh=auto_refresh,
    )


def _count(store: TapeStore, selection: Selection) -> int:
    if selection.tape_ids is not None:
        return len(selection.tape_ids)
    return store.count(selection.tape_filter())


def _export_examples(
    store: TapeStore,
    agent: Agent,
    selection: Selection,
    format: Format,
    out_path: Path,
    validation_out: Path | None,
    options: dict[str, Any],
    *,
    model: str,
    max_length: int,
    truncation: str,
    workers: int = 1,
) -> ExportReport:
    from tapeagents.export import (
        ExportReport,
        export_chat_jsonl,
        to_hf_dataset,
        token_examples,
        training_examples,
        write_token_jsonl,
    )

    report = ExportReport()
    total = _count(store, selection)
    # Worker processes are forked: no progress thread may run then (it could hold a lock that
    # a worker needs), so the bar is redrawn by hand, a few times a second.
    threaded = workers == 1 or format is not Format.openai
    with _progress(auto_refresh=threaded) as progress:
        task = progress.add_task("export", total=total)
        drawn = [0.0]

        def advance(_: object) -> None:
            progress.update(task, completed=report.tapes)
            if not threaded and time.monotonic() - drawn[0] > 0.2:
                drawn[0] = time.monotonic()
                progress.refresh()

        if format is Format.openai:
            export_chat_jsonl(
                store,
                agent,
                out_path,
                selection,
                validation_path=validation_out,
                workers=workers,
                report=report,
                on_progress=advance,
                **options,
            )
            progress.update(task, completed=report.tapes)
            return report
        examples = training_examples(store, agent, selection, report=report, **options)
        if format is Format.tokens:
            from tapeagents.llms.local import LocalLLM

            tokens = token_examples(
                examples,
                LocalLLM(model),
                max_length=max_length,
                truncation=truncation,  # type: ignore[arg-type]
                report=report,
            )
            write_token_jsonl(tokens, out_path, validation_path=validation_out, on_example=advance)
        else:
            rows = list(examples)
            progress.update(task, completed=report.tapes)
            if not rows:
                raise UsageError(_nothing(report))
            dataset = to_hf_dataset(rows)
            if options["validation"]:
                import datasets

                dataset = datasets.DatasetDict(
                    {
                        "train": dataset.filter(lambda row: row["split"] == "train"),
                        "validation": dataset.filter(lambda row: row["split"] == "validation"),
                    }
                )
            dataset.save_to_disk(str(out_path))
        progress.update(task, completed=report.tapes)
    return report


def _nothing(report: ExportReport) -> str:
    return (
        f"No training examples from {report.tapes} tapes.\n{report.summary()}\n"
        "Check the filters, and that --agent has the nodes that made the tapes."
    )


def _print_report(
    report: ExportReport, format: Format, out_path: Path, validation_out: Path | None
) -> None:
    console = out()
    where = str(out_path) + (f" and {validation_out}" if validation_out else "")
    console.print(f"Wrote {report.examples} examples ({format.value}) to {escape(where)}.")
    for line in report.summary().splitlines():
        warn = line.startswith(("left out", "  ")) or "problems" in line
        console.print(f"[yellow]{escape(line)}[/]" if warn else escape(line))
    if report.validation and validation_out is None and format is not Format.hf:
        err().print(
            "[yellow]Validation examples were left out: pass --validation-out PATH to keep them.[/]"
        )


def _export_eval(
    store: TapeStore, selection: Selection, out_path: Path, matrix: Path | None
) -> ExportReport:
    """`--format eval`: the records, and with `--matrix` the response matrix.

    No tape selected writes nothing and exits 1. Tapes without a task id or a score are said on
    stderr with how to record them; when that leaves the matrix empty, the records are written
    but the matrix is not (an empty file would pass for a result), and the command exits 1.
    """
    from tapeagents.export import (
        ExportReport,
        eval_records,
        missing_scores,
        response_matrix,
        write_eval_records,
    )

    total = _count(store, selection)
    records = []
    report = ExportReport()
    with _progress() as progress:
        task = progress.add_task("export", total=total)
        for record in eval_records(store, selection, report=report):
            records.append(record)
            progress.update(task, completed=report.tapes + len(report.unreadable))
    if not records and not report.unreadable:
        raise fail(
            "No tape matched the selection, so nothing was written. Check the tape ids and the "
            "filters (`tapeagents ls` with the same filters lists what they select).",
            code=1,
        )
    count = write_eval_records(records, out_path)
    console = out()
    console.print(f"Wrote {count} evaluation records to {escape(str(out_path))}.")
    gaps = missing_scores(records)
    built = response_matrix(records) if matrix is not None else None
    if built is not None and not built.tasks:
        why = gaps or "no tape the store can read was selected."
        refused = fail(f"The response matrix was not written: {why}", code=1)
        if not report.unreadable:
            raise refused
        return report  # the caller lists the unreadable tapes, then exits 1
    if gaps is not None:
        err().print(f"[yellow]Note: {escape(gaps)}[/]")
    if built is not None and matrix is not None:
        built.write(matrix)
        console.print(
            f"Wrote the {len(built.subjects)} × {len(built.tasks)} response matrix to "
            f"{escape(str(matrix))}."
        )
    return report
