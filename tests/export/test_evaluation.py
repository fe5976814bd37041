"""Evaluation records of stored runs, their files, and the subjects × tasks response matrix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tapeagents import run_sync
from tapeagents.export import (
    Selection,
    eval_record,
    eval_records,
    missing_scores,
    read_eval_records,
    response_matrix,
    write_eval_records,
)
from tapeagents.llms import LLMOutput, ScriptedLLM
from tapeagents.store import TapeStore
from tests.export.agents import calc_agent, calc_env, json_agent, question, solve


def test_one_record_per_stored_tape(store: TapeStore) -> None:
    calc, arith = calc_agent(), json_agent()
    for a in (1, 2):
        solve(store, calc, a, 1)
        solve(store, arith, a, 1)
    records = list(eval_records(store))
    assert len(records) == 4
    by_subject = {r.subject for r in records}
    assert by_subject == {"calc@scripted", "arith@scripted"}
    record = next(r for r in records if r.agent == "calc" and r.task_id == "2+1")
    tape = store.get(record.tape_id)
    calls = store.llm_calls_of(tape)
    assert record.outcome == "success" and record.reward == 1.0 and record.status == "stopped"
    assert record.steps == len(tape) == 5 and record.llm_calls == len(calls) == 2
    assert record.prompt_tokens == sum(c.usage.prompt_tokens for c in calls)
    assert record.tokens == record.prompt_tokens + record.completion_tokens
    assert record.cost is None  # the scripted model does not know its price
    assert record.latency == pytest.approx(sum(c.latency for c in calls))
    assert record.duration is not None and record.duration >= 0 and record.error is None
    only = list(eval_records(store, Selection(agent="arith")))
    assert {r.agent for r in only} == {"arith"}


def test_errors_and_costs_are_recorded(store: TapeStore) -> None:
    def broken(prompt):  # never parses: the run stops with an error after 3 attempts
        return LLMOutput(content="no JSON here", cost=0.25)

    agent = json_agent()
    agent.llms["default"] = ScriptedLLM(broken, model="m1")
    result = run_sync(agent, question(1, 1), calc_env(), store=store)
    assert result.reason == "error"
    (record,) = eval_records(store)
    assert record.status == "error"
    assert record.error is not None and "could not be parsed" not in record.error
    assert record.error.startswith("The answer contains no JSON")
    assert record.cost == pytest.approx(0.75) and record.model == "m1"
    assert record.subject == "arith@m1"


def test_records_round_trip_as_jsonl_and_csv(store: TapeStore, tmp_path: Path) -> None:
    for a in range(3):
        solve(store, calc_agent(), a, 2)
    records = list(eval_records(store, subject=lambda r: f"{r.agent}-v2"))
    assert {r.subject for r in records} == {"calc-v2"}
    for name in ("records.jsonl", "records.csv"):
        assert write_eval_records(records, tmp_path / name) == 3
        assert read_eval_records(tmp_path / name) == records
    with (tmp_path / "records.csv").open() as source:
        header = next(csv.reader(source))
    assert header[:4] == ["tape_id", "task_id", "subject", "agent"]


def test_response_matrix_of_subjects_and_tasks(tmp_path: Path) -> None:
    good, bad = json_agent("good"), json_agent("bad")
    bad.llms["default"] = ScriptedLLM(lambda p: '[{"kind": "final_answer", "answer": "0"}]')
    runs = []
    for agent in (good, bad):
        for a in (1, 2, 3):
            tape = solve(None, agent, a, 1, task=f"add-{a}")
            runs.append((tape, []))
    runs.append((solve(None, bad, 1, 1, task="add-1"), []))  # a second try on add-1 scores 0
    runs[-1][0].metadata.reward = 1.0  # ... unless its reward says otherwise
    matrix = response_matrix(eval_record(t, c) for t, c in runs)
    assert matrix.subjects == ["bad@no-llm", "good@no-llm"]
    assert matrix.tasks == ["add-1", "add-2", "add-3"]
    assert matrix.scores == [[0.5, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert matrix.counts == [[2, 1, 1], [1, 1, 1]]
    assert matrix.score("good@no-llm", "add-2") == 1.0

    matrix.write(tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text().splitlines() == [
        "subject,add-1,add-2,add-3",
        "bad@no-llm,0.5,0,0",
        "good@no-llm,1,1,1",
    ]
    matrix.write(tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text())["scores"][1] == [1.0, 1.0, 1.0]

    by_success = response_matrix((eval_record(t, c) for t, c in runs), score="success")
    assert by_success.scores[0][0] == 0.0  # outcome "failure" twice, whatever the reward


def test_missing_scores_says_what_keeps_tapes_out_of_the_matrix() -> None:
    judged = solve(None, json_agent("good"), 1, 1, task="add-1")  # outcome and reward
    unjudged = question(2, 2, task="add-2")  # a task, never judged
    records = [eval_record(judged, []), eval_record(unjudged, [])]
    assert missing_scores(records[:1]) is None
    gaps = missing_scores(records)
    assert gaps is not None
    assert gaps.startswith("1 of 2 tapes have no outcome or reward: the response matrix holds")
    assert "1 of 2 here" in gaps and "no task id" not in gaps
    assert "store.set_status(tape.id, status, metadata=tape.metadata)" in gaps
    judged.metadata.reward = None  # by reward alone, the judged tape has no score either
    by_reward = missing_scores([eval_record(judged, [])], score="reward")
    assert by_reward is not None and by_reward.startswith("1 of 1 tape has no reward")
    assert response_matrix(records[1:]).tasks == []  # what the CLI refuses to write
