"""Rate limits and retries in the LLM layer, shared by every session of a batch."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest

from tapeagents import Agent
from tapeagents.batch import BatchOptions, run_batch
from tapeagents.errors import UsageError
from tapeagents.llms import OpenAICompatLLM, Prompt, RateLimit
from tapeagents.llms.limits import RetryPolicy, estimate_tokens
from tapeagents.store import TapeStore
from tests.batch.agents import steps_agent
from tests.batch.openai_stub import Stub, serve


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    with serve() as server:
        yield server


def test_requests_per_minute_space_requests_out() -> None:
    limit = RateLimit(requests_per_minute=60)  # one a second, one at once
    waits = [limit.reserve() for _ in range(3)]
    assert waits[0] == 0
    assert waits[1] == pytest.approx(1.0, abs=0.05) and waits[2] == pytest.approx(2.0, abs=0.05)


def test_tokens_per_minute_count_the_estimate_then_the_real_usage() -> None:
    limit = RateLimit(tokens_per_minute=600)  # 10 tokens a second, 10 at once
    assert limit.reserve(30) == 0  # a big request may go when the bucket is full...
    assert limit.reserve(5) == pytest.approx(2.5, abs=0.05)  # ...and the next one pays for it
    fresh = RateLimit(tokens_per_minute=600)
    fresh.reserve(10)
    fresh.settle(10, 0)  # the request used nothing after all: its tokens come back
    assert fresh.reserve(10) == pytest.approx(0, abs=0.05)
    fresh.settle(10, 40)  # it used 30 more than estimated
    assert fresh.reserve(1) == pytest.approx(3.1, abs=0.05)


def test_bad_limits_and_policies_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="requests_per_minute > 0"):
        RateLimit(requests_per_minute=0)
    with pytest.raises(UsageError, match="max_retries >= 0"):
        RetryPolicy(max_retries=-1)


def test_backoff_grows_and_honours_retry_after() -> None:
    policy = RetryPolicy(backoff=0.5, max_delay=4)
    assert 0.5 <= policy.delay(0) <= 0.625 and 2.0 <= policy.delay(2) <= 2.5
    assert policy.delay(10) == 4  # capped
    assert policy.delay(0, retry_after=3) == 3


def test_token_estimate_is_rough_but_monotonic() -> None:
    short = estimate_tokens([{"role": "user", "content": "hi"}])
    long = estimate_tokens([{"role": "user", "content": "hi " * 400}])
    assert 1 <= short < long and long == pytest.approx(300, rel=0.2)


async def test_a_batch_shares_one_rate_limit_and_tapes_record_retries(stub: Stub) -> None:
    limit = RateLimit(requests_per_minute=1200)  # 20 a second
    llm = OpenAICompatLLM("flaky-3-batch", base_url=stub.base_url, backoff=0.001, rate_limit=limit)
    agent = Agent("limited", nodes=steps_agent(2).nodes, llms=llm)
    store = TapeStore("sqlite:///:memory:")
    work = [{"id": i, "message": f"task {i}"} for i in range(15)]
    start = time.monotonic()
    options = BatchOptions(concurrency=15)
    results = [r async for r in run_batch(agent, work, store=store, options=options)]
    elapsed = time.monotonic() - start
    assert {r.status for r in results} == {"stopped"}
    assert sum(r.retries for r in results) == 3  # the stub refused the first three requests
    assert limit.requests == 33  # every attempt of every session went through the one limit
    assert elapsed > 0.6  # 33 requests at 20 a second, 20 of them at once: at least 0.65 s
    retried = [
        call.retries
        for summary in store.list(limit=None)
        for call in store.llm_calls_of(store.get(summary.id))
    ]
    assert sum(retried) == 3  # the store keeps them with the LLM calls, durably
    assert not llm._clients  # the batch closed its connections


async def test_litellm_goes_through_the_same_gate() -> None:
    pytest.importorskip("litellm")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from tapeagents.llms import LiteLLM

    limit = RateLimit(requests_per_minute=300)  # 5 a second, 5 at once
    llm = LiteLLM("gpt-4o-mini", mock_response="Hi", rate_limit=limit)
    prompt = Prompt(messages=[{"role": "user", "content": "Hello"}])
    start = time.monotonic()
    await asyncio.gather(*(llm.generate(prompt) for _ in range(8)))
    assert limit.requests == 8
    assert time.monotonic() - start >= 0.55  # the last three waited 0.2, 0.4 and 0.6 s
