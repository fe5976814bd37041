"""`OpenAICompatLLM`: a lean client for OpenAI-compatible servers (vLLM, SGLang, llama.cpp, Ollama).

It posts straight to `<base_url>/chat/completions` with httpx, through one `AsyncClient` per
event loop whose connection pool is sized for many concurrent sessions, and does little else:
a call costs about a millisecond of CPU, where litellm spends about ten. Use it for
throughput-bound work (evaluations, data generation, RL rollouts) against a server you run;
`LiteLLM` stays the default for breadth (hosted providers, pricing).

Chat, tools, structured output, streaming (server-sent events), logprobs when the server
returns them, and usage. Failures become `LLMError`s (`ContextWindowExceeded` when the prompt
is too long); rate limits, timeouts, dropped connections and 5xx answers are retried through the
shared `RequestGate` (`tapeagents.llms.limits`). The API key goes only into the request headers:
it is never part of `parameters`, the call records or the repr.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import httpx

from tapeagents.errors import ContextWindowExceeded, LLMError, UsageError
from tapeagents.llms.base import (
    LLM,
    LLMOutput,
    Prompt,
    TextDelta,
    TokenLogprob,
    ToolCallRequest,
    Usage,
)
from tapeagents.llms.limits import RateLimit, RequestGate, RetryPolicy

__all__ = ["OpenAICompatLLM"]

_RESERVED = frozenset({"model", "messages", "tools", "stream", "stream_options", "response_format"})
_SECRET_MARKERS = ("key", "secret", "password", "credential", "auth")
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
        **extra: Any,
    ) -> None:
        reserved = sorted(_RESERVED.intersection(extra))
        if reserved:
            raise UsageError(
                f"OpenAICompatLLM sets {', '.join(reserved)} itself; remove them from the "
                "arguments (the prompt carries tools and response_format; use LLM.stream to "
                "stream)."
            )
        secret = [name for name in extra if _is_secret(name)]
        if secret:
            raise UsageError(
                f"{', '.join(secret)} look like credentials, which would be recorded with every "
                "call; pass api_key= or headers= instead."
            )
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(
                f"base_url {base_url!r} is not an http(s) URL; give the server's API root, "
                "for example http://127.0.0.1:8000/v1."
            )
        if max_connections < 1:
            raise UsageError("OpenAICompatLLM needs max_connections >= 1.")
        params: dict[str, Any] = {}
        if temperature is not None:
            params["temperature"] = temperature
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        params.update(extra)
        super().__init__(model, **params)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_connections = max_connections
        self.prices = prices
        self._headers = {"Content-Type": "application/json", **dict(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._url = f"{self.base_url}/chat/completions"
        self.gate = RequestGate(
            retry=RetryPolicy(max_retries=max_retries, backoff=backoff),
            rate_limit=rate_limit,
            is_transient=_is_transient,
            failure=self._failure,
        )
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._closers: dict[asyncio.AbstractEventLoop, AsyncGenerator[None]] = {}

    # --------------------------------------------------------------------- transport

    async def _client(self) -> httpx.AsyncClient:
        """The client of the running event loop (an httpx client cannot move between loops)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is not None:
            return client
        for old in [old for old in self._clients if old.is_closed()]:
            del self._clients[old]
            self._closers.pop(old, None)
        client = httpx.AsyncClient(
            headers=self._headers,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            ),
            trust_env=False,  # a local server: no proxies from the environment
        )
        self._clients[loop] = client
        # The loop finalizes suspended async generators before it closes (asyncio.run does),
        # so this one closes the connections even if nobody calls aclose().
        closer = _close_at_loop_end(client)
        await anext(closer)
        self._closers[loop] = closer
        return client

    async def aclose(self) -> None:
        """Close the connections of the running event loop (batch runs call it at the end)."""
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        closer = self._closers.pop(loop, None)
        if closer is not None:
            await closer.aclose()
        elif client is not None:
            await client.aclose()

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
        response = await (await self._client()).post(self._url, content=content)
        if response.status_code >= 400:
            raise _HTTPFailure(response.status_code, response.text, response.headers)
        try:
            data = json.loads(response.content)
            choice = data["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise LLMError(
                f"{self._url} answered with something that is not a chat completion "
                f"({type(error).__name__}: {error}): {response.text[:300]!r}. Check that "
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
        texts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        logprobs: list[TokenLogprob] = []
        usage: Any = None
        client = await self._client()
        async with client.stream("POST", self._url, content=content) as response:
            if response.status_code >= 400:
                await response.aread()
                raise _HTTPFailure(response.status_code, response.text, response.headers)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # comments, event names, keep-alives
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise LLMError(
                        f"{self._url} sent an event that is not JSON: {data[:300]!r}."
                    ) from None
                if "error" in chunk:
                    raise _HTTPFailure(
                        int(chunk.get("code") or 500), json.dumps(chunk), response.headers
                    )
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
        where = f"{self.model!r} at {self.base_url}"
        if isinstance(error, _HTTPFailure):
            message = _message_of(error.text)
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
                f"Cannot reach {where}{after}: {type(error).__name__}: {error}. Check that the "
                "server is running and listening there (vllm serve, llama-server, ollama serve)."
            )
        return LLMError(f"Request to {where} failed{after}: {type(error).__name__}: {error}")

    def __repr__(self) -> str:
        return f"OpenAICompatLLM({self.model!r}, base_url={self.base_url!r})"


async def _close_at_loop_end(client: httpx.AsyncClient) -> AsyncGenerator[None]:
    try:
        yield
    finally:
        await client.aclose()


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return (
        any(m in lowered for m in _SECRET_MARKERS)
        or lowered == "token"
        or lowered.endswith("_token")
    )


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
