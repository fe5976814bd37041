"""What every page of the studio shares: the store, the runs, the templates, the CSRF token.

`create_app` builds one `Studio` and keeps it on `app.state.studio`; each route module reads
it back with `Studio.of(request)` and answers through `page` and `redirect`.

Ids come from the URL, so each is checked where a route reads it (`check_id`): a store may
hold any string as a tape or LLM-call id (imports, user code), so those only need to be
printable and short; annotation ids are always the store's own 32 hex digits. A value of the
wrong shape gets a 404 or 400 whose message shows it as an escaped, shortened `repr`. Ids
that go back into a URL (redirects) pass through `url_part`, as the templates' do.
"""

from __future__ import annotations

import hmac
import re
import secrets
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment
from starlette.exceptions import HTTPException

from tapeagents.errors import StoreError
from tapeagents.render.html import environment
from tapeagents.store import TapeStore
from tapeagents.studio.runs import Runs

__all__ = [
    "MAX_FORM_BYTES",
    "MAX_ID_CHARS",
    "TEMPLATES",
    "Studio",
    "check_id",
    "int_or",
    "shown",
]

TEMPLATES = Path(__file__).parent / "templates"
"""The studio's pages (they import the step view's `_macros.html` from `render.html`)."""
MAX_FORM_BYTES = 5_000_000
MAX_ID_CHARS = 200
"""The longest tape or LLM-call id the studio opens (the store's own ids have 32 characters)."""
MAX_FLASHES = 200
"""Messages waiting for a redirected page; more are dropped, oldest first (a closed tab)."""


@dataclass
class Studio:
    """One studio application's state and the helpers its routes answer with."""

    store: TapeStore
    runs: Runs
    counter: ThreadPoolExecutor
    """Counts the matches of a text search beside the listing that shows them."""
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    """The token every form posts back (see `tapeagents.studio.security`)."""
    flashes: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Messages for the page a redirect leads to, by key: (level, text)."""
    templates: Environment = field(default_factory=lambda: environment(TEMPLATES))

    @property
    def macros(self) -> Any:
        """The step view's macros (`step_card`, `call_body`), to render fragments."""
        return self.templates.get_template("_macros.html").module

    @classmethod
    def of(cls, request: Request) -> Studio:
        """The studio that serves `request`."""
        studio: Studio = request.app.state.studio
        return studio

    @staticmethod
    def base(request: Request) -> str:
        """The path the studio is mounted at ("" at the root)."""
        return str(request.scope.get("root_path", "")).rstrip("/")

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        """The page `name` rendered with `context`, the flash message and what every page shows."""
        flash = self.flashes.pop(request.query_params.get("flash", ""), None)
        html = self.templates.get_template(name).render(
            base=self.base(request),
            csrf=self.csrf,
            store_url=self.store.display_url,
            agent_names=list(self.runs.agents),
            flash=flash,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def redirect(
        self, request: Request, url: str, message: str | None = None, level: str = "ok"
    ) -> RedirectResponse:
        """A redirect after a POST to `url`, which then shows `message` once.

        `url` is a path whose ids are already encoded with `url_part`.
        """
        target = self.base(request) + url
        if message:
            key = secrets.token_urlsafe(8)
            if len(self.flashes) > MAX_FLASHES:
                self.flashes.pop(next(iter(self.flashes)))
            self.flashes[key] = (level, message)
            path, _, anchor = target.partition("#")
            target = path + ("&" if "?" in path else "?") + f"flash={key}"
            target += f"#{anchor}" if anchor else ""
        return RedirectResponse(target, status_code=303)

    async def read_form(self, request: Request) -> dict[str, str]:
        """The posted form (url-encoded), after checking the CSRF token."""
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind not in ("", "application/x-www-form-urlencoded"):
            raise HTTPException(415, "Post the studio's forms url-encoded, as its pages do.")
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "The form is too large (over 5 MB).")
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        offered = form.get("csrf") or request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(offered.encode(), self.csrf.encode()):
            raise HTTPException(
                403, "The form's security token is missing or stale: reload the page and retry."
            )
        return form

    def resolve(self, tape_id: str) -> str:
        """The full id of the tape `tape_id` names (an id or a unique prefix), or a 404."""
        check_id(tape_id, "tape")
        try:
            return self.store.resolve_id(tape_id)
        except StoreError as error:
            raise HTTPException(404, str(error)) from None

    def opts(self, request: Request, tape_id: str) -> dict[str, Any]:
        """What the step cards of a studio page need: links, forms and the CSRF token."""
        return {
            "interactive": True,
            "base": self.base(request),
            "tape_id": tape_id,
            "csrf": self.csrf,
        }


_HEX_ID = re.compile(r"[0-9a-f]{32}")


def shown(value: str, limit: int = 60) -> str:
    """`value` for a message: its `repr` with non-ASCII escaped, cut after `limit` characters."""
    cut = value if len(value) <= limit else value[:limit] + "…"
    return ascii(cut)


def check_id(value: str, what: str) -> str:
    """`value` if it has the shape of a `what` id ("tape", "LLM call", "annotation"), else an
    HTTP error whose message says what an id looks like.

    Tape and LLM-call ids may be any text of 1 to `MAX_ID_CHARS` characters without control
    characters (NUL, newlines) or lone surrogates, other than `.` and `..` (which a browser
    cannot keep in a path); annotation ids are 32 hex digits (the store makes them).
    """
    if what == "annotation":
        if not _HEX_ID.fullmatch(value):
            raise HTTPException(
                400,
                f"{shown(value)} is not an annotation id (32 hex digits): use the delete "
                "button of the annotation on its tape's page.",
            )
        return value
    bad = not value or len(value) > MAX_ID_CHARS or value in (".", "..")
    if bad or any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise HTTPException(
            404,
            f"{shown(value)} is not a {what} id the studio can open (1 to {MAX_ID_CHARS} "
            "printable characters); pick the tape from the list instead.",
        )
    return value


def int_or(value: Any, default: Any) -> Any:
    """`value` as an int, or `default` when it is not one (form and query fields)."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default
