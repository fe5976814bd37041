"""`tapeagents studio`: what it refuses, and a real server started from the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tapeagents.cli import app
from tapeagents.cli.studio import parse_agents
from tapeagents.errors import UsageError
from tapeagents.store import TapeStore
from tests.studio.data import calc_tape
from tests.studio.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str, **env: str):  # type: ignore[no-untyped-def]
    clean = {
        "TAPEAGENTS_DB": None,
        "TAPEAGENTS_STUDIO_TOKEN": None,
        "TAPEAGENTS_STUDIO_AGENTS": None,
    }
    return CliRunner(env={**clean, **env}).invoke(app, list(args))


def test_agents_are_named_by_import_path() -> None:
    assert parse_agents(["calc=my.agents:build", "my.agents:chat"]) == {
        "calc": "my.agents:build",
        "chat": "my.agents:chat",
    }
    with pytest.raises(UsageError, match="NAME=package.module:attribute"):
        parse_agents(["calc=my_agents"])
    with pytest.raises(UsageError, match="twice"):
        parse_agents(["a=x:y", "a=x:z"])


def test_refuses_a_network_address_without_a_token(tmp_path: Path) -> None:
    result = invoke("studio", "--host", "0.0.0.0", "--db", str(tmp_path / "t.db"))
    assert result.exit_code == 2
    assert "--token" in result.output and "other machines" in result.output


def test_reports_a_broken_agent_before_serving(tmp_path: Path) -> None:
    TapeStore(f"sqlite:///{tmp_path / 't.db'}").close()
    result = invoke(
        "studio", "--db", str(tmp_path / "t.db"), "--agent", "x=tests.studio.agents:broken"
    )
    assert result.exit_code == 2 and "this agent cannot be built" in result.output
    configured = {"TAPEAGENTS_STUDIO_AGENTS": "calc=tests.studio.agents:calculator x=nowhere:y"}
    result = invoke("studio", "--db", str(tmp_path / "t.db"), **configured)
    assert result.exit_code == 2 and "module 'nowhere' not found" in result.output
    result = invoke("studio", "--db", str(tmp_path / "missing.db"))
    assert result.exit_code == 2 and "No tape store at" in result.output


def follow(url: str, tape_id: str) -> None:
    try:
        with httpx.stream("GET", f"{url}/tapes/{tape_id}/events", timeout=30) as events:
            for _ in events.iter_text():
                pass
    except httpx.HTTPError:
        pass


def test_serves_the_store_until_interrupted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tapes.db'}"
    with TapeStore(url) as store:
        tape = calc_tape(store)
        stuck = store.fork(tape, 1)
        store.set_status(stuck.id, "running")  # as if its process had been killed
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TAPEAGENTS_STUDIO_TOKEN", None)
    command = [sys.executable, "-m", "tapeagents.cli", "studio", "--db", url, "--port", str(port)]
    command += ["--agent", "calc=tests.studio.agents:calculator"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "the studio did not start"
                time.sleep(0.1)
        assert page.status_code == 200 and tape.id in page.text
        assert '<option value="calc"' in httpx.get(f"http://127.0.0.1:{port}/tapes/{tape.id}").text
        # a page that follows a running tape keeps an event stream open...
        follower = threading.Thread(target=follow, args=(f"http://127.0.0.1:{port}", stuck.id))
        follower.start()
        time.sleep(0.5)
    finally:
        # ...which does not keep Ctrl-C from stopping the studio
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}/" in output and "agent calc" in output
