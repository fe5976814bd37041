"""Selecting tapes and outputs for training (store columns, annotations), the split, and the
batched reads the exporter relies on; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter

from tapeagents import FinalAnswer, StepMetadata
from tapeagents.export import ExportReport, Selection, split_of, training_examples
from tapeagents.store import TapeStore
from tests.export.agents import calc_agent, json_agent, solve


def fill(store: TapeStore) -> dict[str, str]:
    """Six tapes: four right answers (one tagged), two wrong ones (the teacher errs on 9+9)."""
    agent = json_agent()
    ids = {}
    for a, b in [(1, 2), (2, 2), (3, 4), (5, 5)]:
        tags = ["gold"] if a == 1 else []
        ids[f"{a}+{b}"] = solve(store, agent, a, b, tags=tags).id
    wrong = json_agent()
    wrong.llms["default"].__init__(lambda prompt: '[{"kind": "final_answer", "answer": "7"}]')
    for a, b in [(9, 9), (8, 8)]:
        ids[f"{a}+{b}"] = solve(store, wrong, a, b).id
    return ids


def starts(examples) -> Counter[str]:
    return Counter(e.task_id for e in examples)


def test_filters_on_store_columns_and_reward(store: TapeStore) -> None:
    fill(store)
    agent = json_agent()
    everything = list(training_examples(store, agent))
    assert len(everything) == 6
    good = list(training_examples(store, agent, Selection(outcome="success")))
    assert set(starts(good)) == {"1+2", "2+2", "3+4", "5+5"}
    assert set(starts(training_examples(store, agent, Selection(min_reward=0.5)))) == set(
        starts(good)
    )
    assert set(starts(training_examples(store, agent, Selection(tag="gold")))) == {"1+2"}
    assert set(starts(training_examples(store, agent, Selection(task_id="9+9")))) == {"9+9"}
    assert list(training_examples(store, agent, Selection(agent="nobody"))) == []


def test_annotations_drop_and_keep_outputs(store: TapeStore) -> None:
    ids = fill(store)
    agent = json_agent()
    store.annotate(ids["2+2"], 1, label="bad", comment="wrong format")
    store.annotate(ids["3+4"], rating=0.2)
    store.annotate(ids["5+5"], 1, rating=0.9)
    store.annotate(ids["5+5"], rating=0.1)  # the step's own rating wins over the tape's

    report = ExportReport()
    selection = Selection(drop_labels=["bad"], min_rating=0.5)
    kept = list(training_examples(store, agent, selection, report=report))
    assert set(starts(kept)) == {"1+2", "5+5", "9+9", "8+8"}
    assert report.skipped == {"step labelled 'bad'": 1, "rated below 0.5": 1}

    rated = Selection(min_rating=0.5, rated_only=True)
    assert set(starts(training_examples(store, agent, rated))) == {"5+5"}

    store.annotate(ids["1+2"], label="gold")
    assert set(starts(training_examples(store, agent, Selection(keep_labels=["gold"])))) == {"1+2"}


def test_split_is_seeded_and_keeps_a_task_on_one_side(store: TapeStore) -> None:
    agent = json_agent()
    for a in range(12):
        for _ in range(2):  # two tapes per task, with different numbers in the question
            solve(store, agent, a, 1, task=f"task-{a}")
    first = list(training_examples(store, agent, validation=0.3, seed=1, dedupe=False))
    again = list(training_examples(store, agent, validation=0.3, seed=1, dedupe=False))
    assert [e.split for e in first] == [e.split for e in again]
    sides: dict[str | None, set[str]] = {}
    for example in first:
        sides.setdefault(example.task_id, set()).add(example.split)
    assert all(len(side) == 1 for side in sides.values())
    assert {"train", "validation"} == {s for side in sides.values() for s in side}
    other = list(training_examples(store, agent, validation=0.3, seed=2, dedupe=False))
    assert [e.split for e in other] != [e.split for e in first]


def test_split_of_is_stable_and_roughly_proportional() -> None:
    sides = [split_of(f"task:{i}", validation=0.2, seed=0) for i in range(2000)]
    assert 0.17 < sides.count("validation") / len(sides) < 0.23
    assert split_of("task:7", validation=0.2) == split_of("task:7", validation=0.2)
    assert split_of("anything", validation=0.0) == "train"


def test_forks_stay_with_their_parent_in_the_split(store: TapeStore) -> None:
    agent = calc_agent()
    tape = solve(store, agent, 1, 1)
    for _ in range(5):
        child = store.fork(tape.id, 4)
        child.append(FinalAnswer(answer="2", metadata=StepMetadata(agent="calc", node="main")))
        store.save(child)
    for seed in range(10):
        examples = training_examples(store, agent, validation=0.5, seed=seed, split_by="tape")
        assert len({e.split for e in examples}) == 1


def test_batched_reads_equal_single_reads_forks_included(store: TapeStore) -> None:
    ids = list(fill(store).values())
    child = store.fork(ids[0], 1)
    child.append(FinalAnswer(answer="3", metadata=StepMetadata(agent="arith", node="main")))
    store.save(child)
    empty = store.fork(ids[1], 0)
    wanted = [*ids, child.id, empty.id, ids[2]]
    batched = list(store.iter_tapes(wanted, batch_size=3))
    single = [store.get(tape_id) for tape_id in wanted]
    assert [t.model_dump() for t in batched] == [t.model_dump() for t in single]
    assert batched[-1] is not batched[2]  # a repeated id is a tape of its own
