"""The server over raw HTTP: the wire format, errors, the API key, hosts and concurrency."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tapeagents.errors import ContextWindowExceeded, LLMError
from tapeagents.llms import (
    LLMOutput,
    Prompt,
    ScriptedLLM,
    TestLLM,
    TokenLogprob,
    TopLogprob,
    Usage,
    tool_call,
)
from tapeagents.serve import serving
from tests.serve.doubles import TOOLS, FailingLLM, SlowLLM, StreamingLLM

HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """A server over `TestLLM`: calls each offered tool once, then answers "Hello there"."""
    with serving(TestLLM(text="Hello there")) as base_url:
        yield base_url


def post(url: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/chat/completions", content=content, headers=headers, timeout=10)


def events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of a server-sent event stream, checking the framing."""
    text = response.text
    assert text.endswith("\n\n")
    blocks = text.split("\n\n")[:-1]
    assert all(block.startswith("data: ") for block in blocks), blocks
    return [block[len("data: ") :] for block in blocks]


def stream(url: str, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any]]]:
    response = post(url, {**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = events(response)
    assert payloads[-1] == "[DONE]"
    return response, [json.loads(p) for p in payloads[:-1]]


def test_lists_the_served_model(url: str) -> None:
    models = httpx.get(f"{url}/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"]) for m in models["data"]] == [("test", "model")]
    assert httpx.get(f"{url}/models/test").json()["id"] == "test"
    missing = httpx.get(f"{url}/models/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_text_answer(url: str) -> None:
    response = post(url, {"model": "test", "messages": HELLO})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "test" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Hello there"
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_a_tool_call_answer(url: str) -> None:
    body = post(url, {"model": "test", "messages": HELLO, "tools": TOOLS}).json()
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"] == {"name": "add", "arguments": '{"a": 0, "b": 0}'}


def test_unknown_fields_are_ignored_and_the_model_may_be_left_out(url: str) -> None:
    body = {
        "messages": HELLO,
        "frequency_penalty": 0.5,
        "user": "someone",
        "metadata": {"a": "b"},
        "parallel_tool_calls": False,
        "n": 1,
    }
    response = post(url, body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello there"


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (b"{not json", None, "not valid JSON"),
        ([1, 2], None, "JSON object"),
        ({"messages": []}, "messages", "at least 1 item"),
        ({}, "messages", "Field required"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "'user'"),
        ({"messages": [{"role": "user"}]}, "messages.0", "needs 'content'"),
        (
            {"messages": [{"role": "tool", "content": "5"}]},
            "messages.0",
            "tool_call_id",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content.0.type",
            "text only",
        ),
        ({"messages": HELLO, "n": 3}, "n", "one choice per request"),
        ({"messages": HELLO, "temperature": 5}, "temperature", "less than or equal to 2"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"messages": HELLO, "top_logprobs": 3}, "top_logprobs", "needs logprobs=true"),
        (
            {"messages": HELLO, "logprobs": True, "top_logprobs": 50},
            "top_logprobs",
            "less than or equal to 20",
        ),
        ({"messages": HELLO, "tool_choice": "required"}, "tool_choice", "needs tools"),
        (
            {
                "messages": HELLO,
                "tools": TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "mul"}},
            },
            "tool_choice",
            "not among the tools (add)",
        ),
        ({"messages": HELLO, "tools": [{"type": "retrieval"}]}, "tools.0.type", "'function'"),
        ({"messages": HELLO, "response_format": {"type": "yaml"}}, "response_format.type", ""),
    ],
)
def test_invalid_requests_get_an_openai_error(
    url: str, body: Any, param: str | None, says: str
) -> None:
    response = post(url, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]
    assert "Traceback" not in response.text


def test_an_unknown_model_or_route_is_a_404_in_openai_form(url: str) -> None:
    response = post(url, {"model": "gpt-4o", "messages": HELLO})
    assert response.status_code == 404
    assert "'gpt-4o' is not served here" in response.json()["error"]["message"]
    assert "'test'" in response.json()["error"]["message"]
    response = httpx.post(f"{url}/completions", json={"prompt": "hi"})
    assert response.status_code == 404
    assert "POST /v1/chat/completions" in response.json()["error"]["message"]


def test_the_stream_format(url: str) -> None:
    _, chunks = stream(url, {"model": "test", "messages": HELLO})
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Hello there"
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert all("usage" not in c for c in chunks)  # only when stream_options ask for it


def test_the_stream_reports_usage_last_when_asked(url: str) -> None:
    body = {"messages": HELLO, "stream_options": {"include_usage": True}}
    _, chunks = stream(url, body)
    *answer, last = chunks
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    assert all(c["usage"] is None for c in answer)
    assert answer[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_streamed_tool_call(url: str) -> None:
    _, chunks = stream(url, {"messages": HELLO, "tools": TOOLS})
    calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "add")]
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 0, "b": 0}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_text_streams_live_but_a_tool_call_written_as_text_waits() -> None:
    """A local model writes its call as JSON in the text: that text never reaches the client."""
    pieces = ["Let me ", "add. ", '{"name": "add", ', '"arguments": {"a": 2, "b": 3}}']
    final = LLMOutput(content="Let me add.", tool_calls=[tool_call("add", '{"a": 2, "b": 3}')])
    with serving(StreamingLLM(pieces, final)) as url:
        _, chunks = stream(url, {"messages": HELLO, "tools": TOOLS})
        _, plain = stream(url, {"messages": HELLO})  # no tools: every piece as it comes
    contents = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert [text for text in contents if text] == ["Let me", " add."]
    calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [c["function"]["arguments"] for c in calls] == ['{"a": 2, "b": 3}']
    plain_contents = [c["choices"][0]["delta"].get("content") for c in plain]
    assert [text for text in plain_contents if text] == pieces


def test_logprobs_with_top_alternatives() -> None:
    tokens = [
        TokenLogprob(
            token=token,
            logprob=-0.1 * (i + 1),
            top_logprobs=[
                TopLogprob(token=token, logprob=-0.1 * (i + 1)),
                TopLogprob(token="x", logprob=-3.0),
                TopLogprob(token="y", logprob=-4.0),
            ],
        )
        for i, token in enumerate(["Hi", " é"])
    ]
    output = LLMOutput(content="Hi é", logprobs=tokens, usage=Usage(completion_tokens=2))
    with serving(ScriptedLLM(lambda prompt: output)) as url:
        plain = post(url, {"messages": HELLO}).json()
        asked = post(url, {"messages": HELLO, "logprobs": True, "top_logprobs": 2}).json()
        no_top = post(url, {"messages": HELLO, "logprobs": True}).json()
        _, chunks = stream(url, {"messages": HELLO, "logprobs": True, "top_logprobs": 1})
    assert plain["choices"][0]["logprobs"] is None
    content = asked["choices"][0]["logprobs"]["content"]
    assert [(t["token"], t["logprob"]) for t in content] == [("Hi", -0.1), (" é", -0.2)]
    assert content[1]["bytes"] == list(" é".encode())
    assert [[a["token"] for a in t["top_logprobs"]] for t in content] == [["Hi", "x"], [" é", "x"]]
    assert all(t["top_logprobs"] == [] for t in no_top["choices"][0]["logprobs"]["content"])
    streamed = [t for c in chunks for t in (c["choices"][0]["logprobs"] or {}).get("content", [])]
    assert [(t["token"], len(t["top_logprobs"])) for t in streamed] == [("Hi", 1), (" é", 1)]


def test_the_request_becomes_the_prompt() -> None:
    llm = ScriptedLLM(lambda prompt: "ok")
    messages = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "2 + "}, {"type": "text", "text": "3"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 2}}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
    ]
    schema = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}
    with serving(llm) as url:
        post(url, {"messages": messages, "tools": TOOLS, "tool_choice": "auto"})
        post(url, {"messages": HELLO, "tools": TOOLS, "tool_choice": "required"})
        named = {"type": "function", "function": {"name": "add"}}
        post(url, {"messages": HELLO, "tools": TOOLS, "tool_choice": named})
        post(url, {"messages": HELLO, "response_format": schema})
        post(url, {"messages": HELLO, "response_format": {"type": "text"}})
    first, required, one, structured, text = llm.prompts
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
    assert first == Prompt(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2 + 3"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [call],
            },
            {"role": "tool", "content": "5", "tool_call_id": "c1"},
        ],
        tools=TOOLS,
        tool_choice=None,  # "auto" is every backend's default
    )
    assert required.tool_choice == "required" and one.tool_choice == named
    assert structured.response_format == schema and text.response_format is None


def test_a_failing_model_is_a_500_with_its_message_and_no_traceback() -> None:
    llm = FailingLLM(lambda: LLMError("The engine ran out of memory; lower the batch size."))
    with serving(llm) as url:
        response = post(url, {"messages": HELLO})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "'failing' failed: The engine ran out of memory" in error["message"]


def test_a_crash_is_a_500_naming_the_exception_only() -> None:
    llm = FailingLLM(lambda: ZeroDivisionError("internal detail"))
    with serving(llm) as url:
        response = post(url, {"messages": HELLO})
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    assert "ZeroDivisionError" in message and "server's log" in message
    assert "internal detail" not in response.text and "Traceback" not in response.text


def test_a_prompt_too_long_is_a_400_that_clients_recognize() -> None:
    error = ContextWindowExceeded("2100 tokens exceed the model's context window of 2048 tokens.")
    with serving(FailingLLM(lambda: error)) as url:
        response = post(url, {"messages": HELLO})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_stream_failures() -> None:
    """Before any output: an HTTP error; after some text: an error event, then [DONE]."""
    early = StreamingLLM([], error=LLMError("no engine"), fail_at_once=True)
    with serving(early) as url:
        response = post(url, {"messages": HELLO, "stream": True})
    assert response.status_code == 500 and "no engine" in response.json()["error"]["message"]
    assert early.closed
    late = StreamingLLM(["Hel"], error=LLMError("the engine stopped"))
    with serving(late) as url:
        response = post(url, {"messages": HELLO, "stream": True})
    assert response.status_code == 200
    payloads = events(response)
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["type"] == "server_error" and "the engine stopped" in error["message"]
    assert json.loads(payloads[1])["choices"][0]["delta"] == {"content": "Hel"}
    assert late.closed


def test_the_api_key() -> None:
    with serving(TestLLM(), api_key="s3cret") as url:
        missing = post(url, {"messages": HELLO})
        wrong = post(url, {"messages": HELLO}, Authorization="Bearer nope")
        right = post(url, {"messages": HELLO}, Authorization="Bearer s3cret")
        models = httpx.get(f"{url}/models")
        health = httpx.get(url.removesuffix("/v1") + "/health")
    for refused in (missing, wrong, models):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert "Authorization: Bearer" in refused.json()["error"]["message"]
    assert right.status_code == 200
    assert health.status_code == 200  # for load balancers and start scripts


def test_a_loopback_server_answers_loopback_names_only(url: str) -> None:
    """A web page cannot reach the model through DNS rebinding."""
    rebound = httpx.get(f"{url}/models", headers={"Host": "attacker.example"})
    assert rebound.status_code == 403
    assert rebound.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(f"{url}/models", headers={"Host": "localhost:1234"}).status_code == 200


def test_concurrent_requests_are_answered_concurrently() -> None:
    llm = SlowLLM(delay=0.5)
    with serving(llm) as url, ThreadPoolExecutor(8) as pool:
        start = time.perf_counter()
        responses = list(pool.map(lambda _: post(url, {"messages": HELLO}), range(8)))
        elapsed = time.perf_counter() - start
    assert all(r.status_code == 200 for r in responses)
    assert llm.most_in_flight == 8
    assert elapsed < 2.0  # one after another would take 4 s
