"""Jinja2 templates for prompts: an agent's named templates, compiled once and rendered strictly."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

__all__ = ["TemplateSet"]


class TemplateSet:
    """An agent's named jinja2 templates; any template can `{% include %}` the others.

    Undefined variables raise (`StrictUndefined`) instead of rendering as empty text, so a typo in
    a prompt is an error, not a silently worse prompt. Autoescaping is off: prompts are text.
    jinja2 is imported on the first template that needs it: plain-text prompts never load it.
    """

    def __init__(self, templates: Mapping[str, str] | None = None) -> None:
        self.templates = dict(templates or {})
        self._env: jinja2.Environment | None = None
        self._compile: Callable[[str], jinja2.Template] | None = None
        self._reads: dict[tuple[str, str], bool] = {}

    def _environment(self) -> jinja2.Environment:
        if self._env is None:
            import jinja2

            self._env = jinja2.Environment(
                loader=jinja2.DictLoader(self.templates),
                undefined=jinja2.StrictUndefined,
                keep_trailing_newline=False,
                autoescape=False,
            )
        return self._env

    def _compiler(self) -> Callable[[str], jinja2.Template]:
        """Template text -> compiled template, the last 256 kept (made on first use)."""
        self._compile = lru_cache(maxsize=256)(self._environment().from_string)
        return self._compile

    def __reduce__(self) -> tuple[Any, ...]:
        # Agents are pickled to other processes (Ray workers): rebuild from the sources there.
        return (TemplateSet, (self.templates,))

    def render(self, source: str, **variables: Any) -> str:
        """Render template text (which may include the named templates) with `variables`."""
        if "{" not in source:
            return source  # plain text: skip jinja entirely
        compile_template = self._compile or self._compiler()
        return compile_template(source).render(**variables)

    def reads(self, source: str, name: str) -> bool:
        """Whether rendering `source` may read the variable `name`.

        Decided on the parsed template, not its text: true when `name` is used, and whenever the
        template includes, imports or extends another one (which could use it).
        """
        if "{" not in source:
            return False
        found = self._reads.get((source, name))
        if found is None:
            import jinja2.meta

            syntax = self._environment().parse(source)
            found = any(True for _ in jinja2.meta.find_referenced_templates(syntax)) or (
                name in jinja2.meta.find_undeclared_variables(syntax)
            )
            self._reads[(source, name)] = found
        return found
