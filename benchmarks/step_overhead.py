"""Framework time per agent step, ours next to the original TapeAgents 0.1.16 and LangGraph.

    PYTHONPATH=. .venv/bin/python benchmarks/step_overhead.py            # everything (~5 min)
    PYTHONPATH=. .venv/bin/python benchmarks/step_overhead.py --no-peers # ours only
    PYTHONPATH=. .venv/bin/python benchmarks/step_overhead.py --profile  # + cProfile of ours

Workload (the same for every framework): a single node that, per step, builds a prompt from the
LAST step only (so prompt construction costs the same at any tape length), calls an instant
scripted LLM returning a fixed 500-character string, and appends one thought step holding it.
The tape starts with one 500-character user message; the run goes until the tape has N steps.
ms/step = run time / (N - 1) appended steps; each figure is the median of several runs. No
persistence anywhere (0.1.16's SQLite LLM-call observer is switched off; LangGraph has no
checkpointer).

Ours runs in this process through the real path: `run(agent, tape, max_steps=...)`, drained,
with `LLM.call` recording each call as an `LLMCall` under its request hash. The peers run in
subprocesses of the bench venv's Python (`benchmarks/_peers_step_overhead.py`), because 0.1.16
is also imported as `tapeagents`. Without the bench venv, ours is still measured and the
commands to create the venv are printed.

Goal for ours: at most 0.05 ms per step, flat in tape length.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH_VENV = ROOT / ".bench-venv"
PEERS_SCRIPT = Path(__file__).resolve().parent / "_peers_step_overhead.py"
GOAL_MS = 0.05
SIZES = (100, 1_000, 10_000)
RUNS = {100: 5, 1_000: 5, 10_000: 3}
PEERS = ("tapeagents-0.1.16", "langgraph")

ANSWER = ("The quick brown fox jumps over the lazy dog. " * 12)[:500]
SEED = ("Please think step by step about the lazy dog. " * 12)[:500]
assert len(ANSWER) == len(SEED) == 500

BENCH_VENV_COMMANDS = """\
python3.11 -m venv .bench-venv
.bench-venv/bin/pip install --no-deps tapeagents==0.1.16
.bench-venv/bin/pip install langgraph aiohttp aiofiles 'termcolor~=2.4' 'litellm~=1.61' \\
    'hydra-core~=1.3' numpy 'levenshtein~=0.25' 'anthropic>=0.49' requests tenacity \\
    'jsonref~=1.1' pillow 'pyyaml~=6.0' 'openai~=1.55' 'tqdm~=4.66' 'transformers~=4.51.0' \\
    'fastapi~=0.115' uvicorn"""


# ----------------------------------------------------------------------------- ours


def _our_workload():
    from tapeagents import Agent, Node, Reasoning, Tape, UserMessage, run
    from tapeagents.llms import Prompt, ScriptedLLM

    class LastStepNode(Node):
        """Prompt from the last step only; one LLM call; one thought holding its answer."""

        async def generate(self, agent, tape):
            prompt = Prompt(messages=[{"role": "user", "content": tape.last.llm_text()}])
            call = await agent.llm().call(prompt)
            yield call
            yield Reasoning(text=call.output.content)

    async def drain(n: int) -> float:
        agent = Agent("bench", nodes=[LastStepNode("think")], llms=ScriptedLLM(lambda _: ANSWER))
        tape = Tape(steps=[UserMessage(content=SEED)])
        gc.collect()
        start = time.perf_counter()
        async for _event in run(agent, tape, max_steps=n - 1):
            pass
        elapsed = time.perf_counter() - start
        assert len(tape) == n and tape.last.text == ANSWER, len(tape)
        return elapsed

    def one_run(n: int) -> float:
        return asyncio.run(drain(n))

    return one_run


def measure_ours(n: int, runs: int) -> list[float]:
    one_run = _our_workload()
    one_run(min(n, 20))  # warm-up
    return [one_run(n) for _ in range(runs)]


def profile_ours(n: int, top: int) -> str:
    import cProfile
    import io
    import pstats

    one_run = _our_workload()
    one_run(20)
    profiler = cProfile.Profile()
    profiler.enable()
    one_run(n)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    out.write(f"cProfile of ours, one run to {n:,} steps (profiling inflates times ~2-3x)\n")
    out.write("--- by own time ---\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write("--- by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(top + 10)
    return "\n".join(line for line in out.getvalue().splitlines() if line.strip())


# ----------------------------------------------------------------------------- peers


def bench_python() -> Path | None:
    python = BENCH_VENV / "bin" / "python"
    return python if python.exists() else None


def measure_peer(python: Path, framework: str, n: int, runs: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as cwd:  # not the repo root: `tapeagents` must be 0.1.16
        proc = subprocess.run(
            [str(python), "-I", str(PEERS_SCRIPT), framework, str(n), str(runs)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} at {n} steps failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- import time


def import_seconds(python: Path | str, statement: str, *, ours: bool, repeats: int = 5) -> float:
    """Median wall time of `statement` in fresh interpreters (after one unmeasured warm-up)."""
    code = f"import time; t=time.perf_counter(); {statement}; print(time.perf_counter()-t)"
    env = dict(os.environ)
    if ours:
        env["PYTHONPATH"] = str(ROOT)
        cmd, cwd = [str(python), "-c", code], str(ROOT)
    else:
        env.pop("PYTHONPATH", None)
        cmd, cwd = [str(python), "-I", "-c", code], tempfile.gettempdir()
    times = []
    for i in range(repeats + 1):
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{statement!r} failed:\n{proc.stderr[-2000:]}")
        if i:  # the first one compiles bytecode caches
            times.append(float(proc.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


# ----------------------------------------------------------------------------- report


@dataclass
class Row:
    framework: str
    steps: int
    runs: int = 0
    ms_per_step: float | None = None
    estimate_ms: float | None = None
    note: str = ""
    seconds: list[float] = field(default_factory=list)


def per_step_ms(seconds: list[float], n: int) -> float:
    return statistics.median(seconds) / (n - 1) * 1000


def estimate_ms(points: list[tuple[int, float]], n: int) -> float:
    """ms/step at `n` from earlier (steps, ms/step) points: a line through the last two, else
    proportional growth (the pessimistic O(n) case) from the only one."""
    if len(points) >= 2:
        (n1, m1), (n2, m2) = points[-2], points[-1]
        slope = max(0.0, (m2 - m1) / (n2 - n1))
        return m2 + slope * (n - n2)
    (n1, m1) = points[-1]
    return m1 * n / n1


def print_table(rows: list[Row], ours: dict[int, float]) -> None:
    def ratio(row: Row) -> str:
        base = ours.get(row.steps)
        if row.framework.startswith("tapeagents (ours)"):
            return "1.0"
        if base is None:
            return "-"
        if row.ms_per_step is not None:
            return f"{row.ms_per_step / base:,.1f}x"
        if row.estimate_ms is not None:
            return f"~{row.estimate_ms / base:,.0f}x (est.)"
        return "-"

    def ms(row: Row) -> str:
        if row.ms_per_step is not None:
            return f"{row.ms_per_step:.4f}"
        if row.estimate_ms is not None:
            return f"~{row.estimate_ms:.1f} (est.)"
        return "-"

    header = ("framework", "steps", "runs", "median ms/step", "ratio vs ours", "note")
    table = [
        (r.framework, f"{r.steps:,}", str(r.runs or "-"), ms(r), ratio(r), r.note) for r in rows
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=True)]
        for line in (header, *table):
            print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
        return
    rich_table = Table(title="Framework overhead per agent step (instant LLM, no persistence)")
    for name in header:
        rich_table.add_column(name, justify="right" if name in header[1:5] else "left")
    for line in table:
        rich_table.add_row(*line)
    Console(width=160).print(rich_table)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, SIZES)),
        help="comma-separated tape lengths (default: 100,1000,10000)",
    )
    parser.add_argument("--no-peers", action="store_true", help="measure ours only")
    parser.add_argument(
        "--full",
        action="store_true",
        help="also run peer sizes estimated to take longer than --max-run-s (once)",
    )
    parser.add_argument(
        "--max-run-s",
        type=float,
        default=120.0,
        help="skip a peer size whose single run is estimated above this (s)",
    )
    parser.add_argument(
        "--cell-budget-s",
        type=float,
        default=60.0,
        help="run a slow peer size fewer times so that it takes about this long",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile ours at 1,000 steps")
    parser.add_argument("--profile-steps", type=int, default=1_000)
    parser.add_argument("--top", type=int, default=15, help="hotspots to list with --profile")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()

    import tapeagents

    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"ours: tapeagents {tapeagents.__version__} from {Path(tapeagents.__file__).parent}"
    )
    print(
        "Workload: one node; prompt from the last step only; instant scripted LLM; one "
        "500-char thought per step; tape grows from 1 seed step to N steps; "
        "ms/step = median run time / (N - 1); no persistence.\n"
    )

    rows: list[Row] = []
    ours: dict[int, float] = {}
    for n in sizes:
        runs = RUNS.get(n, 3)
        seconds = measure_ours(n, runs)
        ours[n] = per_step_ms(seconds, n)
        rows.append(Row("tapeagents (ours)", n, runs, ours[n], seconds=seconds))

    python = None if args.no_peers else bench_python()
    if not args.no_peers and python is None:
        print(
            f"Peers skipped: the bench venv {BENCH_VENV} is missing. Create it with "
            "`make bench-venv`, or by hand from the repository root:\n"
        )
        print(BENCH_VENV_COMMANDS + "\n")
    versions: dict[str, str] = {}
    if python is not None:
        for framework in PEERS:
            points: list[tuple[int, float]] = []
            for n in sizes:
                runs = RUNS.get(n, 3)
                row = Row(framework, n)
                est_run_s = estimate_ms(points, n) * (n - 1) / 1000 if points else None
                if est_run_s is not None and est_run_s > args.max_run_s and not args.full:
                    row.estimate_ms = estimate_ms(points, n)
                    row.note = (
                        f"skipped: one run would take ~{est_run_s:,.0f} s "
                        f"(ms/step extrapolated linearly; --full runs it once)"
                    )
                    rows.append(row)
                    continue
                if est_run_s is not None and est_run_s > args.max_run_s:
                    runs = 1
                    row.note = f"ran once only (~{est_run_s:,.0f} s per run)"
                elif est_run_s is not None and est_run_s * runs > args.cell_budget_s:
                    runs = max(1, int(args.cell_budget_s // est_run_s))
                    row.note = f"median of {runs} (fewer runs: ~{est_run_s:,.0f} s per run)"
                timeout = 120 + 3 * runs * (est_run_s or 10)
                result = measure_peer(python, framework, n, runs, timeout)
                versions[framework] = result["version"]
                row.runs, row.seconds = runs, result["seconds"]
                row.ms_per_step = per_step_ms(row.seconds, n)
                points.append((n, row.ms_per_step))
                rows.append(row)
        for row in rows:
            if row.framework in versions:
                row.framework = f"{row.framework.split('-')[0]} {versions[row.framework]}"

    rows.sort(key=lambda r: (r.steps, not r.framework.startswith("tapeagents (ours)")))
    print_table(rows, ours)

    worst = max(ours.values())
    verdict = "MET" if worst <= GOAL_MS else "NOT MET"
    print(
        f"\nGoal for ours (<= {GOAL_MS} ms/step at every size, flat): {verdict}; "
        f"worst {worst:.4f} ms/step; " + ", ".join(f"{n:,}: {ms:.4f}" for n, ms in ours.items())
    )
    if len(ours) > 1:
        lo, hi = min(ours), max(ours)
        print(f"Flatness: ms/step at {hi:,} steps / at {lo:,} steps = {ours[hi] / ours[lo]:.2f}")

    print("\nImport time (median of 5 fresh interpreters, after one warm-up import):")
    our_python = ROOT / ".venv" / "bin" / "python"
    our_python = our_python if our_python.exists() else Path(sys.executable)
    ours_import = import_seconds(our_python, "import tapeagents", ours=True)
    print(f"  ours        import tapeagents                         {ours_import * 1000:8.1f} ms")
    if python is not None:
        for label, statement in (
            ("0.1.16      import tapeagents (empty __init__)       ", "import tapeagents"),
            (
                "0.1.16      import tapeagents.agent, .orchestrator   ",
                "import tapeagents.agent, tapeagents.orchestrator",
            ),
            ("langgraph   import langgraph.graph                   ", "import langgraph.graph"),
        ):
            seconds = import_seconds(python, statement, ours=False)
            print(f"  {label}{seconds * 1000:8.1f} ms")
        print(
            "  (0.1.16's package __init__ is empty; `tapeagents.agent` is what building and "
            "running an agent imports. Ours imports agent and run loop in `import tapeagents`.)"
        )

    if args.profile:
        print()
        print(profile_ours(args.profile_steps, args.top))
    print(f"\nTotal benchmark time: {time.perf_counter() - started:,.0f} s")


if __name__ == "__main__":
    main()
