"""Page snapshots: stable element references, trimming, and a parser for scripted policies.

Playwright numbers the elements of a page (`[ref=e57]`) with a counter that never restarts, so
the same page shows different numbers depending on its history. `RefMap` renumbers them per
episode in order of first appearance: the same page history gives the same snapshot text,
which keeps tapes replayable and demonstrations clean.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Element", "RefMap", "parse_snapshot", "trim_snapshot"]

_REF = re.compile(r"\[ref=((?:f\d+)?e\d+)\]")


class RefMap:
    """Our element references (`e1`, `e2`, ...) for Playwright's, for one page session."""

    def __init__(self) -> None:
        self._ours: dict[str, str] = {}
        self._playwright: dict[str, str] = {}

    def clear(self) -> None:
        """Forget all references (a new episode starts numbering at e1 again)."""
        self._ours.clear()
        self._playwright.clear()

    def rewrite(self, snapshot: str) -> str:
        """The snapshot with Playwright's references replaced by ours."""

        def ours(match: re.Match[str]) -> str:
            theirs = match.group(1)
            ref = self._ours.get(theirs)
            if ref is None:
                ref = f"e{len(self._ours) + 1}"
                self._ours[theirs] = ref
                self._playwright[ref] = theirs
            return f"[ref={ref}]"

        return _REF.sub(ours, snapshot)

    def resolve(self, ref: str) -> str | None:
        """Playwright's reference for one of ours, or None if this session never showed it."""
        return self._playwright.get(ref)


def trim_snapshot(snapshot: str, max_chars: int) -> str:
    """Cut a long snapshot at a line boundary and say how much was left out."""
    if len(snapshot) <= max_chars:
        return snapshot
    cut = snapshot.rfind("\n", 0, max_chars)
    if cut <= 0:
        cut = max_chars
    kept, rest = snapshot[:cut], snapshot[cut:]
    lines = rest.count("\n") + (0 if rest.endswith("\n") else 1)
    return (
        f"{kept}\n[... page trimmed: {lines} more lines ({len(rest)} characters) not shown; "
        "scroll or act on the elements above ...]"
    )


@dataclass
class Element:
    """One node of a parsed snapshot."""

    role: str
    """ARIA role (`button`, `textbox`, ...), or `text` for loose text."""
    name: str = ""
    """Accessible name (a button's label, a field's placeholder)."""
    ref: str | None = None
    """Reference to act on, like e12."""
    attributes: dict[str, str] = field(default_factory=dict)
    """Flags and values in brackets: `checked`, `selected`, `level`, `active`, ..."""
    text: str = ""
    """Inline text after the colon (a paragraph's text, a field's value)."""
    properties: dict[str, str] = field(default_factory=dict)
    """Child properties such as `/url` of a link."""
    children: list[Element] = field(default_factory=list)

    def walk(self) -> Iterator[Element]:
        """This element and all below it, in document order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def all_text(self) -> str:
        """The name and text of this element and all below it, space-separated."""
        parts = [p for e in self.walk() for p in (e.name, e.text) if p]
        return " ".join(parts)


_LINE = re.compile(r"^(\s*)- (.*)$")
_ATTR = re.compile(r"\[([^\]=]+)(?:=([^\]]*))?\]")


def parse_snapshot(snapshot: str) -> Element:
    """Parse an ARIA snapshot (Playwright's YAML form) into a tree under a `root` element."""
    root = Element(role="root")
    stack: list[tuple[int, Element]] = [(-1, root)]
    for line in snapshot.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        indent, body = len(match.group(1)), match.group(2)
        key, value = _split_key(body)
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if key.startswith("/"):
            parent.properties[key] = value
            continue
        element = _element(key, value)
        parent.children.append(element)
        stack.append((indent, element))
    return root


def _split_key(body: str) -> tuple[str, str]:
    """The key and the value of a YAML list item `key: value` (either may be quoted)."""
    if body.startswith("'"):
        i = 1
        chars = []
        while i < len(body):
            if body[i] == "'":
                if body[i + 1 : i + 2] == "'":
                    chars.append("'")
                    i += 2
                    continue
                break
            chars.append(body[i])
            i += 1
        key, rest = "".join(chars), body[i + 1 :]
    else:
        colon = body.find(": ")
        if colon >= 0:
            key, rest = body[:colon], body[colon:]
        elif body.endswith(":"):
            key, rest = body[:-1], ""
        else:
            key, rest = body, ""
    rest = rest.lstrip(":").strip()
    return key, _unquote(rest)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except json.JSONDecodeError:
            return value[1:-1]
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    return value


def _element(key: str, value: str) -> Element:
    role, _, rest = key.partition(" ")
    name = ""
    rest = rest.strip()
    if rest.startswith('"'):
        end = 1
        while end < len(rest) and rest[end] != '"':
            end += 2 if rest[end] == "\\" else 1
        name = _unquote(rest[: end + 1])
        rest = rest[end + 1 :]
    attributes = {m.group(1): m.group(2) or "" for m in _ATTR.finditer(rest)}
    ref = attributes.pop("ref", None)
    return Element(role=role, name=name, ref=ref, attributes=attributes, text=value)
