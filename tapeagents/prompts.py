"""Jinja2 templates for prompts: an agent's named templates, compiled once and rendered strictly."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.meta

__all__ = ["TemplateSet"]


class TemplateSet:
    """An agent's named jinja2 templates; any template can `{% include %}` the others.

    Undefined variables raise (`StrictUndefined`) instead of rendering as empty text, so a typo in
    a prompt is an error, not a silently worse prompt. Autoescaping is off: prompts are text.
    """

    def __init__(self, templates: Mapping[str, str] | None = None) -> None:
        self.templates = dict(templates or {})
        self._env = jinja2.Environment(
            loader=jinja2.DictLoader(self.templates),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
        )
        self._compile = lru_cache(maxsize=256)(self._env.from_string)

    def __reduce__(self) -> tuple[Any, ...]:
        # Agents are pickled to other processes (Ray workers): rebuild from the sources there.
        return (TemplateSet, (self.templates,))

    def render(self, source: str, **variables: Any) -> str:
        """Render template text (which may include the named templates) with `variables`."""
        if "{" not in source:
            return source  # plain text: skip jinja entirely
        return self._compile(source).render(**variables)

    def reads(self, source: str, name: str) -> bool:
        """Whether rendering `source` may read the variable `name`.

        Decided on the parsed template, not its text: true when `name` is used, and whenever the
        template includes, imports or extends another one (which could use it).
        """
        return _reads(self._env, source, name)


@lru_cache(maxsize=256)
def _reads(env: jinja2.Environment, source: str, name: str) -> bool:
    if "{" not in source:
        return False
    syntax = env.parse(source)
    if any(True for _ in jinja2.meta.find_referenced_templates(syntax)):
        return True
    return name in jinja2.meta.find_undeclared_variables(syntax)
