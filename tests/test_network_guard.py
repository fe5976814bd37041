"""No test reaches a model over the network unless it opts in (see tests/conftest.py)."""

from __future__ import annotations

import socket

import httpx
import pytest

from tapeagents.errors import LLMError
from tapeagents.llms import Prompt
from tapeagents.llms.openai_compat import OpenAICompatLLM
from tests.conftest import ModelRequestBlocked

PROMPT = Prompt(messages=[{"role": "user", "content": "Hi"}])


async def test_a_hosted_model_is_refused_with_the_opt_in_named() -> None:
    llm = OpenAICompatLLM("gpt-4o-mini", base_url="https://api.openai.com/v1", max_retries=0)
    # the backend reports the refusal as its failure (not retried), message intact
    with pytest.raises(LLMError, match="api.openai.com:443.*allow_model_requests"):
        await llm.generate(PROMPT)


def test_raw_sockets_to_other_hosts_are_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(ModelRequestBlocked, match="203.0.113.7:443"):
            sock.connect(("203.0.113.7", 443))


def test_sync_httpx_clients_are_refused() -> None:
    with httpx.Client() as client, pytest.raises(ModelRequestBlocked):
        client.get("https://example.com/")


def test_loopback_stays_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


@pytest.mark.allow_model_requests
def test_the_opt_in_lifts_the_guard() -> None:
    assert socket.socket.connect.__qualname__ == "socket.connect"
