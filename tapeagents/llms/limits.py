"""Rate limits and retries shared by every request of an LLM backend.

Every request of a backend that supports them passes through its `RequestGate`: first the
model's `RateLimit` (requests and tokens per minute) says when it may go, then the request is
tried, and a transient failure (rate limited, timed out, a 5xx, a dropped connection) is tried
again after an exponential backoff, as `RetryPolicy` says. The gate belongs to the backend
object, and the rate limit can be shared by several backends, so every concurrent session of a
batch that uses the model waits in the same line.

Retries are recorded: `LLMCall.retries` counts them for the call, and the store keeps the count
with the call.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from tapeagents.errors import UsageError

__all__ = [
    "RateLimit",
    "RequestGate",
    "RetryPolicy",
    "counting_retries",
    "estimate_tokens",
    "retry_after_seconds",
]

T = TypeVar("T")

_retries: ContextVar[list[int] | None] = ContextVar("tapeagents_llm_retries", default=None)


@contextmanager
def counting_retries() -> Iterator[list[int]]:
    """Count the retries made by gates while the block runs (in this task): `counter[0]`."""
    counter = [0]
    token = _retries.set(counter)
    try:
        yield counter
    finally:
        _retries.reset(token)


def _note_retry() -> None:
    counter = _retries.get()
    if counter is not None:
        counter[0] += 1


# ----------------------------------------------------------------------------- retries


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried.

    The n-th retry waits `backoff * 2**n` seconds (plus up to 25% jitter, so that sessions
    that failed together do not retry together), at least what the server asked for in a
    `Retry-After` header, and at most `max_delay`.
    """

    max_retries: int = 4
    """Retries after the first attempt; 0 disables retrying."""
    backoff: float = 0.5
    """Seconds before the first retry."""
    max_delay: float = 30.0
    """Longest wait before one retry, in seconds."""

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff < 0 or self.max_delay < 0:
            raise UsageError("Retries need max_retries >= 0, backoff >= 0 and max_delay >= 0.")

    def delay(self, retry: int, retry_after: float = 0.0) -> float:
        """Seconds to wait before retry number `retry` (0 for the first)."""
        delay = self.backoff * 2.0**retry * (1 + 0.25 * random.random())
        return min(max(delay, retry_after), self.max_delay)


def retry_after_seconds(error: BaseException) -> float:
    """Seconds the server asked us to wait (its `Retry-After` header), or 0."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        return max(float(headers.get("retry-after", 0)), 0.0)
    except (TypeError, ValueError):
        return 0.0


# ----------------------------------------------------------------------------- rate limits


class _Bucket:
    """A token bucket that refills at `rate` per second up to `capacity`; it may go into debt.

    The state is the level at time `stamp`, which can lie in the future when requests have
    been scheduled ahead: waiting requests reserve their place without holding a lock.
    """

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate, 1.0)  # at most one second's worth at once
        self.level = self.capacity
        self.stamp = time.monotonic()

    def level_at(self, moment: float) -> float:
        return min(self.capacity, self.level + max(moment - self.stamp, 0.0) * self.rate)

    def ready_at(self, now: float, amount: float) -> float:
        """The earliest moment from `now` at which `amount` (capped at capacity) is available."""
        start = max(now, self.stamp)
        missing = min(amount, self.capacity) - self.level_at(start)
        return start if missing <= 0 else start + missing / self.rate

    def take(self, moment: float, amount: float) -> None:
        self.level = self.level_at(moment) - amount
        self.stamp = max(moment, self.stamp)

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class RateLimit:
    """Requests and tokens per minute allowed for one model.

    Give the same object to every backend that reaches the model (one backend object is already
    shared by all sessions of a batch). Requests are spaced smoothly: at most one second's worth
    goes out at once. Tokens are counted from an estimate of the prompt before the request and
    corrected with the usage the server reports after it.

    Limits hold per process: with the Ray backend each worker gets an equal share.

    Example:
        >>> limit = RateLimit(requests_per_minute=600, tokens_per_minute=200_000)
    """

    def __init__(
        self,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
    ) -> None:
        for name, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and value <= 0:
                raise UsageError(f"RateLimit needs {name} > 0 (or None for no limit).")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._requests = _Bucket(requests_per_minute) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute) if tokens_per_minute else None
        self._lock = threading.Lock()
        self.requests = 0
        """Requests booked through this limit."""
        self.waited = 0.0
        """Total seconds requests spent waiting for this limit."""

    @property
    def counts_tokens(self) -> bool:
        return self._tokens is not None

    def reserve(self, tokens: int = 0) -> float:
        """Book one request of about `tokens` tokens; return how many seconds to wait first."""
        with self._lock:
            now = time.monotonic()
            moment = now
            if self._requests is not None:
                moment = max(moment, self._requests.ready_at(now, 1))
            if self._tokens is not None:
                moment = max(moment, self._tokens.ready_at(now, tokens))
            if self._requests is not None:
                self._requests.take(moment, 1)
            if self._tokens is not None:
                self._tokens.take(moment, tokens)
            wait = moment - now
            self.requests += 1
            self.waited += wait
            return wait

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request of about `tokens` tokens may go."""
        wait = self.reserve(tokens)
        if wait > 0:
            await asyncio.sleep(wait)

    def settle(self, estimated: int, used: int) -> None:
        """Correct the token count of a request once its real usage is known."""
        if self._tokens is None or used == estimated:
            return
        with self._lock:
            if used > estimated:
                self._tokens.level -= used - estimated
            else:
                self._tokens.give_back(estimated - used)

    def share(self, parts: int) -> RateLimit:
        """A limit for one of `parts` processes that together keep to this one."""
        if parts <= 1:
            return self
        return RateLimit(
            requests_per_minute=self.requests_per_minute / parts
            if self.requests_per_minute
            else None,
            tokens_per_minute=self.tokens_per_minute / parts if self.tokens_per_minute else None,
        )

    def __getstate__(self) -> dict[str, Any]:
        # Sent to another process (Ray): the limits travel, the bookkeeping starts afresh.
        return {"rpm": self.requests_per_minute, "tpm": self.tokens_per_minute}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(requests_per_minute=state["rpm"], tokens_per_minute=state["tpm"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"RateLimit(requests_per_minute={self.requests_per_minute}, "
            f"tokens_per_minute={self.tokens_per_minute})"
        )


def estimate_tokens(messages: Sequence[dict[str, Any]], tools: Any = None) -> int:
    """A rough count of a prompt's tokens (4 characters a token), for rate limiting only.

    Image parts count at the price of an image (`IMAGE_TOKENS`), not by the length of their
    data URL, which would make a screenshot cost a rate limit's whole minute.
    """
    from tapeagents.llms.base import content_text, image_tokens  # base imports this module

    size = images = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            images += image_tokens(content)
            content = content_text(content, image="")
        size += len(str(content or "")) + 16
    if tools:
        size += len(json.dumps(tools))
    return size // 4 + 1 + images


# ----------------------------------------------------------------------------- the gate


class RequestGate:
    """Rate limit first, then the request, retried with backoff while its failure is transient.

    Args:
        retry: How to retry.
        rate_limit: The model's limit, or None.
        is_transient: Whether an exception of one attempt is worth retrying.
        failure: The exception to raise for an exception that is not retried (given the
            retries made so far); usually an `LLMError` that says what to check.
    """

    def __init__(
        self,
        *,
        retry: RetryPolicy,
        rate_limit: RateLimit | None,
        is_transient: Callable[[Exception], bool],
        failure: Callable[[Exception, int], Exception],
    ) -> None:
        self.retry = retry
        self.rate_limit = rate_limit
        self.is_transient = is_transient
        self.failure = failure
        self.retries = 0
        """Retries made through this gate since it was created, over all requests."""

    def tokens_for(self, messages: Sequence[dict[str, Any]], tools: Any = None) -> int:
        """The estimate to pass as `tokens=`: 0 unless the rate limit counts tokens."""
        if self.rate_limit is None or not self.rate_limit.counts_tokens:
            return 0
        return estimate_tokens(messages, tools)

    async def _wait_turn(self, tokens: int) -> None:
        if self.rate_limit is not None:
            await self.rate_limit.acquire(tokens)

    def _settle(self, tokens: int, used: int | None) -> None:
        if self.rate_limit is not None and used is not None:
            self.rate_limit.settle(tokens, used)

    def _final(self, error: Exception, attempt: int) -> Exception:
        """The exception to raise for `error` (chained to it unless it is the same)."""
        failure = self.failure(error, attempt)
        if failure is not error:
            failure.__cause__ = error
        return failure

    async def _after_failure(self, error: Exception, attempt: int) -> None:
        """Sleep before the next attempt, or raise the failure if `error` is final."""
        if not self.is_transient(error) or attempt >= self.retry.max_retries:
            raise self._final(error, attempt)
        self.retries += 1
        _note_retry()
        await asyncio.sleep(self.retry.delay(attempt, retry_after_seconds(error)))

    async def send(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        tokens: int = 0,
        used: Callable[[T], int | None] = lambda result: None,
    ) -> T:
        """Run `attempt()` under the rate limit, retrying transient failures.

        Args:
            attempt: Makes one request.
            tokens: Estimated tokens of the request (for a tokens-per-minute limit).
            used: The tokens a result really used, when known.
        """
        tries = 0
        while True:
            await self._wait_turn(tokens)
            try:
                result = await attempt()
            except Exception as error:
                await self._after_failure(error, tries)
                tries += 1
                continue
            self._settle(tokens, used(result))
            return result

    async def stream(
        self,
        attempt: Callable[[], AsyncIterator[T]],
        *,
        tokens: int = 0,
        is_partial: Callable[[T], bool],
        used: Callable[[T], int | None] = lambda item: None,
    ) -> AsyncIterator[T]:
        """Yield the items of `attempt()`, retrying a transient failure until the first partial
        item went out (after that a retry would repeat it, so the failure is raised)."""
        tries = 0
        while True:
            await self._wait_turn(tokens)
            sent = False
            try:
                async for item in attempt():
                    if is_partial(item):
                        sent = True
                    else:
                        self._settle(tokens, used(item))
                    yield item
                return
            except Exception as error:
                if sent:
                    raise self._final(error, tries)  # noqa: B904 - chained in _final
                await self._after_failure(error, tries)
                tries += 1
