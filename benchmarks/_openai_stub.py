"""A minimal OpenAI-compatible chat server for `batch.py`: every request is answered after a delay.

    python benchmarks/_openai_stub.py --port 8123 --delay 0.1

A bare ASGI app under uvicorn (asyncio), so that the server is not the bottleneck: it reads the
request, sleeps `--delay` seconds without blocking, and answers with a fixed completion and its
usage, as one JSON body or, when the request asks to stream, as server-sent events (role,
content, finish, usage, `[DONE]`). It parses nothing but the `stream` flag, so its CPU cost per
request is mostly uvicorn's.
It counts requests and prints the count when stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

ANSWER = "The quick brown fox jumps over the lazy dog."
BODY = json.dumps(
    {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
    }
).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


STREAM = (
    _event({"id": "chatcmpl-stub", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    + _event({"id": "chatcmpl-stub", "choices": [{"index": 0, "delta": {"content": ANSWER}}]})
    + _event(
        {
            "id": "chatcmpl-stub",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
    )
    + _event(
        {
            "id": "chatcmpl-stub",
            "choices": [],
            "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
        }
    )
    + b"data: [DONE]\n\n"
)
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"content-length", str(len(STREAM)).encode()),
]


class Stub:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.requests += 1
        stream = b'"stream": true' in body or b'"stream":true' in body
        await asyncio.sleep(self.delay)
        headers, payload = (STREAM_HEADERS, STREAM) if stream else (HEADERS, BODY)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.1)
    args = parser.parse_args()
    app = Stub(args.delay)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        backlog=4096,
        timeout_keep_alive=60,
    )
    print(f"requests: {app.requests}", flush=True)


if __name__ == "__main__":
    main()
