"""Context policies cut long conversations to the budget and keep every request valid."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest

from tapeagents.chat_rules import InvalidChat, validate_chat
from tapeagents.context import (
    ContextOverflow,
    ContextPolicy,
    ElideObservations,
    FailOnOverflow,
    KeepLast,
    Unit,
    fit_context,
    units_from_messages,
)
from tapeagents.errors import LLMError, UsageError
from tapeagents.llms import CachedLLM, ReplayLLM, ScriptedLLM, TestLLM
from tapeagents.llms.base import (
    IMAGE_TOKENS,
    IMAGE_TOKENS_LOW_DETAIL,
    LLMCall,
    LLMOutput,
    Prompt,
    estimate_message_tokens,
    estimate_prompt_tokens,
)

WINDOW = 8192
RESERVE = 1024
BUDGET = WINDOW - RESERVE
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_page",
            "description": "Read a page.",
            "parameters": {"type": "object", "properties": {"page": {"type": "integer"}}},
        },
    }
]
LLM = ScriptedLLM(["unused"], context_window=WINDOW)
count = LLM.count_message_tokens
POLICIES: list[ContextPolicy] = [ElideObservations(), KeepLast(6), FailOnOverflow()]


def conversation(steps: int, body: int = 2000) -> list[dict[str, Any]]:
    """A system message, the task, then `steps` tool calls, each answered by a tool result of
    about `body` characters; every fifth step also has a thought of its own."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a research agent."},
        {"role": "user", "content": "Summarize the book, page by page."},
    ]
    for i in range(steps):
        if i % 5 == 4:
            messages.append({"role": "assistant", "content": f"Pages so far look fine ({i})."})
        call_id = f"call_{i}"
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "read_page", "arguments": json.dumps({"page": i})},
                    }
                ],
            }
        )
        text = f"Page {i}. " + "lorem ipsum dolor sit amet " * (body // 27)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
    return messages


def tokens(messages: list[dict[str, Any]]) -> int:
    return sum(count(m) for m in messages)


def elided(messages: list[dict[str, Any]]) -> list[int]:
    return [
        i
        for i, m in enumerate(messages)
        if isinstance(m.get("content"), str) and m["content"].startswith("[elided: ")
    ]


def omitted(messages: list[dict[str, Any]]) -> list[int]:
    return [
        i
        for i, m in enumerate(messages)
        if isinstance(m.get("content"), str)
        and "omitted to fit the context window]" in m["content"]
    ]


# ----------------------------------------------------------------------------- every policy


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_a_conversation_that_fits_is_sent_unchanged(policy: ContextPolicy) -> None:
    messages = conversation(3)
    head, units = units_from_messages(messages)
    out = policy.fit(head, units, budget=BUDGET, count=count)
    assert out == messages
    assert all(a is b for a, b in zip(out, messages, strict=True))


def test_units_cover_the_messages_in_order() -> None:
    messages = conversation(10)
    head, units = units_from_messages(messages)
    assert [m for m in head] + [m for u in units for m in u.messages] == messages
    assert head == messages[:1]
    assert units[0].pinned and units[0].messages == [messages[1]]
    assert all(not u.pinned for u in units[1:])
    calls = [u for u in units if u.observation]
    assert len(calls) == 10 and all(len(u.messages) == 2 for u in calls)


# ----------------------------------------------------------------------------- 200,000 tokens


@pytest.fixture(scope="module")
def long_conversation() -> list[dict[str, Any]]:
    messages = conversation(300)  # about 200,000 tokens by the estimate
    assert 190_000 < tokens(messages) < 260_000
    return messages


def test_elide_observations_on_200k_tokens(long_conversation: list[dict[str, Any]]) -> None:
    original = copy.deepcopy(long_conversation)
    head, units = units_from_messages(long_conversation)
    policy = ElideObservations(max_elided=10**6)  # unbounded: it fills the budget
    out = fit_context(policy, head, units, window=WINDOW, reserve=RESERVE, count=count)
    validate_chat(out, TOOLS)
    assert long_conversation == original  # the input messages are not changed
    assert BUDGET - 200 < tokens(out) <= BUDGET
    # the system message and the task first, then one marker where the oldest turns were
    assert out[:2] == long_conversation[:2]
    assert omitted(out) == [2]
    kept = [u for u in units if any(m is u.messages[0] for m in out)]
    assert kept[0] is units[0] and kept[-1] is units[-1]
    assert out[2]["content"] == (
        f"[{len(units) - len(kept):,} earlier turns omitted to fit the context window]"
    )
    assert [m for u in kept[1:] for m in u.messages if m["role"] != "tool"] == [
        m for m in out[3:] if m["role"] != "tool"
    ]
    # the newest messages are kept whole; the older kept outputs are elided, with their size
    assert out[-4:] == long_conversation[-4:]
    outputs = [m for m in out if m["role"] == "tool"]
    flags = [m["content"].startswith("[elided: ") for m in outputs]
    whole = flags.index(False)
    assert whole > 0 and not any(flags[whole:]), "the elided outputs are the oldest"
    for message in outputs[:whole]:
        source = next(
            m for m in long_conversation if m.get("tool_call_id") == message["tool_call_id"]
        )
        assert (
            message["content"] == f"[elided: {len(source['content']):,} characters of tool output]"
        )


def test_keep_last_on_200k_tokens(long_conversation: list[dict[str, Any]]) -> None:
    head, units = units_from_messages(long_conversation)
    out = KeepLast(6).fit(head, units, budget=BUDGET, count=count)
    validate_chat(out, TOOLS)
    assert tokens(out) <= BUDGET
    kept = [m for u in units[-6:] for m in u.messages]
    assert out == [*long_conversation[:2], out[2], *kept]
    assert out[2]["content"] == (
        f"[{len(units) - 7:,} earlier turns omitted to fit the context window]"
    )
    assert not elided(out)


def test_fail_on_overflow_on_200k_tokens(long_conversation: list[dict[str, Any]]) -> None:
    head, units = units_from_messages(long_conversation)
    with pytest.raises(ContextOverflow) as info:
        fit_context(FailOnOverflow(), head, units, window=WINDOW, reserve=RESERVE, count=count)
    error = info.value
    assert isinstance(error, LLMError)  # a node records it as a failure step
    assert error.needed == tokens(long_conversation) and error.budget == BUDGET
    assert error.window == WINDOW
    text = str(error)
    assert f"{tokens(long_conversation):,} tokens" in text
    assert "8,192" in text and "7,168" in text and "1,024 reserved" in text
    assert "ElideObservations()" in text and "KeepLast(n)" in text
    assert pickle.loads(pickle.dumps(error)).needed == error.needed


# ----------------------------------------------------------------------------- ElideObservations


def test_elision_stops_as_soon_as_the_conversation_fits() -> None:
    messages = conversation(10)  # about 7,000 tokens: a little over a 5,000 budget
    head, units = units_from_messages(messages)
    out = ElideObservations().fit(head, units, budget=5000, count=count)
    validate_chat(out, TOOLS)
    assert not omitted(out) and len(out) == len(messages)
    assert tokens(out) <= 5000
    marks = elided(out)
    tool_positions = [i for i, m in enumerate(messages) if m["role"] == "tool"]
    assert marks == tool_positions[: len(marks)], "the oldest outputs are elided first"
    # one more whole output would not fit: the fewest were elided
    assert tokens(out) + count(messages[marks[-1]]) - count(out[marks[-1]]) > 5000
    for i in marks:
        assert out[i]["tool_call_id"] == messages[i]["tool_call_id"]
        assert (
            out[i]["content"]
            == f"[elided: {len(messages[i]['content']):,} characters of tool output]"
        )


def test_the_newest_outputs_stay_whole_while_older_turns_are_dropped() -> None:
    messages = conversation(40)
    head, units = units_from_messages(messages)
    out = ElideObservations(keep_recent=3).fit(head, units, budget=3000, count=count)
    validate_chat(out, TOOLS)
    assert tokens(out) <= 3000 and omitted(out) == [2]
    assert out[-6:] == messages[-6:] or out[-7:] == messages[-7:]
    last_outputs = [m for m in out if m["role"] == "tool"][-3:]
    assert all(not m["content"].startswith("[elided") for m in last_outputs)


def test_a_huge_newest_output_is_elided_rather_than_failing() -> None:
    messages = conversation(3)
    messages[-1] = {**messages[-1], "content": "x" * 100_000}
    head, units = units_from_messages(messages)
    out = ElideObservations().fit(head, units, budget=2000, count=count)
    validate_chat(out, TOOLS)
    assert out[-1]["content"] == "[elided: 100,000 characters of tool output]"
    assert tokens(out) <= 2000


def test_short_outputs_are_not_elided() -> None:
    messages = conversation(50, body=10)
    head, units = units_from_messages(messages)
    out = ElideObservations().fit(head, units, budget=1000, count=count)
    validate_chat(out, TOOLS)
    assert not elided(out) and omitted(out) == [2]
    assert tokens(out) <= 1000


def test_user_observations_and_images_are_elided_with_their_sizes() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    screenshot = {
        "role": "user",
        "content": [{"type": "text", "text": "The page now shows: " + "a" * 500}, image, image],
    }
    head = [{"role": "system", "content": "Browse."}]
    units = [
        Unit([{"role": "user", "content": "Open the form."}], pinned=True),
        Unit([screenshot], observation=True),
        Unit([{"role": "assistant", "content": "I see the form."}]),
        Unit([{"role": "user", "content": "Now submit it."}]),
    ]
    assert count(screenshot) > 2 * IMAGE_TOKENS
    out = ElideObservations(keep_recent=0).fit(head, units, budget=300, count=count)
    validate_chat(out)
    assert out[2] == {
        "role": "user",
        "content": "[elided: 2 images and 520 characters of observation]",
    }
    assert out[3:] == [units[2].messages[0], units[3].messages[0]]
    assert screenshot["content"][1] is image  # the input was not changed


def test_a_newest_message_that_cannot_fit_raises() -> None:
    head = [{"role": "system", "content": "Chat."}]
    units = [
        Unit([{"role": "user", "content": "Hi"}], pinned=True),
        Unit([{"role": "assistant", "content": "Hello."}]),
        Unit([{"role": "user", "content": "word " * 5000}]),
    ]
    with pytest.raises(ContextOverflow, match="Even the newest turn alone does not fit") as info:
        ElideObservations().fit(head, units, budget=1000, count=count)
    assert info.value.needed > 1000


def test_head_and_task_that_do_not_fit_raise_for_every_policy() -> None:
    head = [{"role": "system", "content": "rules " * 3000}]
    units = [Unit([{"role": "user", "content": "Go."}], pinned=True)]
    for policy in POLICIES:
        with pytest.raises(ContextOverflow, match="system messages and the task alone") as info:
            policy.fit(head, units, budget=1000, count=count)
        assert info.value.needed == count(head[0]) + count(units[0].messages[0])


def test_a_pinned_unit_after_unpinned_ones_is_a_usage_error() -> None:
    head, units = units_from_messages(conversation(20))
    units.append(Unit([{"role": "user", "content": "Also this."}], pinned=True))
    with pytest.raises(UsageError, match="must lead"):
        ElideObservations().fit(head, units, budget=2000, count=count)


def test_fit_is_deterministic_and_counts_only_what_it_keeps() -> None:
    """A 10,000-turn conversation costs about what a small one does: the walk stops early."""
    head, units = units_from_messages(conversation(10_000, body=400))
    counted: list[int] = []

    def counting(message: dict[str, Any]) -> int:
        counted.append(id(message))
        return count(message)

    first = ElideObservations().fit(head, units, budget=BUDGET, count=counting)
    assert len(counted) == len(set(counted)), "each message is counted once per fit"
    assert len(counted) < 2_500
    second = ElideObservations().fit(head, units, budget=BUDGET, count=count)
    assert first == second
    assert json.dumps(first) == json.dumps(second)


# ----------------------------------------------------------------------------- KeepLast


def test_keep_last_that_does_not_fit_names_a_better_policy() -> None:
    head, units = units_from_messages(conversation(50))
    with pytest.raises(ContextOverflow, match=r"KeepLast\(20\).*ElideObservations"):
        KeepLast(20).fit(head, units, budget=BUDGET, count=count)


def test_policies_refuse_bad_settings() -> None:
    with pytest.raises(UsageError):
        KeepLast(0)
    with pytest.raises(UsageError):
        ElideObservations(keep_recent=-1)


# ----------------------------------------------------------------------------- counting


def test_the_estimate_counts_text_tool_calls_and_images() -> None:
    text: dict[str, Any] = {"role": "user", "content": "a" * 300}
    assert estimate_message_tokens(text) == 100 + 4
    unicode = {"role": "user", "content": "é" * 300}  # 2 bytes a character
    assert estimate_message_tokens(unicode) == 200 + 4
    parts = {"role": "user", "content": [{"type": "text", "text": "a" * 300}]}
    assert estimate_message_tokens(parts) == estimate_message_tokens(text)
    high = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    low = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}}
    with_images: dict[str, Any] = {
        "role": "user",
        "content": [{"type": "text", "text": "a" * 300}, high, low],
    }
    assert estimate_message_tokens(with_images) == 104 + IMAGE_TOKENS + IMAGE_TOKENS_LOW_DETAIL
    call = conversation(1)[2]
    assert estimate_message_tokens(call) > 4 + 4
    request = [text, with_images]
    assert estimate_prompt_tokens(request) == 3 + 104 + estimate_message_tokens(with_images)
    assert estimate_prompt_tokens(request, TOOLS) > estimate_prompt_tokens(request) + 30


def test_backends_report_their_context_window_and_wrappers_delegate() -> None:
    llm = ScriptedLLM(["ok"], context_window=4096)
    assert llm.context_window == 4096
    assert ScriptedLLM(["ok"]).context_window is None
    assert TestLLM(context_window=2048).context_window == 2048
    assert llm.parameters == {}  # not recorded: it does not change an answer
    assert CachedLLM(llm).context_window == 4096
    message = {"role": "user", "content": "hello " * 100}
    assert CachedLLM(llm).count_message_tokens(message) == llm.count_message_tokens(message)
    call = LLMCall(id="x", model="scripted", prompt=Prompt(messages=[message]), output=LLMOutput())
    assert ReplayLLM([call]).context_window is None
    replay = ReplayLLM([call], like=llm)
    assert replay.context_window == 4096
    assert replay.count_tokens([message], TOOLS) == llm.count_tokens([message], TOOLS)
    with pytest.raises(UsageError, match="context_window"):
        ScriptedLLM(["ok"], context_window=0)


# ----------------------------------------------------------------------------- validate_chat


def test_validate_chat_accepts_valid_requests() -> None:
    validate_chat(conversation(3), TOOLS)
    parallel = {
        "role": "assistant",
        "content": "Reading two pages.",
        "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "read_page", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "read_page", "arguments": "{}"}},
        ],
    }
    validate_chat(
        [
            {"role": "user", "content": "Go."},
            parallel,
            {"role": "tool", "tool_call_id": "b", "content": "two"},
            {"role": "tool", "tool_call_id": "a", "content": "one"},
        ],
        TOOLS,
    )


def _broken(change: Any) -> list[dict[str, Any]]:
    messages = conversation(2)
    change(messages)
    return messages


@pytest.mark.parametrize(
    ("messages", "tools", "error"),
    [
        ([], TOOLS, "no messages"),
        (_broken(lambda m: m.pop(3)), TOOLS, r"tool calls \['call_0'\] that no tool message"),
        (
            _broken(lambda m: m.insert(3, {"role": "assistant", "content": "wait"})),
            TOOLS,
            "no tool message directly after it",
        ),
        (_broken(lambda m: m.append(dict(m[3]))), TOOLS, "before it did not make"),
        (_broken(lambda m: m.insert(2, dict(m[3]))), TOOLS, "does not directly follow"),
        (conversation(2), None, "'read_page', which is not a declared tool"),
        (
            _broken(lambda m: m[4]["tool_calls"][0].update(id="call_0")),
            TOOLS,
            "reuses the id 'call_0'",
        ),
        (
            _broken(lambda m: m.__setitem__(1, {"role": "human", "content": "x"})),
            TOOLS,
            "role 'human'",
        ),
        (
            _broken(lambda m: m.__setitem__(1, {"role": "user", "content": None})),
            TOOLS,
            "no content",
        ),
        (
            _broken(lambda m: m[2]["tool_calls"][0]["function"].update(arguments={"page": 0})),
            TOOLS,
            "not a JSON string",
        ),
        (
            _broken(lambda m: m.__setitem__(1, {"role": "user", "content": [{"type": "video"}]})),
            TOOLS,
            "part 0 of type 'video'",
        ),
        (conversation(0), [*TOOLS, *TOOLS], "declared twice"),
    ],
)
def test_validate_chat_names_the_broken_rule(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, error: str
) -> None:
    with pytest.raises(InvalidChat, match=error):
        validate_chat(messages, tools)


def test_elide_observations_keeps_at_most_max_elided_markers(
    long_conversation: list[dict[str, Any]],
) -> None:
    head, units = units_from_messages(long_conversation)
    out = fit_context(
        ElideObservations(max_elided=5), head, units, window=WINDOW, reserve=RESERVE, count=count
    )
    validate_chat(out, TOOLS)
    outputs = [m for m in out if m["role"] == "tool"]
    assert len(outputs) <= 2 + 5  # keep_recent whole, and at most 5 more (elided, or whole)
    assert out[-4:] == long_conversation[-4:] and omitted(out) == [2]
