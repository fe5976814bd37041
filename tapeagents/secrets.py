"""Credentials stay out of records, reprs and error messages: one scrubber for every backend.

`is_secret_name` decides from a name alone (a keyword argument, an HTTP header) whether its value
is a credential; backends keep such values out of the recorded `parameters`. `redact_url`,
`redact_headers` and `scrub` hide credentials in what is shown: URLs with a `user:password@`
part, secret headers, and error texts that may echo a key back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

__all__ = ["REDACTED", "SECRET_MARKERS", "is_secret_name", "redact_headers", "redact_url", "scrub"]

REDACTED = "***"
"""What a hidden credential is replaced with."""

SECRET_MARKERS = (
    "key",
    "secret",
    "password",
    "passwd",
    "credential",
    "auth",
    "cookie",
    "headers",
)
"""Words that mark a name as a credential, wherever they appear in it (case-insensitive).
`headers` is among them because extra headers usually carry an `Authorization`."""

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#@]+)@")
_BEARER = re.compile(r"(?P<word>\bBearer\s+)[^\s'\",;]+", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """Whether a value called `name` is a credential (`api_key`, `Authorization`, `token`, ...)."""
    lowered = name.lower()
    return (
        any(marker in lowered for marker in SECRET_MARKERS)
        or lowered == "token"
        or lowered.endswith(("_token", "-token"))
    )


def _hidden_userinfo(userinfo: str) -> str:
    """`user:password` keeps the user; a lone name may itself be a token, so it goes."""
    user, colon, _ = userinfo.partition(":")
    return f"{user}:{REDACTED}" if colon else REDACTED


def redact_url(url: str) -> str:
    """The URL with the credentials of its `user:password@` part replaced by `***`.

    Example:
        >>> redact_url("https://me:hunter2@llm.example.com/v1")
        'https://me:***@llm.example.com/v1'
    """
    if "@" not in url:
        return url
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    netloc = f"{_hidden_userinfo(userinfo)}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers, with the values of secret ones (`Authorization`, `X-Api-Key`) hidden."""
    return {name: REDACTED if is_secret_name(name) else value for name, value in headers.items()}


def scrub(text: str, *, secrets: Iterable[str | None] = ()) -> str:
    """The text with every credential hidden: the given secret values, URL passwords, bearer
    tokens. Use it on error texts from providers and HTTP libraries before showing them.

    Example:
        >>> scrub("401 for key sk-abc at http://u:p@host/v1", secrets=["sk-abc"])
        '401 for key *** at http://u:***@host/v1'
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{_hidden_userinfo(m['userinfo'])}@", text)
    return _BEARER.sub(lambda m: f"{m['word']}{REDACTED}", text)
