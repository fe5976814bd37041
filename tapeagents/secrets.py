"""Credentials stay out of records, reprs and error messages: one scrubber for every backend.

`is_secret_name` decides from a name alone (a keyword argument, an HTTP header, a URL query
parameter) whether its value is a credential; backends keep such values out of the recorded
`parameters`. `redact_url`, `redact_headers` and `scrub` hide credentials in what is shown: URLs
with a `user:password@` part or a `?api_key=` parameter, secret headers, and error texts that
may echo a key back. `url_secrets` lists the credentials a URL carries, so that a backend can
scrub them from a server's answer even where they appear outside the URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote

__all__ = [
    "REDACTED",
    "SECRET_MARKERS",
    "is_secret_name",
    "redact_headers",
    "redact_url",
    "scrub",
    "url_secrets",
]

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
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#\s?'\"]+)=(?P<value>[^&;#\s'\"]*)")


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


def _hidden_query(text: str) -> str:
    """`?api_key=...&x=1` with the values of its secret parameters replaced by `***`."""
    return _QUERY_PARAM.sub(
        lambda m: f"{m['lead']}{m['name']}={REDACTED}" if is_secret_name(m["name"]) else m[0],
        text,
    )


def _split(url: str) -> tuple[str, str, str] | None:
    """`(userinfo, host, the rest)` of a `scheme://` URL, leniently: a URL that no parser accepts
    (a space, `/` or a second `@` in the password, a bad port) must still be shown without its
    password. None when the text does not start with `scheme://`."""
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return None
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" not in authority:
        # `user:p/w@host`, as SQLAlchemy reads it: a user without `:` or `/`, then the password
        # up to the first `@`
        head, at, after = rest.partition("@")
        user, colon, password = head.partition(":")
        if at and colon and "/" not in user and not any(c in password for c in "?#"):
            end = min((i for i in (after.find(c) for c in "/?#") if i >= 0), default=len(after))
            authority, tail = f"{head}@{after[:end]}", after[end:]
    userinfo, at, host = authority.rpartition("@")
    return (userinfo, host, tail) if at else ("", authority, tail)


def redact_url(url: str) -> str:
    """The URL with the credentials of its `user:password@` part and the values of its secret
    query parameters (`?api_key=`, `?token=`) replaced by `***`. Unparsable URLs too.

    Example:
        >>> redact_url("https://me:hunter2@llm.example.com/v1?api_key=sk-1&x=2")
        'https://me:***@llm.example.com/v1?api_key=***&x=2'
    """
    parts = _split(url)
    if parts is None:
        return url
    userinfo, host, tail = parts
    scheme = url.partition("://")[0]
    authority = f"{_hidden_userinfo(userinfo)}@{host}" if userinfo else host
    return f"{scheme}://{authority}{_hidden_query(tail)}"


def url_secrets(url: str | None) -> list[str]:
    """The credentials a URL carries: its password (or lone user token) and the values of its
    secret query parameters, as given and percent-decoded."""
    if not url:
        return []
    parts = _split(url)
    if parts is None:
        return []
    userinfo, _, tail = parts
    found: list[str] = []
    if userinfo:
        user, colon, password = userinfo.partition(":")
        found += [password, password.partition("@")[0]] if colon else [user]
    found += [
        m["value"] for m in _QUERY_PARAM.finditer(tail) if is_secret_name(m["name"]) and m["value"]
    ]
    shown = {v for value in found for v in (value, unquote(value)) if len(v) > 1}
    return sorted(shown, key=len, reverse=True)


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
    if "=" in text:
        text = _hidden_query(text)
    return _BEARER.sub(lambda m: f"{m['word']}{REDACTED}", text)
