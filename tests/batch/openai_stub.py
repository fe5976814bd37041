"""A real OpenAI-compatible HTTP server for tests: a bare ASGI app under uvicorn on 127.0.0.1.

The model name picks the behaviour:

- `echo` (any other name too): answers "echo: <last message>"; streams it word by word;
  logprobs per word when asked; tool calls when the last message asks `call <tool>`.
- `flaky-N-<tag>`: the first N requests with this name get 429 (Retry-After: 0), then echo.
- `down-<tag>`: always 503.
- `long`: 400 "maximum context length" (a prompt that does not fit).
- `secure`: 401 unless the bearer token is `sk-test`.
- `garbage`: 200 with an HTML page.
- `drop`: streams one word, then breaks the connection.
- `slow-MS`: echo after MS milliseconds.
- `mixed`: like echo, but `call <tool>` gets the answer hosted models send most: text
  ("Let me check.") and two calls of the tool (a=1 and a=2) in one answer, streamed as
  interleaved content and tool-call deltas.

A message given as content parts reads as its text parts (images are not looked at).

Every request is kept in `Stub.requests` (headers and JSON body) for assertions.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


class Stub:
    """The ASGI app and what it has seen."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        if scope["path"] != "/v1/chat/completions":
            await self._send(send, 404, {"error": {"message": f"no route {scope['path']}"}})
            return
        request = json.loads(body)
        query = scope["query_string"].decode()
        self.requests.append({"headers": headers, "body": request, "query": query})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._answer(request, headers, send)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: dict[str, Any], headers: dict[str, str], send: Any) -> None:
        model: str = request["model"]
        self.counts[model] = self.counts.get(model, 0) + 1
        if model.startswith("flaky-"):
            failures = int(model.split("-")[1])
            if self.counts[model] <= failures:
                error = {"error": {"message": "rate limited, slow down"}}
                await self._send(send, 429, error, {"retry-after": "0"})
                return
        if model.startswith("down-"):
            await self._send(send, 503, {"error": {"message": "overloaded"}})
            return
        if model == "long":
            message = "This model's maximum context length is 16 tokens; the prompt has 40."
            await self._send(send, 400, {"error": {"message": message}})
            return
        if model == "secure" and headers.get("authorization") != "Bearer sk-test":
            await self._send(send, 401, {"error": {"message": "invalid api key"}})
            return
        if model == "garbage":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"<html>hello</html>"})
            return
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.split("-")[1]) / 1000)
        last = request["messages"][-1]
        text = _text(last.get("content"))
        words = f"echo: {text}".split()
        tool = None
        if text.startswith("call ") and request.get("tools"):
            tool = text.split()[1]
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in request["messages"])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words)}
        logprobs = (
            {"content": [{"token": w, "logprob": -0.5, "bytes": None} for w in words]}
            if request.get("logprobs")
            else None
        )
        if request.get("stream"):
            await self._stream(send, model, words, tool, usage, logprobs, request)
            return
        message: dict[str, Any] = {"role": "assistant", "content": " ".join(words)}
        if tool and model == "mixed":
            message = {"role": "assistant", "content": MIXED_TEXT, "tool_calls": mixed_calls(tool)}
        elif tool:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": tool, "arguments": '{"a": 2, "b": 3}'},
                    }
                ],
            }
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
        if logprobs:
            choice["logprobs"] = logprobs
        await self._send(send, 200, {"id": "x", "choices": [choice], "usage": usage})

    async def _stream(
        self,
        send: Any,
        model: str,
        words: list[str],
        tool: str | None,
        usage: dict[str, int],
        logprobs: dict[str, Any] | None,
        request: dict[str, Any],
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )

        async def event(data: Any) -> None:
            payload = data if isinstance(data, str) else json.dumps(data)
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {payload}\n\n".encode(),
                    "more_body": True,
                }
            )

        await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
        if tool and model == "mixed":
            first, second = MIXED_TEXT.split(" ", 1)
            await event({"choices": [{"index": 0, "delta": {"content": first}}]})
            for index, call in enumerate(mixed_calls(tool)):
                piece = {"index": index, "id": call["id"], "function": call["function"]}
                await event({"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]})
                if index == 0:
                    await event({"choices": [{"index": 0, "delta": {"content": " " + second}}]})
        elif tool:
            for piece in (
                {"id": "call_1", "function": {"name": tool, "arguments": '{"a": '}},
                {"function": {"arguments": '2, "b": 3}'}},
            ):
                await event(
                    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **piece}]}}]}
                )
        else:
            for i, word in enumerate(words):
                delta = {"content": word if i == 0 else " " + word}
                choice: dict[str, Any] = {"index": 0, "delta": delta}
                if logprobs:
                    choice["logprobs"] = {"content": [logprobs["content"][i]]}
                await event({"choices": [choice]})
                if model == "drop":
                    raise RuntimeError("connection dropped on purpose")
        if (request.get("stream_options") or {}).get("include_usage"):
            await event({"choices": [], "usage": usage})
        await event("[DONE]")
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _send(
        send: Any, status: int, data: Any, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(data).encode()
        raw = [(b"content-type", b"application/json")]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


MIXED_TEXT = "Let me check."


def _text(content: Any) -> str:
    """A message's text: its content, or the text parts of a list of content parts."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return str(content or "")


def mixed_calls(tool: str) -> list[dict[str, Any]]:
    """The two tool calls of a `mixed` answer."""
    return [
        {
            "id": f"call_{a}",
            "type": "function",
            "function": {"name": tool, "arguments": json.dumps({"a": a, "b": 10})},
        }
        for a in (1, 2)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve() -> Iterator[Stub]:
    """Run the stub in a thread on a free port of 127.0.0.1; `stub.base_url` is its /v1 root."""
    stub = Stub()
    port = free_port()
    config = uvicorn.Config(
        stub, host="127.0.0.1", port=port, log_level="critical", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the OpenAI stub server did not start")
        time.sleep(0.01)
    stub.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield stub
    finally:
        server.should_exit = True
        thread.join(timeout=10)
