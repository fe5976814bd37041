"""The Ray backend on a local two-CPU Ray instance, writing into one PostgreSQL store.

Skipped without PostgreSQL (run through scripts/with-postgres.sh, as `make test` does). Ray
starts without its dashboard and without usage reports, so nothing leaves the machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapeagents.batch import BatchOptions, batch_tag, run_batch_sync
from tapeagents.llms import RateLimit
from tapeagents.store import TapeFilter, TapeStore
from tests.batch.agents import steps_agent
from tests.store.conftest import POSTGRES_URL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    if not POSTGRES_URL and os.environ.get("TAPEAGENTS_REQUIRE_POSTGRES") != "1":
        pytest.skip("no PostgreSQL for the Ray workers: run through scripts/with-postgres.sh")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        # workers import the test agents by module path, like a user's own package
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}},
    )
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_workers_share_one_store_and_a_dead_worker_is_replaced(
    postgres_url: str, ray_cluster: None, tmp_path: Path
) -> None:
    marker = tmp_path / "died"
    work = [{"id": f"t{i}", "message": f"task {i}"} for i in range(7)]
    work.append({"id": "dies", "message": f"die {marker}"})  # kills its worker, the first time
    agent = steps_agent(3)
    with TapeStore(postgres_url) as store:
        options = BatchOptions(backend="ray", concurrency=4, batch_id="ray", chunk_size=4)
        summary = run_batch_sync(agent, work, store=store, options=options)
        assert marker.exists(), "the worker was killed once"
        # tapes the dead worker finished are reported as done before the retry of its chunk
        assert set(summary.by_status()) == {"stopped"}
        assert len(summary.ran) + summary.skipped == 8
        stored = store.list(TapeFilter(tag=batch_tag("ray")), limit=None)
        assert len(stored) == 8 and {s.status for s in stored} == {"stopped"}
        assert {s.task_id for s in stored} == {t["id"] for t in work}
        died = store.get(next(s.id for s in stored if s.task_id == "dies"))
        assert died.kinds() == ["user", "reasoning", "reasoning", "final_answer"]
        again = run_batch_sync(agent, work, store=store, options=options)
        assert again.skipped == 8


def test_ray_needs_a_store_every_worker_can_open() -> None:
    from tapeagents.errors import UsageError

    pytest.importorskip("ray")

    with TapeStore("sqlite:///:memory:") as store, pytest.raises(UsageError, match="PostgreSQL"):
        options = BatchOptions(backend="ray")
        run_batch_sync(steps_agent(2), [{"id": 1}], store=store, options=options)


def test_rate_limits_are_split_between_workers() -> None:
    limit = RateLimit(requests_per_minute=600, tokens_per_minute=60_000)
    share = limit.share(4)
    assert (share.requests_per_minute, share.tokens_per_minute) == (150, 15_000)


def test_ray_workers_call_an_openai_compatible_server(postgres_url: str, ray_cluster: None) -> None:
    from tapeagents import Agent
    from tapeagents.llms import OpenAICompatLLM
    from tests.batch.openai_stub import serve

    with serve() as stub, TapeStore(postgres_url) as store:
        limit = RateLimit(requests_per_minute=6000)
        llm = OpenAICompatLLM("echo", base_url=stub.base_url, api_key="sk-test", rate_limit=limit)
        agent = Agent("remote", nodes=steps_agent(2).nodes, llms=llm)
        work = [{"id": i, "message": f"task {i}"} for i in range(6)]
        options = BatchOptions(backend="ray", batch_id="http")
        summary = run_batch_sync(agent, work, store=store, options=options)
        assert summary.by_status() == {"stopped": 6}
        assert len(stub.requests) == 12  # two calls a task, made by the workers
        assert all(r["headers"]["authorization"] == "Bearer sk-test" for r in stub.requests)
        tape = store.get(store.list(TapeFilter(task_id="3"))[0].id)
        assert tape.kinds() == ["user", "reasoning", "final_answer"]
        assert tape.steps[-1].answer.startswith("echo: ")  # type: ignore[attr-defined]
