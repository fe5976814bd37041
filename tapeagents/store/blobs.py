"""Content-addressed storage of long strings: each one is stored once and referenced by hash.

Strings of at least `BLOB_MIN_LENGTH` characters in steps, prompts and outputs are replaced by
`{"$blob": "<hash>"}` before they are written, so a message repeated in every prompt of a long
tape, or a model output that is also a step's text, takes one row.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from json.encoder import encode_basestring as _json_string  # C-accelerated JSON string literal
from typing import Any

__all__ = [
    "BLOB_MIN_LENGTH",
    "blob_refs",
    "externalize",
    "find_blob_refs",
    "insert_blobs",
    "internalize",
]

BLOB_MIN_LENGTH = 256
"""Strings at least this long are stored once in `blobs` and referenced by hash."""
_BLOB_KEY = "$blob"


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def externalize(value: Any, found: dict[str, str]) -> Any:
    """Replace long strings by blob references, collecting the blobs in `found`."""
    if isinstance(value, str):
        if len(value) >= BLOB_MIN_LENGTH:
            key = _hash(value)
            found[key] = value
            return {_BLOB_KEY: key}
        return value
    if isinstance(value, dict):
        return {k: externalize(v, found) for k, v in value.items()}
    if isinstance(value, list):
        return [externalize(v, found) for v in value]
    return value


def blob_refs(value: Any, refs: set[str]) -> None:
    if isinstance(value, dict):
        if len(value) == 1 and _BLOB_KEY in value:
            refs.add(value[_BLOB_KEY])
            return
        for v in value.values():
            blob_refs(v, refs)
    elif isinstance(value, list):
        for v in value:
            blob_refs(v, refs)


def internalize(value: Any, texts: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _BLOB_KEY in value:
            return texts[value[_BLOB_KEY]]
        return {k: internalize(v, texts) for k, v in value.items()}
    if isinstance(value, list):
        return [internalize(v, texts) for v in value]
    return value


# A reference as written by the store's compact JSON. Inside a JSON string every quote is
# escaped, so this pattern only ever matches a real reference object.
_REF = re.compile(r'\{"\$blob":"([0-9a-f]{32})"\}')


def find_blob_refs(json_text: str) -> list[str]:
    """The blob hashes referenced in compact JSON text (no parsing needed)."""
    return _REF.findall(json_text) if '"$blob"' in json_text else []


def insert_blobs(json_text: str, texts: Mapping[str, str]) -> str:
    """The JSON text with every blob reference replaced by its string."""
    if '"$blob"' not in json_text:
        return json_text
    return _REF.sub(lambda match: _json_string(texts[match.group(1)]), json_text)
