"""Crash safety: a run killed with SIGKILL leaves a valid prefix that `run` resumes, made of
whole model answers; several processes can append to one store at once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tapeagents import ErrorObservation, Observation, Tape, ToolCall, run_sync
from tapeagents.store import TapeStore
from tests.store.crash_agent import make

ROOT = Path(__file__).resolve().parents[2]
N_CALLS = 100


def start(
    url: str, tape_id: str, n_calls: int = N_CALLS, mode: str = "calls"
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_agent", url, tape_id, str(n_calls), mode],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def reference_tape(mode: str = "calls") -> Tape:
    agent, env = make(N_CALLS, mode)
    return run_sync(agent, "work", env, max_steps=10_000).tape


def reference_contents(mode: str = "calls") -> list[tuple[str, dict]]:
    return [(s.kind, s.llm_dict()) for s in reference_tape(mode)]


def answer_boundaries(tape: Tape) -> set[int]:
    """The lengths at which a prefix of `tape` holds only whole model answers."""
    ids = [step.metadata.llm_call_id for step in tape]
    return {
        n for n in range(len(ids) + 1) if n in (0, len(ids)) or not ids[n] or ids[n] != ids[n - 1]
    }


def assert_valid_prefix(store: TapeStore, tape_id: str, reference: list[tuple[str, dict]]) -> int:
    tape = store.get(tape_id)
    contents = [(s.kind, s.llm_dict()) for s in tape]
    assert contents == reference[: len(contents)], "the stored tape is not a prefix of the run"
    actions = {s.metadata.id for s in tape if isinstance(s, ToolCall)}
    for step in tape:
        if isinstance(step, Observation) and step.action_id is not None:
            assert step.action_id in actions
    return len(tape)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_point_leaves_a_prefix_that_resumes(store_url: str, seed: int) -> None:
    reference = reference_contents()
    store = TapeStore(store_url)  # migrate before the child opens it
    tape_id = f"crash-{seed}"
    process = start(store_url, tape_id)
    # wait until the run has started writing, then kill it at a random later moment
    deadline = time.time() + 60
    while store.status(tape_id) is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 0.4))
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    stored = assert_valid_prefix(store, tape_id, reference)
    assert stored < len(reference), "the run finished before it was killed; kill it sooner"

    agent, env = make(N_CALLS)
    # force: the killed run's lease has not lapsed yet (tests/store/test_leases.py waits for it)
    result = run_sync(agent, store.get(tape_id), env, store=store, max_steps=10_000, force=True)
    assert result.reason == "stopped"
    final = store.get(tape_id)
    assert final.model_dump_json() == result.tape.model_dump_json()
    interrupted = [s for s in final if isinstance(s, ErrorObservation)]
    assert len(interrupted) <= 1  # only an action caught between request and answer
    kept = [(s.kind, s.llm_dict()) for s in final if not isinstance(s, ErrorObservation)]
    if not interrupted:
        assert kept == reference
    assert kept[-1] == reference[-1]
    # every action has exactly one observation
    answered = [s.action_id for s in final if isinstance(s, Observation) and s.action_id]
    assert sorted(answered) == sorted(s.metadata.id for s in final if isinstance(s, ToolCall))
    store.close()


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


KILLS = [1, 2, *(pytest.param(seed, marks=pytest.mark.slow) for seed in range(3, 41))]
"""Two kills per mode and database in `make test`; forty in the slow suite (-m slow)."""


@pytest.mark.parametrize("mode", ["answers", "answers-behind"])
@pytest.mark.parametrize("seed", KILLS)
def test_sigkill_leaves_whole_answers(store_url: str, mode: str, seed: int) -> None:
    """Each answer is a thought and a tool call (two steps of one LLM output): a kill at any
    moment leaves whole answers, never a thought without its tool call, and the resumed run
    ends like an uninterrupted one."""
    reference = reference_tape(mode)
    contents = [(s.kind, s.llm_dict()) for s in reference]
    boundaries = answer_boundaries(reference)
    store = TapeStore(store_url)
    tape_id = f"answers-{mode}-{seed}"
    process = start(store_url, tape_id, mode=mode)
    deadline = time.time() + 60
    while store.status(tape_id) is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 0.6))
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    stored = assert_valid_prefix(store, tape_id, contents)
    assert stored < len(reference), "the run finished before it was killed; kill it sooner"
    assert stored in boundaries, f"the tape ends inside a model answer (at step {stored})"

    agent, env = make(N_CALLS, mode)
    # force: the killed run's lease has not lapsed yet
    result = run_sync(agent, store.get(tape_id), env, store=store, max_steps=10_000, force=True)
    assert result.reason == "stopped"
    final = store.get(tape_id)
    kept = [(s.kind, s.llm_dict()) for s in final if not isinstance(s, ErrorObservation)]
    interrupted = [s for s in final if isinstance(s, ErrorObservation)]
    assert len(interrupted) <= 1
    if not interrupted:
        assert kept == contents
    answered = [s.action_id for s in final if isinstance(s, Observation) and s.action_id]
    assert sorted(answered) == sorted(s.metadata.id for s in final if isinstance(s, ToolCall))
    store.close()
