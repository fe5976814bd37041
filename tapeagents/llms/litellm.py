"""`LiteLLM`: any hosted or self-hosted chat model that litellm can reach.

litellm is an optional dependency and slow to import (seconds), so it is imported on the
first request, once, and never by `import tapeagents`. Retries are done here, not by litellm,
so that their policy (which errors, how long to wait) is ours and visible: every request goes
through a `RequestGate` (`tapeagents.llms.limits`), shared with the other backends, which also
applies the model's `RateLimit`.

Testing: keyword arguments whose names start with `mock_` (litellm's `mock_response`,
`mock_tool_calls`, ...) are passed to litellm on every request but are not recorded in
`parameters`, so a mocked backend produces the same request ids as the real one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from types import ModuleType
from typing import Any

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
    image_tokens,
)
from tapeagents.llms.limits import RateLimit, RequestGate, RetryPolicy
from tapeagents.secrets import is_secret_name, redact_url, scrub, url_secrets

__all__ = ["LiteLLM"]

_litellm: ModuleType | None = None
_import_lock = threading.Lock()

_TRANSIENT_NAMES = (
    "RateLimitError",
    "APIConnectionError",
    "Timeout",
    "ServiceUnavailableError",
    "InternalServerError",
    "BadGatewayError",
)
"""litellm exceptions worth retrying; anything else (auth, bad request, ...) fails at once."""

_LOGGING_WAIT = 5.0
"""Longest wait, in seconds, for litellm's background logging of a request (`_settle_logging`)."""

_RESERVED = frozenset({"model", "messages", "tools", "stream", "stream_options", "num_retries"})
_MAX_DELAY = 30.0


def _import_litellm() -> ModuleType:
    """Import litellm once (thread safe), quietly and without fetching its price list online."""
    global _litellm
    if _litellm is not None:
        return _litellm
    with _import_lock:
        if _litellm is None:
            # Use the cost map bundled with litellm instead of downloading it at import.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            try:
                import litellm
            except ImportError as e:
                raise UsageError(
                    f"LiteLLM needs the litellm package ({e}). "
                    "Install it with: pip install 'tapeagents[litellm]'"
                ) from e
            litellm.suppress_debug_info = True
            # pydantic warns on every request about litellm's `ReadOnly` TypedDicts: noise.
            warnings.filterwarnings(
                "ignore", message=r".*using the `ReadOnly` qualifier", category=UserWarning
            )
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
                logging.getLogger(name).setLevel(logging.WARNING)
            _litellm = litellm
    return _litellm


async def _settle_logging() -> None:
    """Let litellm finish its background logging of the requests made so far, in this loop.

    litellm hands a non-streamed request's success logging (its callbacks) to a worker bound to
    the running event loop. `run_sync` runs each session on a new loop, so logging still queued
    when a loop ends is carried into the next one with a warning ("LoggingWorker: event loop
    changed; carried 1 pending ..."), and the last loop's only runs at exit. Waiting for it here
    keeps every callback in the loop of its request. The wait is bounded: logging slower than
    `_LOGGING_WAIT` is left to litellm, whose own warning then reports it. Versions of litellm
    without these parts log differently, and nothing is waited for.
    """
    try:
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER as worker
    except ImportError:
        return
    try:  # the tasks that put each request's logging on the worker's queue
        from litellm.responses.streaming_iterator import drain_logging_tasks
    except ImportError:
        await asyncio.sleep(0)  # older versions queue it at once; one turn lets others run
    else:
        await drain_logging_tasks(timeout=_LOGGING_WAIT)
    flush = getattr(worker, "flush", None)
    if flush is None:
        return
    try:
        await asyncio.wait_for(flush(), timeout=_LOGGING_WAIT)
    except TimeoutError:
        pass  # still queued: litellm carries it on and says so


class _Secret:
    """Holds a credential so that it never shows up in reprs, logs or parameters."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "'***'"


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute or key access: litellm hands back both objects and plain dicts."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _response_format(value: dict[str, Any]) -> dict[str, Any]:
    """Pass OpenAI `response_format` dicts through; wrap a bare JSON schema into one."""
    if value.get("type") in ("json_schema", "json_object", "text"):
        return value
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}


def _logprobs(raw: Any) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            token=_get(item, "token", ""),
            logprob=float(_get(item, "logprob", 0.0)),
            top_logprobs=[
                TopLogprob(token=_get(top, "token", ""), logprob=float(_get(top, "logprob", 0.0)))
                for top in _get(item, "top_logprobs")
            ]
            if _get(item, "top_logprobs")
            else None,
        )
        for item in (_get(raw, "content") or [])
    ]


def _usage(raw: Any) -> Usage:
    return Usage(
        prompt_tokens=_get(raw, "prompt_tokens") or 0,
        completion_tokens=_get(raw, "completion_tokens") or 0,
    )


class LiteLLM(LLM):
    """A chat model called through litellm (`"gpt-4o-mini"`, `"anthropic/..."`, `"ollama/..."`).

    `parameters` (recorded with every call and part of its id) holds what changes the answer:
    `temperature`, `max_tokens` and extra keyword arguments such as `top_p` or `logprobs`.
    Transport settings (`timeout`, retries, `api_base`) are not recorded; neither are
    credentials (`api_key`, or extra arguments that look like one) nor `mock_*` arguments.

    Transient failures (rate limits, timeouts, connection and 5xx errors) are retried
    `max_retries` times with exponential backoff starting at `backoff` seconds. A `rate_limit`
    (requests and tokens per minute) is shared by every session that uses this object.

    Images reach the model as image content parts when it reads them (`supports_images`):
    by default when litellm's bundled model map says the model supports vision (a model it
    does not know reads none); `vision=True` or `vision=False` says so for self-hosted and new
    models. Not recorded.

    Example:
        >>> llm = LiteLLM("gpt-4o-mini", temperature=0.0)
    """

    def __init__(
        self,
        model: str,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        max_retries: int = 4,
        backoff: float = 0.5,
        timeout: float | None = 60,
        api_base: str | None = None,
        api_key: str | None = None,
        rate_limit: RateLimit | None = None,
        vision: bool | None = None,
        **extra: Any,
    ) -> None:
        reserved = sorted(_RESERVED.intersection(extra))
        if reserved:
            raise UsageError(
                f"LiteLLM sets {', '.join(reserved)} itself; remove them from the arguments "
                "(use max_retries= for retries, and LLM.stream for streaming)."
            )
        if max_retries < 0 or backoff < 0:
            raise UsageError("LiteLLM needs max_retries >= 0 and backoff >= 0.")
        params: dict[str, Any] = {}
        if temperature is not None:
            params["temperature"] = temperature
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        self._hidden: dict[str, Any] = {}
        """Passed to litellm but not recorded: `mock_*` test arguments and credentials."""
        for name, value in extra.items():
            if name.startswith("mock_"):
                self._hidden[name] = value
            elif is_secret_name(name):
                self._hidden[name] = _Secret(value)
            else:
                params[name] = value
        super().__init__(model, **params)
        self.timeout = timeout
        self.api_base = api_base
        self.vision = vision
        """Whether the model reads images: None asks litellm's model map."""
        self._api_key = _Secret(api_key)
        self.gate = RequestGate(
            retry=RetryPolicy(max_retries=max_retries, backoff=backoff, max_delay=_MAX_DELAY),
            rate_limit=rate_limit,
            is_transient=self._transient,
            failure=self._failure,
        )

    @property
    def retries_total(self) -> int:
        """Retries made by this backend since it was created, over all requests."""
        return self.gate.retries

    def _kwargs(self, prompt: Prompt) -> dict[str, Any]:
        """Keyword arguments for `litellm.acompletion`."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": prompt.messages,
            **self.parameters,
            "num_retries": 0,  # we retry ourselves
            "timeout": self.timeout,
        }
        if prompt.tools is not None:
            kwargs["tools"] = prompt.tools
        if prompt.tool_choice is not None:
            kwargs["tool_choice"] = prompt.tool_choice
        if prompt.response_format:
            kwargs["response_format"] = _response_format(prompt.response_format)
        if self.api_base is not None:
            kwargs["api_base"] = self.api_base
        if self._api_key.value is not None:
            kwargs["api_key"] = self._api_key.value
        for name, value in self._hidden.items():
            kwargs[name] = value.value if isinstance(value, _Secret) else value
        return kwargs

    async def generate(self, prompt: Prompt) -> LLMOutput:
        litellm = _import_litellm()
        kwargs = self._kwargs(prompt)
        try:
            response = await self.gate.send(
                lambda: litellm.acompletion(**kwargs),
                tokens=self.gate.tokens_for(prompt.messages, prompt.tools),
                used=lambda response: _usage(_get(response, "usage")).total_tokens,
            )
        finally:
            await _settle_logging()
        return self._output(litellm, response)

    async def stream(self, prompt: Prompt) -> AsyncIterator[TextDelta | LLMOutput]:
        """Yield text as it arrives, then the complete output (tool calls and usage included).

        A transient failure is retried only before the first text was yielded.
        """
        litellm = _import_litellm()
        kwargs = self._kwargs(prompt)
        kwargs.update(stream=True, stream_options={"include_usage": True})
        async for item in self.gate.stream(
            lambda: self._stream_once(litellm, kwargs),
            tokens=self.gate.tokens_for(prompt.messages, prompt.tools),
            is_partial=lambda item: isinstance(item, TextDelta),
            used=lambda item: item.usage.total_tokens if isinstance(item, LLMOutput) else None,
        ):
            yield item

    async def _stream_once(
        self, litellm: ModuleType, kwargs: dict[str, Any]
    ) -> AsyncIterator[TextDelta | LLMOutput]:
        """One streamed request: text deltas, then the assembled output."""
        want_logprobs = bool(self.parameters.get("logprobs"))
        content: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        logprobs: list[TokenLogprob] = []
        usage: Any = None
        response = await litellm.acompletion(**kwargs)
        async for chunk in response:
            if _get(chunk, "usage") is not None:
                usage = _get(chunk, "usage")
            choices = _get(chunk, "choices") or []
            if not choices:
                continue
            choice = choices[0]
            if want_logprobs:
                logprobs.extend(_logprobs(_get(choice, "logprobs")))
            delta = _get(choice, "delta")
            text = _get(delta, "content")
            if text:
                content.append(text)
                yield TextDelta(text=text)
            for position, call in enumerate(_get(delta, "tool_calls") or []):
                index = _get(call, "index")
                acc = calls.setdefault(
                    position if index is None else index,
                    {"id": "", "name": "", "arguments": ""},
                )
                function = _get(call, "function")
                acc["id"] = _get(call, "id") or acc["id"]
                acc["name"] = _get(function, "name") or acc["name"]
                acc["arguments"] += _get(function, "arguments") or ""
        yield LLMOutput(
            content="".join(content) if content or not calls else None,
            tool_calls=[ToolCallRequest(**calls[i]) for i in sorted(calls)],
            usage=_usage(usage),
            logprobs=logprobs if want_logprobs and logprobs else None,
            cost=self._stream_cost(litellm, usage) if usage is not None else None,
        )

    def _transient(self, error: Exception) -> bool:
        return self._is_transient(_import_litellm(), error)

    def _failure(self, error: Exception, retries: int) -> LLMError:
        return self._error(_import_litellm(), error, retries)

    @staticmethod
    def _is_transient(litellm: ModuleType, error: Exception) -> bool:
        if isinstance(error, litellm.exceptions.ContextWindowExceededError):
            return False
        kinds = tuple(
            k for k in (getattr(litellm.exceptions, n, None) for n in _TRANSIENT_NAMES) if k
        )
        return isinstance(error, kinds)

    def _error(self, litellm: ModuleType, error: Exception, retries: int) -> LLMError:
        """The exception to raise for a failed request, with a hint on what to check."""
        exc = litellm.exceptions
        if isinstance(error, exc.ContextWindowExceededError):
            return ContextWindowExceeded(
                f"The prompt does not fit in the context window of {self.model!r}: "
                f"{self._scrub(str(error))}. "
                "Shorten the prompt (fewer or shorter messages, fewer tools) or use a model "
                "with a larger context window."
            )
        if isinstance(error, (exc.AuthenticationError, exc.PermissionDeniedError)):
            hint = (
                "Check the API key: pass api_key= or set the provider's environment variable "
                "(e.g. OPENAI_API_KEY), and that it may use this model."
            )
        elif isinstance(error, exc.NotFoundError):
            hint = (
                "Check the model name and its provider prefix (e.g. 'anthropic/...'), and api_base."
            )
        elif isinstance(error, exc.BadRequestError):
            hint = "Check the request: model parameters, message format, tools and response_format."
        elif self._is_transient(litellm, error):
            hint = (
                "The provider or network kept failing; check the provider's status, api_base "
                "and the network, or raise max_retries / timeout."
            )
        else:
            hint = "Check the model name, api_base and credentials."
        after = f" after {retries} retries" if retries else ""
        return LLMError(
            f"LiteLLM call to {self.model!r} failed{after}: {type(error).__name__}: "
            f"{self._scrub(str(error))}. {hint}"
        )

    def _scrub(self, text: str) -> str:
        """The text with this backend's credentials hidden: the API key, secret extra arguments
        (a header dict's values), the password and secret query values of `api_base`, and any
        URL password."""
        values: list[Any] = [self._api_key.value, *url_secrets(self.api_base)]
        values += [v.value for v in self._hidden.values() if isinstance(v, _Secret)]
        secrets = [  # a header dict (extra_headers=) holds its secrets in its values
            item
            for value in values
            for item in (value.values() if isinstance(value, Mapping) else [value])
            if isinstance(item, str)
        ]
        return scrub(text, secrets=secrets)

    def __repr__(self) -> str:
        if self.api_base is None:
            return f"LiteLLM({self.model!r})"
        return f"LiteLLM({self.model!r}, api_base={redact_url(self.api_base)!r})"

    def _output(self, litellm: ModuleType, response: Any) -> LLMOutput:
        """Convert a litellm `ModelResponse` into an `LLMOutput`."""
        choice = response.choices[0]
        message = _get(choice, "message")
        tool_calls = [
            ToolCallRequest(
                id=_get(call, "id") or "",
                name=_get(_get(call, "function"), "name") or "",
                arguments=_get(_get(call, "function"), "arguments") or "",
            )
            for call in (_get(message, "tool_calls") or [])
        ]
        logprobs = None
        if self.parameters.get("logprobs"):
            raw = _get(choice, "logprobs")
            if _get(raw, "content"):
                logprobs = _logprobs(raw)
        try:
            cost: float | None = float(litellm.completion_cost(completion_response=response))
        except Exception:  # models without a known price
            cost = None
        return LLMOutput(
            content=_get(message, "content"),
            tool_calls=tool_calls,
            usage=_usage(_get(response, "usage")),
            logprobs=logprobs,
            cost=cost,
        )

    def _stream_cost(self, litellm: ModuleType, usage: Any) -> float | None:
        try:
            prompt_cost, completion_cost = litellm.cost_per_token(
                model=self.model, usage_object=usage
            )
            return float(prompt_cost + completion_cost)
        except Exception:  # models without a known price
            return None

    @property
    def supports_images(self) -> bool:
        """Whether prompts show the model images: `vision=` when given, else what litellm's
        bundled model map says (`litellm.supports_vision`; False for a model it does not know)."""
        if self.vision is not None:
            return self.vision
        return _model_vision(self.model)

    # ------------------------------------------------------------ context window and counting

    @property
    def context_window(self) -> int | None:
        """The most prompt tokens the model accepts: `context_window=` when given (pass it for
        self-hosted or new models), else `max_input_tokens` from litellm's bundled model map;
        None for a model the map does not know (then no context policy applies)."""
        if self._context_window is not None:
            return self._context_window
        return _model_window(self.model)

    def count_tokens(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        """The request's tokens by litellm's tokenizer for the model (`litellm.token_counter`);
        images count at the fixed `IMAGE_TOKENS` (never downloaded). Falls back to the
        estimate when litellm cannot count these messages."""
        litellm = _import_litellm()
        texts, images = _without_images(messages)
        try:
            counted = litellm.token_counter(
                model=self.model, messages=texts, tools=list(tools) if tools else None
            )
        except Exception:  # a content shape litellm does not know
            return super().count_tokens(messages, tools)
        return int(counted) + images

    def count_message_tokens(self, message: dict[str, Any]) -> int:
        """The tokens one message adds to a request, by litellm's tokenizer for the model."""
        litellm = _import_litellm()
        texts, images = _without_images([message])
        try:
            counted = litellm.token_counter(model=self.model, messages=texts)
        except Exception:  # a content shape litellm does not know
            return super().count_message_tokens(message)
        return max(int(counted) - _request_overhead(self.model), 1) + images


@functools.lru_cache(maxsize=256)
def _model_window(model: str) -> int | None:
    """`max_input_tokens` of `model` in litellm's bundled model map, or None if it has none."""
    litellm = _import_litellm()
    try:
        info = litellm.get_model_info(model)
    except Exception:  # litellm raises for every model it has not mapped
        return None
    window = info.get("max_input_tokens")
    return int(window) if window else None


@functools.lru_cache(maxsize=256)
def _model_vision(model: str) -> bool:
    """Whether litellm's bundled model map says `model` reads images (False if it has no entry)."""
    litellm = _import_litellm()
    try:
        return bool(litellm.supports_vision(model=model))
    except Exception:  # litellm raises for some models it has not mapped
        return False


@functools.lru_cache(maxsize=256)
def _request_overhead(model: str) -> int:
    """The tokens litellm counts for a request without messages (the reply's priming)."""
    try:
        return int(_import_litellm().token_counter(model=model, messages=[]))
    except Exception:
        return 0


def _without_images(
    messages: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], int]:
    """The messages with their image parts removed (copies of those that had any), and the
    images' tokens: images are counted at a fixed price instead of litellm's, which may fetch
    an image to measure it."""
    texts: list[dict[str, Any]] = []
    images = 0
    for message in messages:
        content = message.get("content")
        tokens = image_tokens(content)
        if tokens and isinstance(content, list):
            images += tokens
            parts = [
                p for p in content if not (isinstance(p, dict) and p.get("type") == "image_url")
            ]
            message = {**message, "content": parts or ""}
        texts.append(message)
    return texts, images
