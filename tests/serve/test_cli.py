"""`tapeagents serve`: its options, what it refuses or warns about, and a real server started
from the command line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tapeagents.cli import app
from tapeagents.cli.serve import binding_warning, parse_adapters
from tapeagents.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str):  # type: ignore[no-untyped-def]
    runner = CliRunner(env={"TAPEAGENTS_SERVE_API_KEY": None, "COLUMNS": "200"})
    return runner.invoke(app, list(args))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_adapters_are_named_or_take_their_directory_name() -> None:
    assert parse_adapters(["calc=runs/lora", "runs/other/"]) == {
        "calc": "runs/lora",
        "other": "runs/other/",
    }
    with pytest.raises(UsageError, match="NAME=DIR"):
        parse_adapters(["calc="])
    with pytest.raises(UsageError, match="twice"):
        parse_adapters(["a=x", "a=y"])


def test_only_a_network_address_gets_a_warning() -> None:
    for loopback in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert binding_warning(loopback, None) is None
    open_to_all = binding_warning("0.0.0.0", None)
    assert open_to_all and "without --api-key" in open_to_all and "anyone" in open_to_all
    keyed = binding_warning("192.168.1.5", "secret")
    assert keyed and "clear text" in keyed and "TLS" in keyed


def test_refuses_bad_options_before_serving(tmp_path: Path) -> None:
    result = invoke("serve", "--model", "nowhere:thing")
    assert result.exit_code == 2 and "nowhere" in result.output
    result = invoke("serve", "--model", "test", "--adapter", str(tmp_path))
    assert result.exit_code == 2 and "local model only" in result.output
    result = invoke("serve", "--model", "local", "--adapter", f"a={tmp_path / 'missing'}")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = invoke("serve", "--port", "70000")
    assert result.exit_code == 2


def test_help_lists_the_options() -> None:
    result = invoke("serve", "--help")
    assert result.exit_code == 0
    for option in ("--model", "--adapter", "--host", "--port", "--api-key"):
        assert option in result.output


def test_serves_from_the_command_line_until_interrupted() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TAPEAGENTS_SERVE_API_KEY", None)
    command = [sys.executable, "-m", "tapeagents.cli", "serve", "--model", "test"]
    command += ["--port", str(port), "--api-key", "k"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                models = httpx.get(f"{url}/models", headers={"Authorization": "Bearer k"})
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert [m["id"] for m in models.json()["data"]] == ["test"]
        answer = httpx.post(
            f"{url}/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}]},
            headers={"Authorization": "Bearer k"},
        )
        assert answer.json()["choices"][0]["message"]["content"] == "Done."
        unkeyed = httpx.get(f"{url}/models")
        assert unkeyed.status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert process.returncode == 0, output
    assert f"on {url}" in output and "Warning" not in output
