"""`tapeagents miniwob`: run an agent on MiniWoB++ tasks offline, store the tapes, print scores.

Playwright and the browser environment are imported only when the command runs.
"""

from __future__ import annotations

import asyncio
import difflib
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tapeagents.cli.common import DbOption, open_store, out
from tapeagents.errors import UsageError

if TYPE_CHECKING:
    from tapeagents.agent import Agent
    from tapeagents.store import TapeStore

__all__ = ["app"]

app = typer.Typer()

PANEL = "Environments"


@dataclass
class _Score:
    rewards: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


@app.command("miniwob", rich_help_panel=PANEL)
def miniwob(
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            help="A MiniWoB++ task (repeat for several); 'experts' for every task with a "
            "scripted policy.",
        ),
    ] = None,
    agent: Annotated[
        str, typer.Option("--agent", help="'scripted' (expert policies) or 'llm' (web agent).")
    ] = "scripted",
    episodes: Annotated[int, typer.Option(min=1, help="Episodes per task.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the first episode; then seed+1, ...")] = 0,
    model: Annotated[
        str, typer.Option(help="The LLM for --agent llm: 'local', 'litellm:gpt-4o-mini', ...")
    ] = "local",
    mode: Annotated[str, typer.Option(help="How the LLM answers: 'tools' or 'json'.")] = "tools",
    max_steps: Annotated[int, typer.Option(min=1, help="Step limit per episode.")] = 30,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Episodes run at once, each in its own browser context.")
    ] = 1,
    screenshots: Annotated[
        bool, typer.Option(help="Attach a screenshot to every page observation.")
    ] = False,
    list_tasks: Annotated[
        bool, typer.Option("--list-tasks", help="List the tasks and exit.")
    ] = False,
    db: DbOption = None,
) -> None:
    """Run an agent on MiniWoB++ tasks (served offline), store the tapes and print scores.

    Success means a positive MiniWoB reward; the tapes carry task_id "miniwob/TASK", the
    reward and the outcome, so `tapeagents ls` and exporters can select on them.
    """
    from tapeagents.environments.browser import EXPERT_POLICIES, miniwob_tasks

    if list_tasks:
        for name in miniwob_tasks():
            out().print(f"{name}{'  (scripted policy)' if name in EXPERT_POLICIES else ''}")
        return
    if not task:
        raise UsageError("Name a task with --task (see --list-tasks), or --task experts.")
    tasks = sorted(EXPERT_POLICIES) if task == ["experts"] else list(dict.fromkeys(task))
    unknown = [name for name in tasks if name not in miniwob_tasks()]
    if unknown:
        close = difflib.get_close_matches(unknown[0], miniwob_tasks(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"Unknown MiniWoB++ task {unknown[0]!r}.{hint} See --list-tasks.")
    if agent not in ("scripted", "llm"):
        raise UsageError(f"--agent must be 'scripted' or 'llm', not {agent!r}.")
    if mode not in ("tools", "json"):
        raise UsageError(f"--mode must be 'tools' or 'json', not {mode!r}.")
    if agent == "scripted":
        missing = [name for name in tasks if name not in EXPERT_POLICIES]
        if missing:
            raise UsageError(
                f"No scripted policy for {', '.join(missing)}; use --agent llm, or one of: "
                f"{', '.join(sorted(EXPERT_POLICIES))}."
            )
    chosen = _make_agent(agent, model, mode)
    with open_store(db, create=True) as store:
        started = time.perf_counter()
        scores = asyncio.run(
            _run_all(
                chosen,
                tasks,
                episodes=episodes,
                first_seed=seed,
                store=store,
                max_steps=max_steps,
                concurrency=concurrency,
                screenshots=screenshots,
            )
        )
        elapsed = time.perf_counter() - started
        where = store.display_url
    _print_scores(scores, elapsed)
    out().print(
        f"Tapes stored in {where}; see them with: tapeagents ls --db {where}", soft_wrap=True
    )


def _make_agent(kind: str, model: str, mode: str) -> Agent:
    from tapeagents.environments.browser import expert_agent, web_agent

    if kind == "scripted":
        return expert_agent()
    return web_agent(model, mode=mode)


async def _run_all(
    agent: Agent,
    tasks: list[str],
    *,
    episodes: int,
    first_seed: int,
    store: TapeStore,
    max_steps: int,
    concurrency: int,
    screenshots: bool,
) -> dict[str, _Score]:
    from tapeagents.environments.browser import MiniWoBEnvironment

    scores = {name: _Score() for name in tasks}
    jobs: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for name in tasks:
        for seed in range(first_seed, first_seed + episodes):
            jobs.put_nowait((name, seed))

    async with MiniWoBEnvironment(screenshots=screenshots) as env:

        async def worker() -> None:
            while not jobs.empty():
                name, seed = jobs.get_nowait()
                started = time.perf_counter()
                tape = await env.run_episode(agent, name, seed, store=store, max_steps=max_steps)
                scores[name].seconds.append(time.perf_counter() - started)
                scores[name].rewards.append(tape.metadata.reward or 0.0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return scores


def _print_scores(scores: dict[str, _Score], elapsed: float) -> None:
    table = Table(title="MiniWoB++")
    for column in ("task", "episodes", "success", "reward 1", "mean reward", "median time"):
        table.add_column(column, justify="left" if column == "task" else "right", no_wrap=True)
    total: list[float] = []
    for name, score in scores.items():
        rewards = score.rewards
        total += rewards
        table.add_row(
            name,
            str(len(rewards)),
            _percent(sum(r > 0 for r in rewards), len(rewards)),
            _percent(sum(r >= 1.0 for r in rewards), len(rewards)),
            f"{statistics.fmean(rewards):.2f}",
            f"{statistics.median(score.seconds) * 1000:.0f} ms",
        )
    console = out()
    console.print(table)
    if total:
        per_minute = len(total) / elapsed * 60
        console.print(
            f"Overall: {sum(r > 0 for r in total) / len(total):.1%} success over "
            f"{len(total)} episodes in {elapsed:.1f} s ({per_minute:.0f} episodes per minute)."
        )


def _percent(count: int, total: int) -> str:
    return f"{count / total:.0%}" if total else "-"
