"""Shared test setup: offline by default, and no test reaches a model over the network.

Every test runs behind a guard that refuses TCP connections to hosts other than this machine
(checked in httpx's transports, which the OpenAI-compatible backend uses, and under them in the
socket layer, which catches litellm and any other client). Tests talk to `ScriptedLLM`,
`TestLLM`, `ReplayLLM`, litellm's `mock_response`, or a stub server on 127.0.0.1. A test that
really must call a model opts in with `@pytest.mark.allow_model_requests`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

# Offline, always: no test may reach the internet.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

OPT_IN = "allow_model_requests"


class ModelRequestBlocked(RuntimeError):
    """A test tried to reach a host other than this machine without opting in."""


def _is_local(host: object) -> bool:
    if not isinstance(host, str):
        return True  # not an internet address (a Unix socket path, ...)
    if host.lower() in ("localhost", "localhost.localdomain", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost


def _blocked(host: object, port: object) -> ModelRequestBlocked:
    return ModelRequestBlocked(
        f"A test tried to connect to {host}:{port}; tests never reach a model over the network. "
        "Use ScriptedLLM, TestLLM or ReplayLLM (or a stub server on 127.0.0.1), or mark the test "
        f"@pytest.mark.{OPT_IN} if it must make real requests."
    )


def _guard_socket(connect: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(self: socket.socket, address: Any, *args: Any) -> Any:
        if (
            self.family in (socket.AF_INET, socket.AF_INET6)
            and self.type == socket.SOCK_STREAM
            and isinstance(address, tuple)
            and not _is_local(address[0])
        ):
            raise _blocked(address[0], address[1])
        return connect(self, address, *args)

    return guarded


def _guard_transport(handle: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(self: Any, request: httpx.Request) -> Any:
        if not _is_local(request.url.host):
            port = request.url.port or (443 if request.url.scheme == "https" else 80)
            raise _blocked(request.url.host, port)
        return handle(self, request)

    return guarded


@pytest.fixture(autouse=True)
def no_model_requests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse connections to other hosts unless the test is marked `allow_model_requests`."""
    if request.node.get_closest_marker(OPT_IN) is not None:
        return
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, _guard_socket(getattr(socket.socket, name)))
    monkeypatch.setattr(
        httpx.AsyncHTTPTransport,
        "handle_async_request",
        _guard_transport(httpx.AsyncHTTPTransport.handle_async_request),
    )
    monkeypatch.setattr(
        httpx.HTTPTransport, "handle_request", _guard_transport(httpx.HTTPTransport.handle_request)
    )
