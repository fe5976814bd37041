"""`tapeagents eval irt`: IRT difficulties and abilities, anchored to human minutes (BRIDGE).

numpy and scipy load only when the command runs, so `tapeagents --help` stays fast.
"""

from __future__ import annotations

import json
from enum import StrEnum
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tapeagents.cli.common import DbOption, open_store, out
from tapeagents.errors import UsageError

if TYPE_CHECKING:
    from tapeagents.eval import Responses

__all__ = ["app"]

app = typer.Typer(
    name="eval",
    help="Evaluation science: IRT difficulty scales anchored to human time.",
    no_args_is_help=True,
)


class ModelChoice(StrEnum):
    one = "1pl"
    two = "2pl"


class ScoreChoice(StrEnum):
    auto = "auto"
    reward = "reward"
    success = "success"


def _read_minutes(path: Path) -> dict[str, float]:
    """`{"task_id": ..., "human_minutes": ...}` per line (BRIDGE's format), or `id,minutes` CSV."""
    minutes: dict[str, float] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UsageError(f"Cannot read {path}: {error.strerror or error}.") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            if path.suffix.lower() == ".csv":
                task, value = line.rsplit(",", 1)
                if number == 1 and not value.strip().replace(".", "", 1).isdigit():
                    continue
                minutes[task.strip()] = float(value)
            else:
                record = json.loads(line)
                minutes[str(record["task_id"])] = float(record["human_minutes"])
        except (ValueError, KeyError, TypeError):
            raise UsageError(
                f"{path}:{number}: expected "
                '{"task_id": ..., "human_minutes": ...} (JSONL) or task_id,minutes (CSV).'
            ) from None
    return minutes


def _responses(
    source: Path | None, db: str | None, tag: str | None, agent: str | None, score: ScoreChoice
) -> Responses:
    from tapeagents.eval import from_store, read_responses

    if source is not None:
        return read_responses(source, score=score.value)
    from tapeagents.export import Selection

    with open_store(db) as store:
        return from_store(store, Selection(tag=tag, agent=agent), score=score.value)


@app.command("irt")
def irt(
    source: Annotated[
        Path | None,
        typer.Argument(
            metavar="[MATRIX]",
            help="py-irt JSONL, evaluation records (JSONL/CSV from `export -f eval`) or a "
            "response matrix (CSV/JSON); default: the tapes in the store.",
        ),
    ] = None,
    db: DbOption = None,
    tag: Annotated[str | None, typer.Option(help="Store: only tapes with this tag.")] = None,
    agent: Annotated[str | None, typer.Option(help="Store: only tapes of this agent.")] = None,
    score: Annotated[
        ScoreChoice, typer.Option(help="What a cell holds: reward, success, or auto (either).")
    ] = ScoreChoice.auto,
    model: Annotated[ModelChoice, typer.Option(help="1pl (Rasch) or 2pl.")] = ModelChoice.two,
    minutes: Annotated[
        Path | None,
        typer.Option(
            help="Human minutes per task (JSONL task_id/human_minutes, or CSV): anchors the "
            "difficulty scale, predicts minutes for the other tasks and gives time horizons."
        ),
    ] = None,
    not_anchor: Annotated[
        list[str] | None,
        typer.Option(
            "--not-anchor",
            metavar="GLOB",
            help="Tasks matching this pattern do not anchor the line, though their minutes are "
            "known (e.g. '*__*' for BRIDGE's coarse SWE-bench buckets); repeatable.",
        ),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Bootstrap replicates for 90% intervals (0: none).")
    ] = 0,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write items.csv and subjects.csv to this directory."),
    ] = None,
    top: Annotated[int, typer.Option(min=0, help="Rows to print per table.")] = 10,
) -> None:
    """Fit an IRT model to a response matrix: item difficulties, subject abilities, horizons."""
    from tapeagents.eval import bootstrap as run_bootstrap
    from tapeagents.eval import fit_irt, fit_time_line

    responses = _responses(source, db, tag, agent, score).without_empty()
    fit = fit_irt(responses, model=model.value)
    console = out()
    console.print(
        f"{model.value.upper()} fit: {len(fit.subjects)} subjects × {len(fit.items)} items, "
        f"{responses.density:.0%} observed, {fit.seconds:.2f} s"
        + ("" if fit.converged else " [yellow](not converged)[/yellow]")
    )
    intervals_b: dict[str, tuple[float, float]] = {}
    intervals_t: dict[str, tuple[float, float]] = {}
    if bootstrap:
        boot = run_bootstrap(responses, fit, n=bootstrap)
        intervals_b, intervals_t = boot.difficulty_intervals(), boot.ability_intervals()
        console.print(f"Bootstrap: {bootstrap} refits in {boot.seconds:.1f} s")
    human = _read_minutes(minutes) if minutes is not None else {}
    difficulties, abilities = fit.difficulties(), fit.abilities()
    line = None
    if human:
        anchors = [
            i
            for i in fit.items
            if i in human and not any(fnmatch(i, glob) for glob in not_anchor or [])
        ]
        line = fit_time_line(difficulties, human, items=anchors)
        console.print(
            f"ln(minutes) = {line.intercept:.3f} + {line.slope:.3f} × difficulty over "
            f"{line.n} anchor tasks: R² = {line.r2:.3f}"
        )
    items = Table(title="Hardest items", show_edge=False)
    for column in ("item", "a", "b") + (("minutes",) if line else ()):
        items.add_column(column, justify="left" if column == "item" else "right")
    ranked = sorted(fit.items, key=lambda i: -difficulties[i])
    for item in ranked[:top]:
        k = fit.items.index(item)
        row = [escape(item), f"{fit.a[k]:.2f}", f"{fit.b[k]:.2f}"]
        if line:
            row.append(f"{human[item]:.3g}" if item in human else f"~{line.minutes(fit.b[k]):.3g}")
        items.add_row(*row)
    subjects = Table(title="Strongest subjects", show_edge=False)
    for column in ("subject", "theta") + (("50% horizon (min)",) if line else ()):
        subjects.add_column(column, justify="left" if column == "subject" else "right")
    for subject in sorted(fit.subjects, key=lambda s: -abilities[s])[:top]:
        row = [escape(subject), f"{abilities[subject]:.2f}"]
        if line:
            row.append(f"{line.horizon(abilities[subject]):.3g}")
        subjects.add_row(*row)
    if top:
        console.print(items)
        console.print(subjects)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "items.csv", "w", encoding="utf-8") as f:
            f.write("item,a,b,b_low,b_high,human_minutes,predicted_minutes\n")
            for k, item in enumerate(fit.items):
                low, high = intervals_b.get(item, ("", ""))
                known = human.get(item, "")
                predicted = f"{line.minutes(fit.b[k]):.6g}" if line else ""
                f.write(
                    f"{json.dumps(item)},{fit.a[k]:.6g},{fit.b[k]:.6g},{low},{high},"
                    f"{known},{predicted}\n"
                )
        with open(out_dir / "subjects.csv", "w", encoding="utf-8") as f:
            f.write("subject,theta,theta_low,theta_high,horizon_minutes\n")
            for subject in fit.subjects:
                low, high = intervals_t.get(subject, ("", ""))
                horizon = f"{line.horizon(abilities[subject]):.6g}" if line else ""
                f.write(f"{json.dumps(subject)},{abilities[subject]:.6g},{low},{high},{horizon}\n")
        console.print(f"Wrote {escape(str(out_dir / 'items.csv'))} and subjects.csv")
