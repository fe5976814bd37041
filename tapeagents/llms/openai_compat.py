"""`OpenAICompatLLM`: a lean client for OpenAI-compatible servers (vLLM, SGLang, llama.cpp, Ollama).

It posts straight to `<base_url>/chat/completions` through httpx's transport layer, with
connection pools sized for many concurrent sessions, and does little else, so a call costs a
fraction of litellm's CPU (figures in docs/benchmarks.md). Two choices come from measurement:
requests go to `httpx.AsyncHTTPTransport` directly, skipping the `httpx.AsyncClient` layer; and
connections are spread over several small pools, because httpcore scans its whole pool on every
request. Use it for throughput-bound work (evaluations, data generation, RL rollouts) against a
server you run; `LiteLLM` stays the default for breadth (hosted providers, pricing).

Chat, tools, structured output, streaming (server-sent events), logprobs when the server
returns them, and usage. Failures become `LLMError`s (`ContextWindowExceeded` when the prompt
is too long); rate limits, timeouts, dropped connections and 5xx answers are retried through the
shared `RequestGate` (`tapeagents.llms.limits`). The API key goes only into the request headers:
it is never part of `parameters`, the call records or the repr.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpx

from tapeagents.errors import ContextWindowExceeded, LLMError, UsageError
from tapeagents.llms.base import (
    LLM,
    LLMOutput,
    Prompt,
    TextDelta,
    TokenLogprob,
    ToolCallRequest,
    TopLogprob,
    Usage,
)
from tapeagents.llms.limits import RateLimit, RequestGate, RetryPolicy
from tapeagents.secrets import is_secret_name, redact_url, scrub, url_secrets

__all__ = ["OpenAICompatLLM"]

_RESERVED = frozenset(
    {"model", "messages", "tools", "tool_choice", "stream", "stream_options", "response_format"}
)
_CONNECTIONS_PER_POOL = 2
_TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_CONTEXT_MARKERS = (
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "too many tokens",
    "exceeds the context",
    "prompt is too long",
    "longer than the model",
)


class _HTTPFailure(Exception):
    """A non-2xx answer (or an error event in a stream): its status, text and headers."""

    def __init__(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}: {text[:500]}")
        self.status = status
        self.text = text
        self.response = httpx.Response(status, headers=dict(headers or {}))  # for Retry-After


def _without_trailing_slash(base_url: str) -> str:
    """The URL with the trailing slashes of its path removed (its query left as it is)."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/")))


def _endpoint(base_url: str) -> str:
    """The chat completions endpoint under `base_url`: `/chat/completions` joined to its path,
    its query (`?api-version=...`, which some gateways require) kept after it."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/") + "/chat/completions"
    return urlunsplit(parts._replace(path=path, fragment=""))


def _message_of(body: str) -> str:
    """The error message of an OpenAI-style error body, else the body itself."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    return body.strip()


def _logprobs(raw: Any) -> list[TokenLogprob]:
    items = raw.get("content") if isinstance(raw, dict) else None
    return [
        TokenLogprob(
            token=item.get("token", ""),
            logprob=float(item.get("logprob", 0.0)),
            token_id=item.get("token_id"),
            top_logprobs=[
                TopLogprob(
                    token=top.get("token", ""),
                    logprob=float(top.get("logprob", 0.0)),
                    token_id=top.get("token_id"),
                )
                for top in item["top_logprobs"]
            ]
            if item.get("top_logprobs")
            else None,
        )
        for item in items or []
    ]


class OpenAICompatLLM(LLM):
    """A chat model served behind an OpenAI-compatible `/v1/chat/completions` endpoint.

    Args:
        model: The model name the server knows (`"Qwen/Qwen2.5-7B-Instruct"`, `"llama3.2"`).
        base_url: The server's API root, ending in `/v1` (`"http://127.0.0.1:8000/v1"`).
        api_key: Sent as a bearer token; never recorded.
        temperature: Sampling temperature (recorded).
        max_tokens: Longest answer (recorded).
        max_retries: Retries of a transient failure, with exponential backoff from `backoff` s.
        timeout: Seconds to wait for an answer.
        rate_limit: Requests and tokens per minute for this model, shared by every session.
        max_connections: Size of the connection pool (keep it at least the concurrency).
        prices: US dollars per million prompt and completion tokens, to report a cost.
        headers: More HTTP headers (not recorded).
        context_window: The most tokens one request may hold (prompt and answer), as the
            server was started with (vLLM's `--max-model-len`, llama.cpp's `--ctx-size`); the
            server does not say, so without it no context policy applies. Prompts are counted
            with `estimate_prompt_tokens` (an overestimate). Not recorded.
        vision: Whether the served model reads images (a vision-language model): then prompts
            carry images as `image_url` content parts, else a note in their place. The server
            does not say, so the default is False. Not recorded.
        **extra: Other request fields (`top_p`, `seed`, `stop`, `logprobs`, `top_logprobs`,
            `tool_choice`, server-specific ones such as vLLM's `top_k`); recorded.

    Example:
        >>> llm = OpenAICompatLLM("Qwen/Qwen2.5-7B-Instruct", base_url="http://127.0.0.1:8000/v1")
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        max_retries: int = 4,
        backoff: float = 0.5,
        timeout: float = 120.0,
        rate_limit: RateLimit | None = None,
        max_connections: int = 512,
        prices: tuple[float, float] | None = None,
        headers: Mapping[str, str] | None = None,
        context_window: int | None = None,
        vision: bool = False,
        **extra: Any,
    ) -> None:
        reserved = sorted(_RESERVED.intersection(extra))
        if reserved:
            raise UsageError(
                f"OpenAICompatLLM sets {', '.join(reserved)} itself; remove them from the "
                "arguments (the prompt carries tools and response_format; use LLM.stream to "
                "stream)."
            )
        secret = [name for name in extra if is_secret_name(name)]
        if secret:
            raise UsageError(
                f"{', '.join(secret)} look like credentials, which would be recorded with every "
                "call; pass api_key= or headers= instead."
            )
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(
                f"base_url {redact_url(base_url)!r} is not an http(s) URL; give the server's "
                "API root, for example http://127.0.0.1:8000/v1."
            )
        if max_connections < 1:
            raise UsageError("OpenAICompatLLM needs max_connections >= 1.")
        params: dict[str, Any] = {}
        if temperature is not None:
            params["temperature"] = temperature
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        params.update(extra)
        super().__init__(model, context_window=context_window, **params)
        self.base_url = _without_trailing_slash(base_url)
        self.timeout = timeout
        self.max_connections = max_connections
        self.prices = prices
        self.vision = vision
        self._headers = httpx.Headers(  # its repr hides the authorization header
            {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        )
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._url = _endpoint(self.base_url)
        self._shown_url = redact_url(self._url)
        """The endpoint as shown in errors: without a password in it."""
        self._parsed_url = httpx.URL(self._url)
        self._timeouts = httpx.Timeout(timeout, connect=min(timeout, 10.0)).as_dict()
        self._ssl: ssl.SSLContext | None = None
        self.gate = RequestGate(
            retry=RetryPolicy(max_retries=max_retries, backoff=backoff),
            rate_limit=rate_limit,
            is_transient=_is_transient,
            failure=self._failure,
        )
        self._clients: dict[asyncio.AbstractEventLoop, _Clients] = {}
        self._closers: dict[asyncio.AbstractEventLoop, AsyncGenerator[None]] = {}

    @property
    def supports_images(self) -> bool:
        """Whether prompts show the model images (`vision=`)."""
        return self.vision

    # --------------------------------------------------------------------- transport

    def _new_transport(self) -> httpx.AsyncHTTPTransport:
        verify: ssl.SSLContext | bool = False  # plain http: no certificates to load
        if self.base_url.startswith("https://"):
            if self._ssl is None:
                self._ssl = ssl.create_default_context(cafile=certifi.where())  # once, not per pool
            verify = self._ssl
        return httpx.AsyncHTTPTransport(
            verify=verify,
            limits=httpx.Limits(
                max_connections=_CONNECTIONS_PER_POOL,
                max_keepalive_connections=_CONNECTIONS_PER_POOL,
            ),
        )

    def _request(self, content: bytes) -> httpx.Request:
        return httpx.Request(
            "POST",
            self._parsed_url,
            headers=self._headers,
            content=content,
            extensions={"timeout": self._timeouts},
        )

    async def _clients_of_loop(self) -> _Clients:
        """The clients of the running event loop (an httpx client cannot move between loops)."""
        loop = asyncio.get_running_loop()
        clients = self._clients.get(loop)
        if clients is not None:
            return clients
        for old in [old for old in self._clients if old.is_closed()]:
            del self._clients[old]
            self._closers.pop(old, None)
        clients = self._clients[loop] = _Clients(self._new_transport, self.max_connections)
        # The loop finalizes suspended async generators before it closes (asyncio.run does),
        # so this one closes the connections even if nobody calls aclose().
        closer = _close_at_loop_end(clients)
        await anext(closer)
        self._closers[loop] = closer
        return clients

    async def aclose(self) -> None:
        """Close the connections of the running event loop (batch runs call it at the end)."""
        loop = asyncio.get_running_loop()
        clients = self._clients.pop(loop, None)
        closer = self._closers.pop(loop, None)
        if closer is not None:
            await closer.aclose()
        elif clients is not None:
            await clients.aclose()

    async def __aenter__(self) -> OpenAICompatLLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __getstate__(self) -> dict[str, Any]:
        # Sent to another process (Ray): connections stay behind.
        state = self.__dict__.copy()
        state["_clients"] = state["_closers"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._clients = {}
        self._closers = {}

    # --------------------------------------------------------------------- requests

    def _body(self, prompt: Prompt, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": prompt.messages, **self.parameters}
        if prompt.tools is not None:
            body["tools"] = prompt.tools
        if prompt.tool_choice is not None:
            body["tool_choice"] = prompt.tool_choice
        if prompt.response_format:
            body["response_format"] = _response_format(prompt.response_format)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def generate(self, prompt: Prompt) -> LLMOutput:
        content = json.dumps(self._body(prompt, stream=False), ensure_ascii=False).encode()
        return await self.gate.send(
            lambda: self._post(content),
            tokens=self.gate.tokens_for(prompt.messages, prompt.tools),
            used=lambda output: output.usage.total_tokens,
        )

    async def _post(self, content: bytes) -> LLMOutput:
        clients = await self._clients_of_loop()
        slot = clients.take()
        try:
            response = await clients.all[slot].handle_async_request(self._request(content))
            try:
                await response.aread()
            finally:
                await response.aclose()
        finally:
            clients.give_back(slot)
        if response.status_code >= 400:
            raise _HTTPFailure(response.status_code, response.text, response.headers)
        return self._completion(response)

    def _completion(self, response: httpx.Response) -> LLMOutput:
        """The output in a (non-streamed) chat completion."""
        try:
            data = json.loads(response.content)
            choice = data["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise LLMError(
                f"{self._shown_url} answered with something that is not a chat completion "
                f"({type(error).__name__}: {error}): "
                f"{scrub(response.text[:300], secrets=self._secret_values())!r}. Check that "
                "base_url points at an OpenAI-compatible API root (ending in /v1)."
            ) from None
        calls = [
            ToolCallRequest(
                id=call.get("id") or "",
                name=(call.get("function") or {}).get("name") or "",
                arguments=(call.get("function") or {}).get("arguments") or "",
            )
            for call in message.get("tool_calls") or []
        ]
        raw_logprobs = choice.get("logprobs")
        return self._output(
            message.get("content"),
            calls,
            data.get("usage"),
            _logprobs(raw_logprobs) if raw_logprobs else None,
        )

    async def stream(self, prompt: Prompt) -> AsyncIterator[TextDelta | LLMOutput]:
        """Yield text as the server sends it, then the complete output.

        A transient failure is retried only before the first text was yielded.
        """
        content = json.dumps(self._body(prompt, stream=True), ensure_ascii=False).encode()
        async for item in self.gate.stream(
            lambda: self._stream_once(content),
            tokens=self.gate.tokens_for(prompt.messages, prompt.tools),
            is_partial=lambda item: isinstance(item, TextDelta),
            used=lambda item: item.usage.total_tokens if isinstance(item, LLMOutput) else None,
        ):
            yield item

    async def _stream_once(self, content: bytes) -> AsyncIterator[TextDelta | LLMOutput]:
        """One streamed request: server-sent events become text deltas, then the output."""
        clients = await self._clients_of_loop()
        slot = clients.take()
        try:
            response = await clients.all[slot].handle_async_request(self._request(content))
            try:
                if response.status_code >= 400:
                    await response.aread()
                    raise _HTTPFailure(response.status_code, response.text, response.headers)
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    await response.aread()  # a server that does not stream answers at once
                    output = self._completion(response)
                    if output.content:
                        yield TextDelta(text=output.content)
                    yield output
                    return
                async for item in self._events(response):
                    yield item
            finally:
                await response.aclose()
        finally:
            clients.give_back(slot)

    async def _events(self, response: httpx.Response) -> AsyncIterator[TextDelta | LLMOutput]:
        texts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        logprobs: list[TokenLogprob] = []
        usage: Any = None
        async for chunk in self._chunks(response):
            if "error" in chunk:
                code = chunk.get("code")
                status = code if isinstance(code, int) else 500
                raise _HTTPFailure(status, json.dumps(chunk), response.headers)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if choice.get("logprobs"):
                    logprobs.extend(_logprobs(choice["logprobs"]))
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if text:
                    texts.append(text)
                    yield TextDelta(text=text)
                for position, call in enumerate(delta.get("tool_calls") or ()):
                    index = call.get("index")
                    acc = calls.setdefault(
                        position if index is None else index,
                        {"id": "", "name": "", "arguments": ""},
                    )
                    function = call.get("function") or {}
                    acc["id"] = call.get("id") or acc["id"]
                    acc["name"] = function.get("name") or acc["name"]
                    acc["arguments"] += function.get("arguments") or ""
        yield self._output(
            "".join(texts) if texts or not calls else None,
            [ToolCallRequest(**calls[i]) for i in sorted(calls)],
            usage,
            logprobs or None,
        )

    async def _chunks(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        """The JSON payloads of the server-sent events (`data: {...}` lines), read to the end
        so that the connection can be reused."""
        buffer = b""
        async for piece in response.aiter_bytes():
            buffer += piece
            if b"\n" not in piece:
                continue
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    data = line[5:].strip()
                    if data != b"[DONE]":
                        yield self._event(data)
        if buffer.startswith(b"data:") and buffer[5:].strip() != b"[DONE]":
            yield self._event(buffer[5:].strip())

    def _event(self, data: bytes) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            shown = scrub(data[:300].decode(errors="replace"), secrets=self._secret_values())
            raise LLMError(f"{self._shown_url} sent an event that is not a JSON object: {shown!r}.")
        return chunk

    def _output(
        self,
        content: str | None,
        calls: list[ToolCallRequest],
        usage: Any,
        logprobs: list[TokenLogprob] | None,
    ) -> LLMOutput:
        counts = Usage(
            prompt_tokens=(usage or {}).get("prompt_tokens") or 0,
            completion_tokens=(usage or {}).get("completion_tokens") or 0,
        )
        cost = None
        if self.prices is not None and usage:
            cost = (
                counts.prompt_tokens * self.prices[0] + counts.completion_tokens * self.prices[1]
            ) / 1e6
        return LLMOutput(
            content=content, tool_calls=calls, usage=counts, logprobs=logprobs, cost=cost
        )

    # --------------------------------------------------------------------- errors

    def _failure(self, error: Exception, retries: int) -> Exception:
        """The `LLMError` for a request that failed for good, with what to check."""
        if isinstance(error, LLMError):
            return error
        after = f" after {retries} retries" if retries else ""
        where = f"{self.model!r} at {redact_url(self.base_url)}"
        secrets = self._secret_values()
        detail = scrub(str(error), secrets=secrets)
        if isinstance(error, _HTTPFailure):
            message = scrub(_message_of(error.text), secrets=secrets)
            if error.status in (400, 413, 422) and any(
                marker in message.lower() for marker in _CONTEXT_MARKERS
            ):
                return ContextWindowExceeded(
                    f"The prompt does not fit in the context window of {where}: {message}. "
                    "Shorten the prompt (fewer or shorter messages, fewer tools), lower "
                    "max_tokens, or serve the model with a longer context."
                )
            if error.status in (401, 403):
                hint = "Check the API key (api_key=) and that it may use this model."
            elif error.status == 404:
                hint = (
                    "Check the model name (GET /v1/models lists what the server serves) and "
                    "that base_url ends with /v1."
                )
            elif error.status in _TRANSIENT_STATUS:
                hint = "The server kept failing; check its logs and load, or raise max_retries."
            else:
                hint = "Check the request: model parameters, message format and tools."
            return LLMError(
                f"Request to {where} failed{after}: HTTP {error.status}: {message[:500]}. {hint}"
            )
        if isinstance(error, httpx.TimeoutException):
            return LLMError(
                f"Request to {where} timed out{after} ({type(error).__name__}). The server may "
                "be overloaded; raise timeout= or lower the concurrency."
            )
        if isinstance(error, httpx.HTTPError):
            return LLMError(
                f"Cannot reach {where}{after}: {type(error).__name__}: {detail}. Check that the "
                "server is running and listening there (vllm serve, llama-server, ollama serve)."
            )
        return LLMError(f"Request to {where} failed{after}: {type(error).__name__}: {detail}")

    def _secret_values(self) -> list[str]:
        """What error messages must not show: the secret headers' values and their tokens (the
        API key of `Bearer <key>`), the password and secret query values of `base_url`. Worked
        out on failure, so no copy of them sits in the object."""
        values = [value for name, value in self._headers.items() if is_secret_name(name)]
        return values + [value.partition(" ")[2] for value in values] + url_secrets(self.base_url)

    def __repr__(self) -> str:
        return f"OpenAICompatLLM({self.model!r}, base_url={redact_url(self.base_url)!r})"


class _Clients:
    """The httpx transports (connection pools) of one event loop, each small.

    httpcore scans its whole pool, quadratically, whenever a request starts or ends: with 64
    connections in one pool that costs several milliseconds of CPU per request, more than the
    request itself. Small pools keep the scan short; a request goes to the first pool with a
    free connection.
    """

    def __init__(self, make: Callable[[], httpx.AsyncHTTPTransport], max_connections: int) -> None:
        self.make = make
        self.limit = max(1, -(-max_connections // _CONNECTIONS_PER_POOL))
        self.all: list[httpx.AsyncHTTPTransport] = []
        self.busy: list[int] = []

    def take(self) -> int:
        """Index of the client to send the next request with."""
        busy = self.busy
        slot = next((i for i, n in enumerate(busy) if n < _CONNECTIONS_PER_POOL), -1)
        if slot < 0:
            if len(self.all) < self.limit:
                self.all.append(self.make())
                busy.append(0)
                slot = len(busy) - 1
            else:
                slot = min(range(len(busy)), key=busy.__getitem__)
        busy[slot] += 1
        return slot

    def give_back(self, slot: int) -> None:
        self.busy[slot] -= 1

    async def aclose(self) -> None:
        for client in self.all:
            await client.aclose()


async def _close_at_loop_end(clients: _Clients) -> AsyncGenerator[None]:
    try:
        yield
    finally:
        await clients.aclose()


def _is_transient(error: Exception) -> bool:
    if isinstance(error, _HTTPFailure):
        return error.status in _TRANSIENT_STATUS
    return isinstance(
        error, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
    )


def _response_format(value: dict[str, Any]) -> dict[str, Any]:
    """OpenAI `response_format` dicts pass through; a bare JSON schema is wrapped into one."""
    if value.get("type") in ("json_schema", "json_object", "text"):
        return value
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
