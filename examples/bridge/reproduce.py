"""Reproduce BRIDGE (arXiv 2602.07267) on its shipped data, and write a report with plots.

    python -m examples.bridge.reproduce --out bridge-report

The data (McGill-NLP/BRIDGE, CC BY 4.0) is read from `../shared/data/bridge/` next to the
repository, or from `--data` / $BRIDGE_DATA; it is never copied into the repository. The
report (`report.md`) puts our figures next to the paper's; the plots are PNG files:
difficulty against log minutes, and the 50% horizon against release date on a log scale.
With `--published params.csv` (BRIDGE's `params/all_a_pyirt.csv`, or any `task_id,...,b` CSV)
it also gives the Spearman correlation of our difficulties with theirs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from tapeagents.eval import (
    IRTFit,
    TimeLine,
    fit_irt,
    fit_time_line,
    horizon_trend,
    logit_success_difficulty,
    read_pyirt_jsonl,
    within_factor,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bridge"
PAPER = {
    "r2": 0.81,
    "cybench_within_2x": "92.3%",
    "doubling_months": "about 6",
    "frontier_horizon": "about 1 to 2.5 hours (late 2025)",
}


@dataclass
class Results:
    """Every figure the report prints."""

    fit: IRTFit
    line: TimeLine
    baseline_line: TimeLine
    anchors: list[str]
    cybench: dict[str, tuple[float, float, float]]
    """task: (human minutes, BRIDGE prediction, logit baseline prediction)."""
    cybench_within: int
    baseline_within: int
    horizons: dict[str, float]
    released: dict[str, date]
    trend_months: float
    trend_interval: tuple[float, float]
    trend_subjects: list[str]
    spearman_published: float | None
    fit_seconds: float


def data_dir(given: str | None) -> Path:
    path = Path(given or os.environ.get("BRIDGE_DATA") or DEFAULT_DATA)
    if not (path / "all_a_pyirt.jsonl").is_file():
        raise SystemExit(
            f"No BRIDGE data in {path}: pass --data DIR (with all_a_pyirt.jsonl, "
            "combined_human_minutes.jsonl, human_minutes_by_task.jsonl, model_run_mapping.json) "
            "or set BRIDGE_DATA."
        )
    return path


def read_minutes(path: Path) -> dict[str, float]:
    minutes = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            minutes[record["task_id"]] = float(record["human_minutes"])
    return minutes


def read_published(path: Path) -> dict[str, float]:
    """A CSV with the task id in its first column and a `b` column."""
    with open(path, encoding="utf-8", newline="") as source:
        reader = csv.reader(source)
        header = next(reader)
        column = header.index("b")
        return {row[0]: float(row[column]) for row in reader if row}


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def run(data: Path, published: Path | None = None) -> Results:
    """Fit, anchor, predict and trend: the paper's pipeline on its data."""
    responses = read_pyirt_jsonl(data / "all_a_pyirt.jsonl")
    metr_minutes = read_minutes(data / "human_minutes_by_task.jsonl")
    all_minutes = read_minutes(data / "combined_human_minutes.jsonl")
    mapping = json.loads((data / "model_run_mapping.json").read_text(encoding="utf-8"))
    released = {
        name: date.fromisoformat(entry["release_date"])
        for name, entry in mapping.items()
        if entry.get("release_date")
    }
    began = time.perf_counter()
    fit = fit_irt(responses)
    fit_seconds = time.perf_counter() - began
    # METR's tasks (HCAST, RE-Bench, SWAA) anchor the line, as in the paper; SWE-bench's time
    # buckets (ids with "__") are too coarse, and Cybench's times are held out for testing.
    anchors = [i for i in fit.items if i in metr_minutes and "__" not in i]
    line = fit_time_line(fit.difficulties(), metr_minutes, items=anchors)
    baseline = logit_success_difficulty(responses)
    baseline_line = fit_time_line(baseline, metr_minutes, items=anchors)
    held_out = [i for i in all_minutes if i not in metr_minutes and i in fit.items]
    cybench = {
        i: (all_minutes[i], line.minutes(fit.difficulty(i)), baseline_line.minutes(baseline[i]))
        for i in held_out
    }
    within = within_factor({i: v[1] for i, v in cybench.items()}, all_minutes)
    baseline_within = within_factor({i: v[2] for i, v in cybench.items()}, all_minutes)
    horizons = {s: line.horizon(t) for s, t in fit.abilities().items()}
    trend = horizon_trend(horizons, released)
    rho = None
    if published is not None:
        theirs = read_published(published)
        shared = [i for i in fit.items if i in theirs]
        rho = spearman([fit.difficulty(i) for i in shared], [theirs[i] for i in shared])
    return Results(
        fit=fit,
        line=line,
        baseline_line=baseline_line,
        anchors=anchors,
        cybench=cybench,
        cybench_within=len(within),
        baseline_within=len(baseline_within),
        horizons=horizons,
        released=released,
        trend_months=trend.doubling_months,
        trend_interval=trend.interval,
        trend_subjects=trend.subjects,
        spearman_published=rho,
        fit_seconds=fit_seconds,
    )


def plots(results: Results, data: Path, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = read_minutes(data / "human_minutes_by_task.jsonl")
    fit, line = results.fit, results.line
    b = np.array([fit.difficulty(i) for i in results.anchors])
    t = np.array([minutes[i] for i in results.anchors])
    figure, axes = plt.subplots(figsize=(6, 4.5))
    axes.scatter(b, t, s=12, alpha=0.7, label="METR tasks")
    cyb = results.cybench
    axes.scatter(
        [fit.difficulty(i) for i in cyb],
        [v[0] for v in cyb.values()],
        s=18,
        marker="^",
        label="Cybench (held out)",
    )
    grid = np.linspace(b.min(), b.max(), 50)
    axes.plot(grid, [line.minutes(x) for x in grid], color="black", label=f"R² = {line.r2:.2f}")
    axes.set_yscale("log")
    axes.set_xlabel("IRT difficulty b")
    axes.set_ylabel("human minutes")
    axes.legend()
    figure.tight_layout()
    difficulty_png = out / "difficulty_vs_minutes.png"
    figure.savefig(difficulty_png, dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(7, 4.5))
    dated = [s for s in results.horizons if s in results.released]
    axes.scatter(
        [results.released[s] for s in dated],
        [results.horizons[s] for s in dated],
        s=12,
        color="grey",
        alpha=0.6,
        label="models",
    )
    front = results.trend_subjects
    axes.scatter(
        [results.released[s] for s in front],
        [results.horizons[s] for s in front],
        s=24,
        color="C3",
        label="frontier",
    )
    for s in front:
        axes.annotate(s, (results.released[s], results.horizons[s]), fontsize=6)
    origin = min(results.released[s] for s in front)
    years = np.linspace(0, (max(results.released[s] for s in front) - origin).days / 365.25, 20)
    log_h = np.log([results.horizons[s] for s in front])
    x = np.array([(results.released[s] - origin).days / 365.25 for s in front])
    slope, intercept = np.polyfit(x, log_h, 1)
    axes.plot(
        [date.fromordinal(origin.toordinal() + int(y * 365.25)) for y in years],
        np.exp(intercept + slope * years),
        color="C3",
        label=f"doubling every {results.trend_months:.1f} months",
    )
    axes.set_yscale("log")
    axes.set_ylabel("50% time horizon (human minutes)")
    axes.set_xlabel("release date")
    axes.legend()
    figure.tight_layout()
    horizon_png = out / "horizon_vs_release.png"
    figure.savefig(horizon_png, dpi=120)
    plt.close(figure)
    return [difficulty_png, horizon_png]


def report(results: Results) -> str:
    fit, r = results.fit, results
    n = len(r.cybench)
    low, high = r.trend_interval
    best = max(r.trend_subjects, key=lambda s: r.horizons[s])
    rho = (
        "n/a (pass --published)" if r.spearman_published is None else f"{r.spearman_published:.3f}"
    )
    lines = [
        "# BRIDGE reproduction",
        "",
        f"2PL fit: {len(fit.subjects)} subjects × {len(fit.items)} items in "
        f"{r.fit_seconds:.1f} s ({'converged' if fit.converged else 'NOT converged'}).",
        "",
        "| figure | ours | paper |",
        "|---|---|---|",
        f"| R² of difficulty vs ln(human minutes), {r.line.n} METR tasks | {r.line.r2:.3f} | "
        f"{PAPER['r2']} |",
        f"| R² of the logit success-rate baseline | {r.baseline_line.r2:.3f} | below IRT |",
        f"| Cybench predictions within 0.5x-2x | {r.cybench_within}/{n} "
        f"({r.cybench_within / n:.0%}) | {PAPER['cybench_within_2x']} |",
        f"| Cybench within 0.5x-2x, logit baseline | {r.baseline_within}/{n} | lower |",
        f"| frontier 50% horizon doubling time | {r.trend_months:.1f} months "
        f"(90% CI {low:.1f}-{high:.1f}) | {PAPER['doubling_months']} |",
        f"| best frontier 50% horizon | {r.horizons[best]:.0f} min ({best}) | "
        f"{PAPER['frontier_horizon']} |",
        f"| Spearman with BRIDGE's published difficulties | {rho} | 1 |",
        "",
        f"Line: ln(minutes) = {r.line.intercept:.3f} + {r.line.slope:.3f} × b.",
        "",
        "## Cybench (held out)",
        "",
        "| task | human min | BRIDGE min | ratio | baseline min |",
        "|---|---|---|---|---|",
    ]
    for task, (human, ours, base) in sorted(r.cybench.items()):
        lines.append(f"| {task} | {human:.3g} | {ours:.3g} | {ours / human:.2f} | {base:.3g} |")
    lines += ["", "## Frontier models", "", "| model | released | 50% horizon (min) |"]
    lines.append("|---|---|---|")
    for s in r.trend_subjects:
        lines.append(f"| {s} | {r.released[s]} | {r.horizons[s]:.3g} |")
    lines += [
        "",
        "Data: McGill-NLP/BRIDGE (CC BY 4.0), arXiv 2602.07267.",
        "",
        "![difficulty](difficulty_vs_minutes.png)",
        "",
        "![horizons](horizon_vs_release.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="BRIDGE data directory (default: ../shared/data/bridge)")
    parser.add_argument("--out", default="bridge-report", help="Where to write the report.")
    parser.add_argument("--published", help="BRIDGE's params CSV, for the Spearman comparison.")
    args = parser.parse_args()
    data = data_dir(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(data, Path(args.published) if args.published else None)
    plots(results, data, out)
    text = report(results)
    (out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"Wrote {out / 'report.md'} and its plots.")
    if not math.isfinite(results.trend_months):
        print("Warning: the frontier horizon does not grow; no doubling time.")


if __name__ == "__main__":
    main()
