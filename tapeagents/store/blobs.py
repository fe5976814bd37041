"""Content-addressed storage of long strings: each one is stored once and referenced by hash.

Strings of at least `BLOB_MIN_LENGTH` characters in steps, prompts and outputs are replaced by
`{"$blob": "<hash>"}` before they are written, so a message repeated in every prompt of a long
tape, or a model output that is also a step's text, takes one row.

A model may write any JSON, a `{"$blob": ...}` object included, so content must never be taken
for a reference. Writing therefore escapes every object key made of dollar signs followed by
`blob` (`$blob`, `$$blob`, ...) by adding one `$`, and reading removes it: in stored JSON a key
`$blob` is always a reference, a key `$$blob` is content's `$blob`. Rows written before the
escape read as before; only a content key `$$blob` in one of them would read as `$blob`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from json.encoder import encode_basestring as _json_string  # C-accelerated JSON string literal
from typing import Any

from tapeagents.errors import StoreError

__all__ = [
    "BLOB_MIN_LENGTH",
    "MissingBlob",
    "blob_refs",
    "externalize",
    "find_blob_refs",
    "insert_blobs",
    "internalize",
]

BLOB_MIN_LENGTH = 256
"""Strings at least this long are stored once in `blobs` and referenced by hash."""
_BLOB_KEY = "$blob"
_ESCAPED_KEY = re.compile(r"\$+blob")  # keys that content must not write as they are
_HASH = re.compile(r"[0-9a-f]{32}")


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _is_ref(value: dict[Any, Any]) -> bool:
    """Whether a stored object is a blob reference (content's `$blob` keys are escaped)."""
    if len(value) != 1 or _BLOB_KEY not in value:
        return False
    key = value[_BLOB_KEY]
    return isinstance(key, str) and _HASH.fullmatch(key) is not None


class MissingBlob(StoreError):
    """A stored reference names a long text that the `blobs` table does not hold. The readers
    of steps and LLM calls turn it into an error that names the tape and the step."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"The long text with hash {key} is missing from the store's blobs table: the "
            "database was changed outside tapeagents. Restore it from a backup."
        )

    def __reduce__(self) -> tuple[type[MissingBlob], tuple[str]]:
        return type(self), (self.key,)


def externalize(value: Any, found: dict[str, str]) -> Any:
    """Replace long strings by blob references, collecting the blobs in `found`; object keys
    that could be read as a reference are escaped (see the module's docstring)."""
    if isinstance(value, str):
        if len(value) >= BLOB_MIN_LENGTH:
            key = _hash(value)
            found[key] = value
            return {_BLOB_KEY: key}
        return value
    if isinstance(value, dict):
        return {
            ("$" + k if isinstance(k, str) and _ESCAPED_KEY.fullmatch(k) else k): externalize(
                v, found
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [externalize(v, found) for v in value]
    return value


def blob_refs(value: Any, refs: set[str]) -> None:
    """Add the blob hashes that parsed stored JSON refers to to `refs`."""
    if isinstance(value, dict):
        if _is_ref(value):
            refs.add(value[_BLOB_KEY])
            return
        for v in value.values():
            blob_refs(v, refs)
    elif isinstance(value, list):
        for v in value:
            blob_refs(v, refs)


def internalize(value: Any, texts: Mapping[str, str]) -> Any:
    """Parsed stored JSON as it was written: references replaced by their texts, keys
    unescaped."""
    if isinstance(value, dict):
        if _is_ref(value):
            key = value[_BLOB_KEY]
            if key not in texts:
                raise MissingBlob(key)
            return texts[key]
        return {
            (k[1:] if k.startswith("$$") and _ESCAPED_KEY.fullmatch(k) else k): internalize(
                v, texts
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [internalize(v, texts) for v in value]
    return value


# In the store's compact JSON every quote inside a string is escaped, and a key follows `{` or
# `,` directly. So `{"$blob":"<hash>"}` only ever matches a real reference, and `{"$$blob":` or
# `,"$$blob":` only an escaped key: neither can match inside a string.
_REF = re.compile(r'\{"\$blob":"([0-9a-f]{32})"\}')
_REF_OR_ESCAPED = re.compile(r'\{"\$blob":"([0-9a-f]{32})"\}|([{,]")\$(\$+blob":)')


def find_blob_refs(json_text: str) -> list[str]:
    """The blob hashes referenced in compact JSON text (no parsing needed)."""
    return _REF.findall(json_text) if '"$blob"' in json_text else []


def insert_blobs(json_text: str, texts: Mapping[str, str]) -> str:
    """The JSON text as it was written: every blob reference replaced by its string, and
    escaped keys unescaped."""
    if '$blob"' not in json_text:
        return json_text

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key is None:  # an escaped key: drop one `$`
            return match.group(2) + match.group(3)
        if key not in texts:
            raise MissingBlob(key)
        return _json_string(texts[key])

    return _REF_OR_ESCAPED.sub(replace, json_text)
