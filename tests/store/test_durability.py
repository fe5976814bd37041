"""Crash safety: a run killed with SIGKILL at a random moment leaves a valid prefix made of
whole model answers, holding every step it reported (write-behind runs and batches: all but at
most the last answer of each tape), and resuming it ends exactly like an uninterrupted run;
several processes can append to one store at once.

The kill campaign runs single runs (one or two steps per answer, written before or behind
reporting them) and batches. `make test` kills each kind twice per database; the slow suite
(`-m slow`) kills `KILLS` times. Each kill records its figures as test properties (`kills`,
`reported`, `lost`, `lost_answers`, `interrupted`, `resumed_equal`): add them up from the report of
`--junitxml=FILE -o junit_family=xunit1`.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tapeagents import ErrorObservation, Observation, Tape, ToolCall, run_sync
from tapeagents.batch.tasks import tape_id_for
from tapeagents.store import TapeStore
from tests.store.crash_agent import batch_tasks, make, run_batch_mode

ROOT = Path(__file__).resolve().parents[2]
N_CALLS = 100
BATCH_CALLS = 40
"""Tool calls per task of a batch: 6 tasks, 3 at a time, take about 1.5 s."""
WINDOW = {"calls": 1.0, "answers": 1.0, "answers-behind": 1.0, "batch": 0.9}
"""Seconds after the run starts in which the kill falls (uniformly); each run lasts longer."""
FAST = 2
"""Kills per mode and database in `make test`."""
KILLS = {
    "sqlite": {"calls": 50, "answers": 50, "answers-behind": 60, "batch": 50},
    "postgresql": {"calls": 15, "answers": 15, "answers-behind": 15, "batch": 10},
}
"""Kills per database and mode in the slow suite: 210 on SQLite, 55 on PostgreSQL."""

Record = Callable[[str, object], None]
Contents = list[tuple[str, dict[str, Any]]]


def kills(*modes: str) -> list[Any]:
    """(database, mode, seed) cases: the first `FAST` seeds fast, the others slow."""
    return [
        pytest.param(
            database,
            mode,
            seed,
            marks=[pytest.mark.slow] if seed > FAST else [],
            id=f"{database}-{mode}-{seed}",
        )
        for database, counts in KILLS.items()
        for mode in modes
        for seed in range(1, counts[mode] + 1)
    ]


def start(
    url: str,
    tape_id: str,
    n_calls: int = N_CALLS,
    mode: str = "calls",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`tests/store/crash_agent.py` in its own process; it prints each step it reports."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_agent", url, tape_id, str(n_calls), mode],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def kill_after_start(
    store: TapeStore, tape_id: str, process: subprocess.Popen[bytes], window: float, seed: int
) -> list[list[Any]]:
    """Wait until the run has stored its tape, SIGKILL it at a random moment of the next
    `window` seconds, and return the steps it reported (the JSON lines it printed)."""
    try:
        deadline = time.monotonic() + 60
        while store.status(tape_id) is None and process.poll() is None:
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.01)
        time.sleep(random.Random(seed).uniform(0.0, window))
    finally:
        process.kill()  # SIGKILL; a no-op if the process has already ended
        out, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill: {err.decode()}"
    return [json.loads(line) for line in out.decode().splitlines()]


def contents(tape: Tape[Any, Any]) -> Contents:
    return [(s.kind, s.llm_dict()) for s in tape]


@functools.cache
def reference_tape(mode: str = "calls") -> Tape[Any, Any]:
    agent, env = make(N_CALLS, mode)
    return run_sync(agent, "work", env, max_steps=10_000).tape


@functools.cache
def reference_batch() -> dict[str, Tape[Any, Any]]:
    """Each task's tape from an uninterrupted batch, by tape id of the batch "b"."""
    summary = run_batch_mode(None, "reference", BATCH_CALLS)
    assert summary.by_status() == {"stopped": len(batch_tasks())}
    return {tape_id_for("b", r.task_id): r.tape for r in summary.results if r.tape is not None}


def answer_boundaries(tape: Tape[Any, Any]) -> set[int]:
    """The lengths at which a prefix of `tape` holds only whole model answers."""
    ids = [step.metadata.llm_call_id for step in tape]
    return {
        n for n in range(len(ids) + 1) if n in (0, len(ids)) or not ids[n] or ids[n] != ids[n - 1]
    }


def assert_whole_answers(store: TapeStore, tape_id: str, reference: Tape[Any, Any]) -> int:
    """The stored tape is a prefix of the uninterrupted one, of whole answers, every
    observation after its action; return its length."""
    tape = store.get(tape_id)
    stored = contents(tape)
    assert stored == contents(reference)[: len(stored)], "the stored tape is not a prefix"
    assert len(tape) in answer_boundaries(reference), f"{tape_id} ends inside a model answer"
    actions = {s.metadata.id for s in tape if isinstance(s, ToolCall)}
    for step in tape:
        if isinstance(step, Observation) and step.action_id is not None:
            assert step.action_id in actions
    return len(tape)


def reported_and_lost(store: TapeStore, tape_id: str, reported: list[list[Any]]) -> list[Any]:
    """The steps of `tape_id` that the run reported and the store does not hold. Each one
    the store holds is the very step reported (same index, kind and step id)."""
    tape = store.get(tape_id)
    lost = []
    for _, index, kind, step_id, llm_call_id in reported:
        if index < len(tape):
            assert (tape[index].kind, tape[index].metadata.id) == (kind, step_id)
        else:
            lost.append((index, kind, llm_call_id))
    return lost


def assert_at_most_the_last_answer(lost: list[Any], reported: list[list[Any]]) -> None:
    """Written behind, the steps reported and lost are the tail of what was reported, and
    all from one model answer (no observation: those are stored before they are reported)."""
    if not lost:
        return
    assert [index for index, _, _ in lost] == [line[1] for line in reported[-len(lost) :]]
    assert len({llm_call_id for _, _, llm_call_id in lost}) == 1, lost
    assert lost[0][2] is not None, f"an observation was reported and lost: {lost}"


def assert_resumed_like_uninterrupted(final: Tape[Any, Any], reference: Tape[Any, Any]) -> int:
    """The resumed tape equals the uninterrupted one, except that an action cut off by the
    kill has an "interrupted" observation instead of its result (it is not performed twice);
    every action has exactly one observation. Return the number of interrupted actions."""
    got, want = contents(final), contents(reference)
    assert len(got) == len(want), f"{len(got)} steps, the uninterrupted run has {len(want)}"
    differing = [i for i in range(len(got)) if got[i] != want[i]]
    interrupted = [s for s in final if isinstance(s, ErrorObservation)]
    assert len(interrupted) <= 1
    assert differing == [final.steps.index(s) for s in interrupted], "not the uninterrupted run"
    by_id = {s.metadata.id: s for s in final}
    for i in differing:  # the interrupted observation answers the action the result answered
        action = by_id[final[i].action_id]
        assert (want[i][0], action.llm_dict()["call_id"]) == ("tool_result", want[i][1]["call_id"])
    answered = [s.action_id for s in final if isinstance(s, Observation) and s.action_id]
    assert sorted(answered) == sorted(s.metadata.id for s in final if isinstance(s, ToolCall))
    return len(interrupted)


@pytest.mark.parametrize(
    ("store_url", "mode", "seed"),
    kills("calls", "answers", "answers-behind"),
    indirect=["store_url"],
)
def test_sigkill_leaves_reported_whole_answers_that_resume(
    store_url: str, mode: str, seed: int, record_property: Record
) -> None:
    """A single run killed at a random moment: the store holds whole answers, every step the
    run reported (written behind: all but at most the last answer), and the resumed run ends
    like an uninterrupted one."""
    reference = reference_tape(mode)
    store = TapeStore(store_url)  # migrate before the child opens it
    tape_id = f"crash-{mode}-{seed}"
    process = start(store_url, tape_id, mode=mode)
    reported = kill_after_start(store, tape_id, process, WINDOW[mode], seed)
    stored = assert_whole_answers(store, tape_id, reference)
    assert stored < len(reference), "the run finished before it was killed; kill it sooner"
    lost = reported_and_lost(store, tape_id, reported)
    if mode == "answers-behind":
        assert_at_most_the_last_answer(lost, reported)
    else:
        assert lost == [], "the run reported steps that the store does not hold"

    agent, env = make(N_CALLS, mode)
    # force: the killed run's lease has not lapsed yet (tests/store/test_leases.py waits for it)
    result = run_sync(agent, store.get(tape_id), env, store=store, max_steps=10_000, force=True)
    assert result.reason == "stopped"
    final = store.get(tape_id)
    assert final.model_dump_json() == result.tape.model_dump_json()
    assert store.status(tape_id) == "stopped"
    interrupted = assert_resumed_like_uninterrupted(final, reference)
    store.close()
    for name, value in [
        ("kills", 1),
        ("reported", len(reported)),
        ("lost", len(lost)),
        ("lost_answers", int(bool(lost))),
        ("interrupted", interrupted),
        ("resumed_equal", 1),
    ]:
        record_property(name, value)


@pytest.mark.parametrize(("store_url", "mode", "seed"), kills("batch"), indirect=["store_url"])
def test_sigkill_in_a_batch_leaves_tapes_that_the_batch_resumes(
    store_url: str, mode: str, seed: int, record_property: Record
) -> None:
    """A batch of 6 tapes, 3 at a time, killed at a random moment: every tape holds whole
    answers and all it reported but at most its last answer (a batch writes behind); running
    the batch again, once the killed run's leases lapse, finishes every tape like an
    uninterrupted batch."""
    references = reference_batch()
    store = TapeStore(store_url)
    batch_id = f"b{seed}"
    first = tape_id_for(batch_id, batch_tasks()[0]["id"])
    # a short lease, so that the rerun waits for it to lapse rather than forcing the tapes
    process = start(store_url, batch_id, BATCH_CALLS, mode, {"TAPEAGENTS_LEASE_SECONDS": "1"})
    reported = kill_after_start(store, first, process, WINDOW[mode], seed)

    lost_in_all = lost_answers = 0
    unfinished = 0
    for task in batch_tasks():
        tape_id = tape_id_for(batch_id, task["id"])
        reference = references[tape_id_for("b", task["id"])]
        mine = [line for line in reported if line[0] == tape_id]
        if store.status(tape_id) is None:
            assert mine == [], "steps of a tape that is not stored were reported"
            unfinished += 1
            continue
        stored = assert_whole_answers(store, tape_id, reference)
        unfinished += stored < len(reference)
        lost = reported_and_lost(store, tape_id, mine)
        assert_at_most_the_last_answer(lost, mine)
        lost_in_all += len(lost)
        lost_answers += bool(lost)
    assert unfinished, "the batch finished before it was killed; kill it sooner"

    summary = run_batch_mode(store, batch_id, BATCH_CALLS)
    assert len(summary.results) == len(batch_tasks())
    interrupted = 0
    for result in summary.results:
        assert result.status == "stopped", (result.status, result.error)
        final = store.get(result.tape_id)
        assert store.status(result.tape_id) == "stopped"
        interrupted += assert_resumed_like_uninterrupted(
            final, references[tape_id_for("b", result.task_id)]
        )
    store.close()
    for name, value in [
        ("kills", 1),
        ("tapes", len(batch_tasks())),
        ("resumed_tapes", sum(r.resumed for r in summary.results)),
        ("reported", len(reported)),
        ("lost", lost_in_all),
        ("lost_answers", lost_answers),
        ("interrupted", interrupted),
        ("resumed_equal", 1),
    ]:
        record_property(name, value)


def test_several_processes_append_to_one_store_at_once(store_url: str) -> None:
    TapeStore(store_url).close()  # migrate once, before the writers start
    processes = [start(store_url, f"parallel-{i}", n_calls=15) for i in range(4)]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
    store = TapeStore(store_url)
    for i in range(4):
        tape = store.get(f"parallel-{i}")
        assert store.summary(tape.id).status == "stopped"
        assert len(tape) == 1 + 15 * 2 + 1
        assert [s.llm_dict().get("arguments") for s in tape if isinstance(s, ToolCall)] == [
            {"i": k} for k in range(15)
        ]
    store.close()
