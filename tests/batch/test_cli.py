"""`tapeagents batch`: a JSONL task file, bad lines, bad paths, rerunning, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tapeagents.batch import batch_tag
from tapeagents.cli import app
from tapeagents.errors import StoreError
from tapeagents.store import TapeFilter, TapeStore

ROOT = Path(__file__).resolve().parents[2]
AGENT = "tests.batch.agents:three_steps"


def write_tasks(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def invoke(*args: str) -> object:
    runner = CliRunner(env={"TAPEAGENTS_DB": None, "COLUMNS": "200"})
    return runner.invoke(app, list(args))


def test_batch_runs_the_good_lines_and_reports_the_bad_ones(tmp_path: Path) -> None:
    tasks = write_tasks(
        tmp_path / "tasks.jsonl",
        [
            json.dumps({"id": "a", "message": "first"}),
            "{not json",
            json.dumps({"id": "b", "message": "boom"}),
            "",
            json.dumps({"message": "no id"}),
            json.dumps({"id": "a", "message": "again"}),
            json.dumps({"id": 7, "message": "seventh"}),
        ],
    )
    db = f"sqlite:///{tmp_path / 'tapes.db'}"
    args = ("batch", "--agent", AGENT, "--tasks", str(tasks), "--db", db, "--batch-id", "cli")
    result = invoke(*args)
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    output = result.output  # type: ignore[attr-defined]
    assert "tasks.jsonl, line 2: not valid JSON" in output
    assert "line 5: no 'id'" in output
    assert "line 6: id 'a' was already used on line 1" in output
    assert "Task b failed: RuntimeError: the agent blew up on purpose" in output
    assert "tasks run" in output and "calls/s" in output
    assert "tapeagents ls --tag batch:cli" in output
    with TapeStore(db) as store:
        listed = store.list(TapeFilter(tag=batch_tag("cli")), limit=None)
        stored = {s.task_id: s.status for s in listed}
    assert stored == {"a": "stopped", "b": "error", "7": "stopped"}

    again = invoke(*args)
    assert "already done (skipped)" in again.output  # type: ignore[attr-defined]


@pytest.mark.parametrize("env", ["calc_env", "env_for_task"])
def test_environment_factory_per_task(tmp_path: Path, env: str) -> None:
    tasks = write_tasks(
        tmp_path / "t.jsonl", [json.dumps({"id": i, "message": "2+3?"}) for i in range(3)]
    )
    db = f"sqlite:///{tmp_path / 'tapes.db'}"
    result = invoke(
        "batch",
        "--agent",
        "tests.batch.agents:calc_agent",
        "--env",
        f"tests.batch.agents:{env}",
        "--tasks",
        str(tasks),
        "--db",
        db,
        "--concurrency",
        "2",
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    with TapeStore(db) as store:
        summaries = store.list(limit=None)
        assert {s.status for s in summaries} == {"stopped"} and len(summaries) == 3
        assert store.get(summaries[0].id).kinds() == [
            "user",
            "tool_call",
            "tool_result",
            "final_answer",
        ]


def test_bad_paths_are_reported(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", [json.dumps({"id": 1})])
    db = f"sqlite:///{tmp_path / 'tapes.db'}"
    result = invoke(
        "batch", "--agent", "tests.batch.nowhere:agent", "--tasks", str(tasks), "--db", db
    )
    assert result.exit_code == 2
    assert "module 'tests.batch.nowhere' not found" in result.output  # type: ignore[attr-defined]
    result = invoke("batch", "--agent", "tests.batch.agents:nothing", "--tasks", str(tasks))
    assert result.exit_code == 2 and "has no attribute 'nothing'" in result.output  # type: ignore[attr-defined]
    result = invoke(
        "batch", "--agent", AGENT, "--tasks", str(tmp_path / "missing.jsonl"), "--db", db
    )
    assert result.exit_code == 2 and "Cannot read the task file" in result.output  # type: ignore[attr-defined]
    empty = write_tasks(tmp_path / "empty.jsonl", ["[]", "3"])
    result = invoke("batch", "--agent", AGENT, "--tasks", str(empty), "--db", db)
    assert result.exit_code == 2 and "holds no usable task" in result.output  # type: ignore[attr-defined]
    result = invoke("batch", "--agent", AGENT, "--tasks", str(tasks), "--backend", "threads")
    assert result.exit_code == 2 and "asyncio or ray" in result.output  # type: ignore[attr-defined]


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path) -> None:
    tasks = write_tasks(
        tmp_path / "tasks.jsonl", [json.dumps({"id": i, "message": "slow"}) for i in range(12)]
    )
    db = tmp_path / "tapes.db"
    command = [
        sys.executable,
        "-m",
        "tapeagents.cli",
        "batch",
        "--agent",
        "tests.batch.agents:slow_agent",
        "--tasks",
        str(tasks),
        "--db",
        str(db),
        "--concurrency",
        "3",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT, and children inherit that: undo it, as a
        # terminal would, so that the signal below is Ctrl-C wherever the suite runs.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    watcher: TapeStore | None = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)  # wait until tapes are being written
        try:
            if db.exists():
                watcher = watcher or TapeStore(f"sqlite:///{db}", upgrade=False)
                if watcher.count(TapeFilter(status="running")) >= 2:
                    break
        except StoreError:  # the batch is still creating its tables
            continue
    if watcher is not None:
        watcher.close()
    assert process.poll() is None, "the batch ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Interrupted:" in stderr and "Resume with: tapeagents" in stderr
    with TapeStore(f"sqlite:///{db}") as store:
        assert store.count(TapeFilter(status="running")) >= 1
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    with TapeStore(f"sqlite:///{db}") as store:
        summaries = store.list(limit=None)
        assert len(summaries) == 12 and {s.status for s in summaries} == {"stopped"}
        for summary in summaries:  # resumed tapes did not repeat steps
            assert store.get(summary.id).kinds() == ["user", "reasoning", "final_answer"]


def test_a_store_that_disappears_stops_the_batch_with_a_resume_hint(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAPEAGENTS_TEST_DROP_URL", postgres_url)
    tasks = write_tasks(
        tmp_path / "t.jsonl", [json.dumps({"id": i, "message": "hi"}) for i in range(20)]
    )
    result = invoke(
        "batch",
        "--agent",
        "tests.batch.agents:database_dropping_agent",
        "--tasks",
        str(tasks),
        "--db",
        postgres_url,
        "--batch-id",
        "gone",
    )
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    output = result.output  # type: ignore[attr-defined]
    assert "Batch 'gone' stopped: Cannot" in output
    assert "Resume with: tapeagents batch" in output and "gone" in output
