"""The JSON texts of training examples, each message serialized once per tape.

Serializing messages is most of what an export costs, and most of it would be repeated: the
examples of one tape are prefixes of one another (each request is the previous one plus the steps
since), and the prompts of one node share their message dicts and tool list. `share_texts` makes
the texts of a tape's examples together, continuing the previous example's texts, chat line and
hash instead of starting over; `example_texts` finds them again for the example's key and its
chat line.

What is made once is found by the identity of the object it was made from, never by equality:
equal dicts may still serialize differently (`{"n": 1}` and `{"n": 1.0}`). Three caches hold it:
the texts of message dicts (for one tape) and of tool lists (across tapes) in `IdentityCache`s,
and the examples' texts in a `WeakIdentityCache` (an entry lives as long as its example). They
are correct as long as a prompt is not changed in place once its example exists, which the
export never does.
"""

from __future__ import annotations

import hashlib
import json
import operator
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from tapeagents.export.examples import TrainingExample

__all__ = [
    "ExampleTexts",
    "IdentityCache",
    "WeakIdentityCache",
    "example_texts",
    "json_text",
    "share_texts",
]

K = TypeVar("K")
V = TypeVar("V")


def _make_json_text() -> Callable[[Any], str]:
    """`json.dumps(value, ensure_ascii=False)`, with the C encoder that `json.dumps` builds at
    every call built once, with the same settings."""
    # c_make_encoder is the C accelerator, which typeshed does not declare.
    from json.encoder import JSONEncoder, c_make_encoder, encode_basestring  # type: ignore[attr-defined]

    if c_make_encoder is None:  # a Python without the C accelerator
        return lambda value: json.dumps(value, ensure_ascii=False)
    default = JSONEncoder().default  # raises the TypeError that json.dumps raises
    encode = c_make_encoder(None, default, encode_basestring, None, ": ", ", ", False, False, True)
    return lambda value: "".join(encode(value, 0))


json_text: Callable[[Any], str] = _make_json_text()
"""`json.dumps(value, ensure_ascii=False)`, the same text, without building an encoder per call."""


class IdentityCache(Generic[K, V]):
    """Values made from objects that cannot be hashed (dicts, lists), found by the object itself.

    Each key object is held while its value is cached, so no other object can take its `id` and
    be given its value. With a `limit`, the cache starts over when it is full.
    """

    __slots__ = ("_entries", "_limit")

    def __init__(self, *, limit: int | None = None) -> None:
        self._entries: dict[int, tuple[K, V]] = {}
        self._limit = limit

    def get(self, key: K) -> V | None:
        found = self._entries.get(id(key))
        return found[1] if found is not None and found[0] is key else None

    def put(self, key: K, value: V) -> V:
        if self._limit is not None and len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[id(key)] = (key, value)
        return value


class WeakIdentityCache(Generic[K, V]):
    """Values attached to live objects that cannot be hashed (pydantic models), found by the
    object itself.

    The key is held weakly: its entry goes when the object does, before its `id` can be reused,
    and the cache keeps nothing alive.
    """

    __slots__ = ("_entries", "_forget")

    def __init__(self) -> None:
        entries: dict[int, tuple[_KeyRef, V]] = {}

        def forget(ref: _KeyRef) -> None:  # called as the key object goes
            if (found := entries.get(ref.key_id)) is not None and found[0] is ref:
                del entries[ref.key_id]

        self._entries = entries
        self._forget = forget

    def get(self, key: K) -> V | None:
        found = self._entries.get(id(key))
        return found[1] if found is not None and found[0]() is key else None

    def put(self, key: K, value: V) -> V:
        ref = _KeyRef(key, self._forget)
        ref.key_id = key_id = id(key)
        self._entries[key_id] = (ref, value)
        return value


class _KeyRef(weakref.ref):  # type: ignore[type-arg]  # refers to any key type
    """A weak reference that remembers the `id` its object had, to find its entry afterwards."""

    __slots__ = ("key_id",)
    key_id: int


class ExampleTexts:
    """A training example's JSON texts: its request's messages, tools and answer."""

    __slots__ = ("_key", "line", "messages", "output", "prefix_hash", "texts", "tools")

    def __init__(
        self,
        messages: list[dict[str, Any]],
        texts: list[str],
        line: str,
        prefix_hash: Any,
        tools: str,
        output: str,
    ) -> None:
        self.messages = messages
        """The request's messages the texts were made from."""
        self.texts = texts
        """The JSON text of each message."""
        self.line = line
        """The messages as the chat JSONL writes them: comma-separated, earlier assistant
        messages with `"weight": 0`."""
        self.prefix_hash = prefix_hash
        """SHA-256 state after the message texts, one a line (the start of `key`)."""
        self.tools = tools
        """The JSON text of the tool list (`null` without tools)."""
        self.output = output
        """The JSON text of the answer as an assistant message."""
        self._key: str | None = None

    def key(self) -> str:
        """The SHA-256 of the texts of the messages, the tools and the answer, one a line."""
        if self._key is None:
            digest = self.prefix_hash.copy()
            digest.update(f"{self.tools}\n{self.output}".encode())
            self._key = digest.hexdigest()[:32]
        return self._key


_EXAMPLE_TEXTS: WeakIdentityCache[TrainingExample, ExampleTexts] = WeakIdentityCache()
"""The texts of live examples, made by `share_texts` for all the examples of a tape at once."""

_TOOLS_TEXTS: IdentityCache[Any, str] = IdentityCache(limit=256)
"""JSON of tool lists: a node's prompts share one tool list, on every tape (the limit only
bounds a process that makes many nodes)."""


def example_texts(example: TrainingExample) -> ExampleTexts:
    """The example's texts: those made with its tape's examples, else made now for it alone."""
    found = _EXAMPLE_TEXTS.get(example)
    if found is None:
        (found,) = share_texts([example])
    return found


def share_texts(examples: Sequence[TrainingExample]) -> list[ExampleTexts]:
    """Make the texts of a tape's examples (in tape order), each message serialized once.

    When an example's request starts with the previous example's messages (the same dicts), its
    texts, chat line and hash continue the previous ones.
    """
    message_texts: IdentityCache[dict[str, Any], tuple[str, str]] = IdentityCache()
    made: list[ExampleTexts] = []
    previous: ExampleTexts | None = None
    for example in examples:
        messages = example.prompt.messages
        start = 0
        if previous is not None and _starts_with(messages, previous.messages):
            start = len(previous.messages)
        texts, lines = [], []
        for message in messages[start:]:
            found = message_texts.get(message)
            if found is None:
                text = json_text(message)
                line = text[:-1] + ', "weight": 0}' if message.get("role") == "assistant" else text
                found = message_texts.put(message, (text, line))
            texts.append(found[0])
            lines.append(found[1])
        if previous is not None and start:
            texts = previous.texts + texts
            line = ", ".join([previous.line, *lines]) if lines else previous.line
            digest = previous.prefix_hash.copy()
        else:
            line = ", ".join(lines)
            digest = hashlib.sha256()
        if len(texts) > start:
            digest.update("".join(f"{text}\n" for text in texts[start:]).encode())
        previous = ExampleTexts(
            messages,
            texts,
            line,
            digest,
            _tools_text(example.prompt.tools),
            json_text(example.output.as_message()),
        )
        made.append(_EXAMPLE_TEXTS.put(example, previous))
    return made


def _starts_with(messages: list[dict[str, Any]], prefix: list[dict[str, Any]]) -> bool:
    """Whether `messages` starts with the very dicts of `prefix`."""
    return len(messages) >= len(prefix) and all(map(operator.is_, messages, prefix))


def _tools_text(tools: Any) -> str:
    found = _TOOLS_TEXTS.get(tools)
    return found if found is not None else _TOOLS_TEXTS.put(tools, json_text(tools))
