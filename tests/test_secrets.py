"""One secret scrubber: names that mark credentials, and credentials hidden in what is shown."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tapeagents.llms import LLM
from tapeagents.secrets import is_secret_name, redact_headers, redact_url, scrub


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "OPENAI_API_KEY",
        "aws_secret_access_key",
        "password",
        "db_passwd",
        "credentials",
        "Authorization",
        "Proxy-Authorization",
        "X-Api-Key",
        "Cookie",
        "extra_headers",
        "token",
        "access_token",
        "X-Auth-Token",
    ],
)
def test_credential_names_are_secret(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["temperature", "max_tokens", "top_p", "seed", "logprobs", "Content-Type", "stop"]
)
def test_model_parameters_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://me:hunter2@llm.example.com/v1", "https://me:***@llm.example.com/v1"),
        ("https://sk-abc123@llm.example.com/v1", "https://***@llm.example.com/v1"),
        ("http://u:p@w@host:8000/v1?x=1", "http://u:***@host:8000/v1?x=1"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("https://host/v1/users/@me", "https://host/v1/users/@me"),
    ],
)
def test_redact_url_hides_the_password_of_the_userinfo(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_headers_hides_the_values_of_secret_headers() -> None:
    headers = {"Authorization": "Bearer sk-1", "X-Api-Key": "k", "Accept": "application/json"}
    assert redact_headers(headers) == {
        "Authorization": "***",
        "X-Api-Key": "***",
        "Accept": "application/json",
    }


def test_scrub_hides_known_secrets_url_passwords_and_bearer_tokens() -> None:
    text = (
        "401 Unauthorized for key sk-live-123 at https://bot:hunter2@llm.example.com/v1 "
        "(sent 'Authorization: Bearer eyJhbGciOi.x.y')"
    )
    assert scrub(text, secrets=["sk-live-123", None, ""]) == (
        "401 Unauthorized for key *** at https://bot:***@llm.example.com/v1 "
        "(sent 'Authorization: Bearer ***')"
    )
    assert scrub("nothing to hide at http://host/v1") == "nothing to hide at http://host/v1"


async def test_openai_compat_shows_no_url_password_in_its_repr_or_errors() -> None:
    from tapeagents.errors import LLMError
    from tapeagents.llms import OpenAICompatLLM, Prompt

    # port 9 on loopback: nothing listens, the connection is refused at once
    llm = OpenAICompatLLM("m", base_url="http://bot:hunter2@127.0.0.1:9/v1", max_retries=0)
    assert repr(llm) == "OpenAICompatLLM('m', base_url='http://bot:***@127.0.0.1:9/v1')"
    with pytest.raises(LLMError) as info:
        await llm.generate(Prompt(messages=[{"role": "user", "content": "hi"}]))
    await llm.aclose()
    assert "bot:***@127.0.0.1:9" in str(info.value) and "hunter2" not in str(info.value)


async def test_litellm_errors_do_not_echo_the_api_key_or_extra_headers() -> None:
    litellm = pytest.importorskip("litellm")
    from tapeagents.errors import LLMError
    from tapeagents.llms import LiteLLM, Prompt

    error = litellm.AuthenticationError(
        "Incorrect API key provided: sk-live-123 (token tk-9 via https://u:pw@proxy/v1)",
        llm_provider="openai",
        model="gpt-4o-mini",
    )
    llm = LiteLLM(
        "gpt-4o-mini",
        api_key="sk-live-123",
        extra_headers={"X-Proxy-Token": "tk-9"},
        max_retries=0,
        mock_response=error,
    )
    with pytest.raises(LLMError) as info:
        await llm.generate(Prompt(messages=[{"role": "user", "content": "hi"}]))
    message = str(info.value)
    assert "Incorrect API key provided: ***" in message and "https://u:***@proxy" in message
    assert not any(secret in message for secret in ("sk-live-123", "tk-9", ":pw@"))


# ----------------------------------------------------------------------------- every sink
# Each secret placement is checked in every place a credential could surface: the backend's
# repr, the LLMError, the LLMFailure step stored by a run, `tapeagents show` (text and JSON),
# the tape export, the run's events and the log records.


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with 401 and a body that echoes what it was sent: the path with
    its query, every header, and the bare token of the Authorization header."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        token = (self.headers.get("Authorization") or "").partition(" ")[2]
        echo = f"invalid credentials {token} path {self.path} headers {dict(self.headers)}"
        body = json.dumps({"error": {"message": echo}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _openai(host: str, **options: Any) -> LLM:
    from tapeagents.llms import OpenAICompatLLM

    base_url = options.pop("base_url", "http://{host}/v1").format(host=host)
    return OpenAICompatLLM("m", base_url=base_url, max_retries=0, **options)


def _litellm(_host: str, *, secret: str, **options: Any) -> LLM:
    litellm = pytest.importorskip("litellm")
    from tapeagents.llms import LiteLLM

    error = litellm.AuthenticationError(
        f"Incorrect API key provided: {secret}. Your request was rejected.",
        llm_provider="openai",
        model="gpt-4o-mini",
    )
    return LiteLLM("gpt-4o-mini", max_retries=0, mock_response=error, **options)


LLM_PLACEMENTS: dict[str, tuple[Callable[[str], LLM], str]] = {
    "openai api_key, echoed bare in the 401 body": (
        lambda h: _openai(h, api_key="sk-live-echo-111"),
        "sk-live-echo-111",
    ),
    "openai base_url user:password@": (
        lambda h: _openai(h, base_url="http://bot:hunter2-pw@{host}/v1"),
        "hunter2-pw",
    ),
    "openai base_url ?api_key=, echoed in the path": (
        lambda h: _openai(h, base_url="http://{host}/v1?api_key=qk-222"),
        "qk-222",
    ),
    "openai Authorization header (Basic), echoed": (
        lambda h: _openai(h, headers={"Authorization": "Basic Ym90OnMzY3JldA=="}),
        "Ym90OnMzY3JldA==",
    ),
    "openai X-Api-Key header, echoed": (
        lambda h: _openai(h, headers={"X-Api-Key": "xk-333"}),
        "xk-333",
    ),
    "openai custom X-Proxy-Token header, echoed": (
        lambda h: _openai(h, headers={"X-Proxy-Token": "tk-444"}),
        "tk-444",
    ),
    "litellm api_key echoed in the provider's error": (
        lambda h: _litellm(h, secret="sk-lite-555", api_key="sk-lite-555"),
        "sk-lite-555",
    ),
    "litellm api_base user:password@, password echoed": (
        lambda h: _litellm(h, secret="pw-666", api_base="http://u:pw-666@proxy.invalid/v1"),
        "pw-666",
    ),
    "litellm api_base ?token=, echoed": (
        lambda h: _litellm(h, secret="qt-777", api_base="http://proxy.invalid/v1?token=qt-777"),
        "qt-777",
    ),
    "litellm extra_headers token, echoed": (
        lambda h: _litellm(h, secret="eh-888", extra_headers={"X-Auth-Token": "eh-888"}),
        "eh-888",
    ),
}


@pytest.mark.parametrize("placement", list(LLM_PLACEMENTS))
def test_llm_secret_reaches_no_sink(
    placement: str, echo_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tapeagents import Agent, AssistantMessage, FinalAnswer, LLMFailure, LLMNode, run
    from tapeagents.cli import app
    from tapeagents.errors import LLMError
    from tapeagents.llms import Prompt
    from tapeagents.store import TapeStore

    make, secret = LLM_PLACEMENTS[placement]
    caplog.set_level(logging.DEBUG)
    llm = make(echo_server)
    sinks: dict[str, str] = {"repr": repr(llm)}

    async def generate() -> None:
        await llm.generate(Prompt(messages=[{"role": "user", "content": "hi"}]))

    with pytest.raises(LLMError) as info:
        asyncio.run(generate())
    sinks["LLMError"] = str(info.value)
    assert "401" in sinks["LLMError"] or "API key" in sinks["LLMError"]

    url = f"sqlite:///{tmp_path / 'tapes.db'}"
    agent = Agent("a", nodes=[LLMNode(steps=[AssistantMessage, FinalAnswer])], llms=llm)
    with TapeStore(url) as store:

        async def collect() -> list[Any]:
            return [event async for event in run(agent, "hi", store=store)]

        events = asyncio.run(collect())
        tape = store.get(events[-1].tape.id)
    failures = [step for step in tape.steps if isinstance(step, LLMFailure)]
    assert failures, tape.kinds()
    sinks["stored LLMFailure"] = tape.model_dump_json()
    sinks["events"] = repr(events)

    runner = CliRunner(env={"TAPEAGENTS_DB": None, "COLUMNS": "200"})
    for name, argv in {
        "show": ["show", tape.id, "--full"],
        "show --json": ["show", tape.id, "--json"],
        "ls": ["ls"],
    }.items():
        shown = runner.invoke(app, [*argv, "--db", url])
        assert shown.exit_code == 0, shown.output
        sinks[name] = shown.output
    export = tmp_path / "tapes.jsonl"
    exported = runner.invoke(app, ["export", "--out", str(export), "--db", url])
    assert exported.exit_code == 0, exported.output
    sinks["export"] = export.read_text()
    assert "LLMError" in sinks["export"]  # the failure step is exported
    sinks["logs"] = caplog.text + "\n".join(repr(r.args) for r in caplog.records)

    leaks = [sink for sink, text in sinks.items() if secret in text]
    assert not leaks, f"{placement}: the secret reached {leaks}"


DB_PLACEMENTS = {
    "parsable, unreachable": "postgresql+psycopg://user:s3cret-a@127.0.0.1:1/db",
    "password in the query": "postgresql+psycopg://user@127.0.0.1:1/db?password=s3cret-b",
    "unparsable: bad port": "postgresql+psycopg://user:s3cret-c@127.0.0.1:port/db",
    "unparsable: bad driver name": "postgresql+psycopg-x://user:s3cret-d@127.0.0.1:1/db",
    "unparsable: space and @ in the password": "postgresql+psycopg://user:s3cret e@@127.0.0.1:1/db",
    "unparsable: bad IPv6 host": "postgresql+psycopg://user:s3cret-f@[::1:1/db",
}


@pytest.mark.parametrize("placement", list(DB_PLACEMENTS))
def test_database_password_reaches_no_sink(
    placement: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tapeagents.cli import app
    from tapeagents.errors import TapeAgentsError
    from tapeagents.store import TapeStore

    pytest.importorskip("psycopg")
    url = DB_PLACEMENTS[placement]
    secret = url.partition("s3cret")[1] + url.partition("s3cret")[2][:2]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TapeAgentsError) as info:
        TapeStore(url)
    sinks = {"TapeStore error": str(info.value)}
    assert "***" in sinks["TapeStore error"]
    runner = CliRunner(env={"TAPEAGENTS_DB": None, "COLUMNS": "200"})
    listed = runner.invoke(app, ["ls", "--db", url])
    assert (
        listed.exit_code == 2
        and listed.exception is None
        or isinstance(listed.exception, SystemExit)
    ), listed.output
    sinks["tapeagents ls"] = listed.output
    sinks["logs"] = caplog.text
    leaks = [sink for sink, text in sinks.items() if secret in text]
    assert not leaks, f"{placement}: the password reached {leaks}"
