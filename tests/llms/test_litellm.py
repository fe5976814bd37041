"""Offline tests of `LiteLLM`: litellm's `mock_response` and `mock_tool_calls` act as the server,
or a stub OpenAI chat server on 127.0.0.1."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports litellm

import asyncio
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tapeagents import Agent, AssistantMessage, LLMNode, run_sync
from tapeagents.errors import ContextWindowExceeded, LLMError, UsageError
from tapeagents.llms import LLM, CachedLLM
from tapeagents.llms.base import LLMOutput, Prompt, TextDelta, ToolCallRequest
from tapeagents.llms.litellm import LiteLLM

litellm = pytest.importorskip("litellm")


MODEL = "gpt-4o-mini"  # priced in litellm's bundled cost map; never contacted (mocks)
PROMPT = Prompt(messages=[{"role": "user", "content": "Say hello."}])
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            },
        },
    }
]


class CountingCompletion:
    """Wraps `litellm.acompletion`, recording the kwargs of every call."""

    def __init__(self) -> None:
        self.original = litellm.acompletion
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return await self.original(**kwargs)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingCompletion:
    wrapper = CountingCompletion()
    monkeypatch.setattr(litellm, "acompletion", wrapper)
    return wrapper


async def collect(llm: LiteLLM, prompt: Prompt = PROMPT) -> tuple[list[str], LLMOutput]:
    items = [item async for item in llm.stream(prompt)]
    *deltas, final = items
    assert all(isinstance(d, TextDelta) for d in deltas)
    assert isinstance(final, LLMOutput)
    return [d.text for d in deltas], final


async def test_text_completion(counting: CountingCompletion) -> None:
    llm = LiteLLM(MODEL, temperature=0.0, mock_response="Hello there!")
    call = await llm.call(PROMPT)
    assert call.output.content == "Hello there!"
    assert call.output.tool_calls == []
    assert call.output.usage.prompt_tokens > 0 and call.output.usage.completion_tokens > 0
    assert call.output.cost is not None and call.output.cost > 0
    assert call.parameters == {"temperature": 0.0}  # mock_response is not recorded
    sent = counting.calls[0]
    assert sent["num_retries"] == 0 and sent["temperature"] == 0.0
    assert "tools" not in sent and "response_format" not in sent


async def test_unknown_model_has_no_cost() -> None:
    llm = LiteLLM("openai/no-such-model-for-pricing", mock_response="Hi")
    output = await llm.generate(PROMPT)
    assert output.content == "Hi" and output.cost is None


async def test_tools_and_response_format_are_sent(counting: CountingCompletion) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    llm = LiteLLM(MODEL, mock_response="{}")
    await llm.generate(Prompt(messages=PROMPT.messages, tools=TOOLS, response_format=schema))
    sent = counting.calls[0]
    assert sent["tools"] == TOOLS
    # a bare JSON schema is wrapped into OpenAI's response_format
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == schema


async def test_tool_calls() -> None:
    arguments = '{"a": 1,  "b": 2}'  # odd spacing must survive untouched
    llm = LiteLLM(
        MODEL,
        mock_response="",
        mock_tool_calls=[
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "add", "arguments": arguments},
            }
        ],
    )
    output = await llm.generate(Prompt(messages=PROMPT.messages, tools=TOOLS))
    assert output.tool_calls == [ToolCallRequest(id="call_1", name="add", arguments=arguments)]
    assert llm.parameters == {}


async def test_logprobs_when_requested() -> None:
    response = litellm.ModelResponse(
        model=MODEL,
        choices=[
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hi!"},
                "logprobs": {
                    "content": [
                        {"token": "Hi", "logprob": -0.25, "bytes": None, "top_logprobs": []},
                        {"token": "!", "logprob": -1.5, "bytes": None, "top_logprobs": []},
                    ]
                },
            }
        ],
        usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    )
    llm = LiteLLM(MODEL, logprobs=True, mock_response=response)
    output = await llm.generate(PROMPT)
    assert llm.parameters == {"logprobs": True}
    assert [(t.token, t.logprob) for t in output.logprobs or []] == [("Hi", -0.25), ("!", -1.5)]
    assert (output.usage.prompt_tokens, output.usage.completion_tokens) == (5, 2)
    # not requested: not returned
    assert (await LiteLLM(MODEL, mock_response=response).generate(PROMPT)).logprobs is None


async def test_streaming_deltas_concatenate(counting: CountingCompletion) -> None:
    text = "Streaming works, piece by piece."
    llm = LiteLLM(MODEL, mock_response=text)
    deltas, final = await collect(llm)
    assert len(deltas) > 1
    assert "".join(deltas) == final.content == text
    assert final.usage.completion_tokens > 0
    assert counting.calls[0]["stream"] is True
    assert counting.calls[0]["stream_options"] == {"include_usage": True}


async def test_streaming_tool_calls_single_chunk() -> None:
    """litellm's mock turns a full response into one chunk that carries the whole call."""
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "add", "arguments": "{}"}}
        ],
    }
    response = litellm.ModelResponse(
        model=MODEL, choices=[{"index": 0, "message": message, "finish_reason": "tool_calls"}]
    )
    deltas, final = await collect(LiteLLM(MODEL, mock_response=response))
    assert deltas == []
    assert final.tool_calls == [ToolCallRequest(id="call_9", name="add", arguments="{}")]


async def test_streaming_tool_calls_accumulate_by_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids and names come first, argument text in pieces, calls interleaved by index."""
    from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

    def chunk(**delta: Any) -> Any:
        return ModelResponseStream(choices=[StreamingChoices(index=0, delta=Delta(**delta))])

    def call(index: int, arguments: str, id: str | None = None, name: str | None = None) -> dict:
        return {"index": index, "id": id, "type": "function",
                "function": {"name": name, "arguments": arguments}}  # fmt: skip

    chunks = [
        chunk(role="assistant", content="Adding."),
        chunk(tool_calls=[call(0, "", id="call_a", name="add")]),
        chunk(tool_calls=[call(0, '{"a": ')]),
        chunk(tool_calls=[call(1, '{"a"', id="call_b", name="add")]),
        chunk(tool_calls=[call(0, "1}")]),
        chunk(tool_calls=[call(1, ": 2}")]),
    ]
    usage_chunk = ModelResponseStream(choices=[])
    usage_chunk.usage = litellm.Usage(prompt_tokens=7, completion_tokens=11, total_tokens=18)

    async def fake_acompletion(**kwargs: Any) -> Any:
        assert kwargs["stream"] is True

        async def gen() -> Any:
            for c in [*chunks, usage_chunk]:
                yield c

        return gen()

    monkeypatch.setattr(litellm, "acompletion", fake_acompletion)
    deltas, final = await collect(LiteLLM(MODEL))
    assert deltas == ["Adding."]
    assert final.content == "Adding."
    assert final.tool_calls == [
        ToolCallRequest(id="call_a", name="add", arguments='{"a": 1}'),
        ToolCallRequest(id="call_b", name="add", arguments='{"a": 2}'),
    ]
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (7, 11)
    assert final.cost is not None and final.cost > 0


async def test_retries_transient_errors_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    original = litellm.acompletion
    rate_limit = litellm.RateLimitError("slow down", llm_provider="openai", model=MODEL)

    async def flaky(**kwargs: Any) -> Any:
        calls.append(kwargs)
        # the first two attempts hit a (mocked) rate limit, the third answers
        mock = rate_limit if len(calls) <= 2 else "Finally."
        return await original(**{**kwargs, "mock_response": mock})

    monkeypatch.setattr(litellm, "acompletion", flaky)
    llm = LiteLLM(MODEL, max_retries=3, backoff=0.001)
    output = await llm.generate(PROMPT)
    assert output.content == "Finally."
    assert len(calls) == 3
    assert llm.retries_total == 2


async def test_gives_up_after_max_retries(counting: CountingCompletion) -> None:
    error = litellm.InternalServerError("boom", llm_provider="openai", model=MODEL)
    llm = LiteLLM(MODEL, max_retries=2, backoff=0.001, mock_response=error)
    with pytest.raises(LLMError) as info:
        await llm.generate(PROMPT)
    assert not isinstance(info.value, ContextWindowExceeded)
    assert len(counting.calls) == 3
    assert llm.retries_total == 2
    message = str(info.value)
    assert MODEL in message and "boom" in message and "after 2 retries" in message


async def test_streaming_retries_before_first_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    original = litellm.acompletion

    async def flaky(**kwargs: Any) -> Any:
        calls.append(kwargs)
        if len(calls) == 1:
            raise litellm.APIConnectionError("reset", llm_provider="openai", model=MODEL)
        return await original(**{**kwargs, "mock_response": "Back."})

    monkeypatch.setattr(litellm, "acompletion", flaky)
    llm = LiteLLM(MODEL, backoff=0.001)
    deltas, final = await collect(llm)
    assert "".join(deltas) == final.content == "Back."
    assert len(calls) == 2 and llm.retries_total == 1


async def test_streaming_failure_after_text_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Text already went to the caller, so a retry would repeat it: fail instead."""
    from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

    calls = 0

    async def broken(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1

        async def gen() -> Any:
            yield ModelResponseStream(choices=[StreamingChoices(delta=Delta(content="Par"))])
            raise litellm.APIConnectionError("dropped", llm_provider="openai", model=MODEL)

        return gen()

    monkeypatch.setattr(litellm, "acompletion", broken)
    llm = LiteLLM(MODEL, backoff=0.001)
    seen: list[Any] = []
    with pytest.raises(LLMError, match="dropped"):
        async for item in llm.stream(PROMPT):
            seen.append(item)
    assert seen == [TextDelta(text="Par")]
    assert calls == 1 and llm.retries_total == 0


async def test_context_window_exceeded(counting: CountingCompletion) -> None:
    error = litellm.ContextWindowExceededError(
        "too many tokens", model=MODEL, llm_provider="openai"
    )
    llm = LiteLLM(MODEL, backoff=0.001, mock_response=error)
    with pytest.raises(ContextWindowExceeded, match="context window") as info:
        await llm.generate(PROMPT)
    assert MODEL in str(info.value)
    assert len(counting.calls) == 1  # never retried
    with pytest.raises(ContextWindowExceeded):
        await collect(llm)


async def test_auth_error_is_not_retried(counting: CountingCompletion) -> None:
    error = litellm.AuthenticationError("invalid api key", llm_provider="openai", model=MODEL)
    llm = LiteLLM(MODEL, backoff=0.001, api_key="sk-wrong", mock_response=error)
    with pytest.raises(LLMError) as info:
        await llm.generate(PROMPT)
    assert len(counting.calls) == 1
    assert llm.retries_total == 0
    message = str(info.value)
    assert MODEL in message and "invalid api key" in message and "API key" in message
    assert "sk-wrong" not in message


async def test_api_key_is_never_recorded(counting: CountingCompletion) -> None:
    secret = "sk-very-secret-123"
    llm = LiteLLM(
        MODEL,
        api_key=secret,
        api_base="http://localhost:1234/v1",
        extra_headers={"Authorization": f"Bearer {secret}"},
        top_p=0.9,
        mock_response="ok",
    )
    assert llm.parameters == {"top_p": 0.9}
    assert secret not in repr(llm) and secret not in repr(vars(llm)) and secret not in str(llm)
    call = await llm.call(PROMPT)
    assert secret not in call.model_dump_json()
    sent = counting.calls[0]  # but it does reach litellm
    assert sent["api_key"] == secret and sent["api_base"] == "http://localhost:1234/v1"
    assert sent["extra_headers"] == {"Authorization": f"Bearer {secret}"}


def test_reserved_arguments_are_refused() -> None:
    with pytest.raises(UsageError, match="max_retries"):
        LiteLLM(MODEL, num_retries=3)
    with pytest.raises(UsageError):
        LiteLLM(MODEL, stream=True)


def test_request_ids_ignore_mocks_and_transport() -> None:
    plain = LiteLLM(MODEL, temperature=0.5)
    mocked = LiteLLM(MODEL, temperature=0.5, mock_response="x", timeout=5, max_retries=0)
    assert plain.request_id(PROMPT) == mocked.request_id(PROMPT)
    assert plain.request_id(PROMPT) != LiteLLM(MODEL, temperature=0.6).request_id(PROMPT)


def test_module_import_does_not_import_litellm() -> None:
    code = (
        "import sys\n"
        "import tapeagents.llms.litellm as m\n"
        "m.LiteLLM('gpt-4o-mini', api_key='k')\n"
        "assert 'litellm' not in sys.modules, 'litellm was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_missing_litellm_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import tapeagents.llms.litellm as module

    monkeypatch.setattr(module, "_litellm", None)
    monkeypatch.setitem(sys.modules, "litellm", None)  # makes `import litellm` fail
    with pytest.raises(UsageError, match=r"pip install 'tapeagents\[litellm\]'"):
        module._import_litellm()


# ----------------------------------------------------------------------------- log noise


class _ChatHandler(BaseHTTPRequestHandler):
    """An OpenAI chat endpoint that answers "echo: <last message>", streamed or not."""

    def log_message(self, format: str, *args: Any) -> None:  # quiet, like a real server
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        text = f"echo: {body['messages'][-1]['content']}"
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        head = {"id": "chatcmpl-1", "created": 0, "model": body["model"]}
        if body.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            delta = {"role": "assistant", "content": text}
            for chunk in (
                {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                {**head, "choices": [], "usage": usage},
            ):
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        message = {"role": "assistant", "content": text}
        data = json.dumps(
            {
                **head,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def chat_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 speaking the OpenAI chat API; yields its /v1 URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _two_sessions(base_url: str, *, cached: bool) -> list[str]:
    """Two `run_sync` sessions (each on its own event loop) with a LiteLLM backend."""
    llm: LLM = LiteLLM("openai/echo", api_base=base_url, api_key="sk-test")
    if cached:  # CachedLLM asks `generate`, litellm's non-streamed path; LLMNode streams
        llm = CachedLLM(llm)
    agent = Agent("chat", nodes=[LLMNode()], llms=llm)
    answers = []
    for question in ("first?", "second?"):
        result = run_sync(agent, question)
        last = result.tape.steps[-1]
        assert isinstance(last, AssistantMessage), result
        answers.append(last.content)
    return answers


LOOP_CHANGED = "event loop changed"


def _loop_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """litellm's warnings about its logging worker changing loops (its debug notes aside)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and LOOP_CHANGED in r.getMessage().lower()
    ]


@pytest.mark.parametrize("cached", [True, False], ids=["generate", "stream"])
def test_run_sync_sessions_leave_no_logging_worker_warning(
    chat_server: str,
    cached: bool,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="LiteLLM"):
        answers = _two_sessions(chat_server, cached=cached)
    assert answers == ["echo: first?", "echo: second?"]
    assert _loop_warnings(caplog) == []
    assert LOOP_CHANGED not in capfd.readouterr().err.lower()
    # nothing was silenced: litellm's own warnings still reach the user
    assert logging.getLogger("LiteLLM").isEnabledFor(logging.WARNING)


def test_without_the_wait_litellm_warns_across_loops(
    chat_server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The control: the sessions above do reproduce the warning when LiteLLM does not wait."""
    import tapeagents.llms.litellm as module

    pytest.importorskip("litellm.litellm_core_utils.logging_worker")
    asyncio.run(module._settle_logging())  # start from an empty queue

    async def nothing() -> None:
        pass

    monkeypatch.setattr(module, "_settle_logging", nothing)
    with caplog.at_level(logging.WARNING, logger="LiteLLM"):
        _two_sessions(chat_server, cached=True)
    assert _loop_warnings(caplog)  # "LoggingWorker: event loop changed; carried 1 pending ..."
    asyncio.run(module._settle_logging())  # leave nothing queued for the next test
