"""Business forms as JSON-schema function specifications, grouped by (invented) company.

Each company is one JSON file in `forms/`: its id, display name, split ("train" or "test") and
its forms. A form is an OpenAI-style function specification (`name`, `description`,
`parameters`) plus `requests`: ways a user might ask for it, which the user simulator uses to
open a dialogue. Train and test forms come from different companies, so a model trained on
train tapes is measured on forms (and field names, enums and formats) it never saw.

Example:
    >>> form = get_form("return_item")
    >>> form.company, [f.name for f in form.fields][:2]
    ('northwind', ['order_number', 'item_name'])
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, Field

from tapeagents.errors import UsageError

__all__ = [
    "Company",
    "FieldSpec",
    "Form",
    "Split",
    "companies",
    "forms",
    "get_company",
    "get_form",
    "search_forms",
]

Split = Literal["train", "test"]


class FieldSpec(BaseModel):
    """One field of a form: its name, whether it is required, and its JSON schema."""

    name: str
    required: bool
    schema_: dict[str, Any] = Field(alias="schema")
    """The property's JSON schema (type, format, enum, minimum, maximum, pattern, ...)."""

    @property
    def label(self) -> str:
        """How people call the field: its `title`, else its name with spaces."""
        return str(self.schema_.get("title") or self.name.replace("_", " "))

    @property
    def type(self) -> str:
        return str(self.schema_.get("type", "string"))

    @property
    def description(self) -> str:
        return str(self.schema_.get("description", ""))

    @property
    def enum(self) -> list[Any] | None:
        return self.schema_.get("enum")

    @property
    def format(self) -> str | None:
        return self.schema_.get("format")

    @property
    def examples(self) -> list[Any]:
        return list(self.schema_.get("examples", []))

    def hint(self) -> str:
        """A short description of the accepted values, e.g. `date YYYY-MM-DD` or `one of: a, b`."""
        parts: list[str] = []
        if self.enum is not None:
            parts.append("one of: " + ", ".join(str(v) for v in self.enum))
        elif self.format == "date":
            parts.append("date YYYY-MM-DD")
        elif self.format == "email":
            parts.append("email")
        elif self.type in ("integer", "number"):
            kind = "whole number" if self.type == "integer" else "number"
            low, high = self.schema_.get("minimum"), self.schema_.get("maximum")
            parts.append(f"{kind} {_num(low)}-{_num(high)}" if low is not None else kind)
        elif self.type == "boolean":
            parts.append("yes or no")
        elif "pattern" in self.schema_:
            parts.append(self.description)
        if not self.required:
            parts.insert(0, "optional")
        return "; ".join(parts)


def _num(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


class Form(BaseModel):
    """A form: a function specification the assistant fills in and submits."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the form's values (an object with properties and `required`)."""
    requests: list[str] = Field(default_factory=list)
    """Ways a user asks for this form (the simulator's opening lines)."""
    company: str = ""

    @property
    def fields(self) -> list[FieldSpec]:
        """The fields in the order the form lists them."""
        required = set(self.parameters.get("required", []))
        return [
            FieldSpec(name=name, required=name in required, schema=schema)
            for name, schema in self.parameters.get("properties", {}).items()
        ]

    def field(self, name: str) -> FieldSpec | None:
        """The field called `name`, or None."""
        return next((f for f in self.fields if f.name == name), None)

    def function_spec(self) -> dict[str, Any]:
        """The form as an OpenAI function specification (what a model is shown)."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


class Company(BaseModel):
    """An invented company and its forms."""

    id: str = Field(alias="company")
    name: str
    description: str = ""
    split: Split
    forms: list[Form]


@cache
def companies() -> dict[str, Company]:
    """All companies, by id, loaded once from the package's `forms/*.json`."""
    loaded: dict[str, Company] = {}
    folder = resources.files(__package__).joinpath("forms")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        company = Company.model_validate(json.loads(entry.read_text(encoding="utf-8")))
        for form in company.forms:
            form.company = company.id
        loaded[company.id] = company
    return loaded


def get_company(company_id: str) -> Company:
    """The company with this id; the error lists the known ones."""
    found = companies().get(company_id)
    if found is None:
        raise UsageError(
            f"Unknown company {company_id!r}; known companies: {', '.join(companies())}."
        )
    return found


def forms(split: Split | None = None, *, company: str | None = None) -> list[Form]:
    """All forms, or those of one split or company, in a stable order."""
    return [
        form
        for c in companies().values()
        if (split is None or c.split == split) and (company is None or c.id == company)
        for form in c.forms
    ]


def get_form(name: str) -> Form:
    """The form called `name` (form names are unique across companies)."""
    for form in forms():
        if form.name == name:
            return form
    raise UsageError(f"Unknown form {name!r}; known forms: {', '.join(f.name for f in forms())}.")


# ----------------------------------------------------------------------------- search

_STOP = set(
    """a an and any are as at be been but by can could do does for from get got have having how
    i i'd i'm i've in is it it's its me my need of on or our please so some than that the this
    to up us want was we what where which who will with would you your like just there can't
    don't didn't about tell""".split()
)


def _words(text: str) -> set[str]:
    """Content words of `text`, lower-cased and crudely stemmed ("shipping" -> "ship")."""
    words = set()
    for word in re.findall(r"[a-z0-9']+", text.lower()):
        word = word.strip("'")
        if word in _STOP or len(word) < 2:
            continue
        if word.endswith("ies") and len(word) > 4:
            word = word[:-3] + "y"  # "cities" -> "city"
        for suffix in ("ing", "ed", "es", "s"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)]
                if suffix in ("ing", "ed") and len(word) > 3 and word[-1] == word[-2]:
                    word = word[:-1]  # "shipp" -> "ship"
                break
        words.add(word)
    return words


def search_forms(query: str, candidates: list[Form], *, limit: int = 3) -> list[Form]:
    """The forms that best match `query`, best first.

    A word of the query counts more when few candidate forms contain it, and twice when it is
    in the form's name. Forms that share no word with the query are left out, so a request
    for something no form covers finds nothing.
    """
    wanted = _words(query)
    documents = [
        (_words(form.name.replace("_", " ")), _words(form.description)) for form in candidates
    ]
    frequency: dict[str, int] = {}
    for name_words, description_words in documents:
        for word in name_words | description_words:
            frequency[word] = frequency.get(word, 0) + 1
    scored = []
    for index, (form, (name_words, description_words)) in enumerate(
        zip(candidates, documents, strict=True)
    ):
        score = sum(
            (2.0 if word in name_words else 1.0) / frequency[word]
            for word in wanted & (name_words | description_words)
        )
        if score > 0:
            scored.append((-score, index, form))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [form for _, _, form in scored[:limit]]
