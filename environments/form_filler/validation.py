"""Check field values against the JSON-schema subset the forms use, with messages for people.

Supported: `type` (string, integer, number, boolean), `enum`, `format` (date as YYYY-MM-DD,
email), `minimum`/`maximum`, `minLength`/`maxLength` and `pattern`. Values arrive as the user
typed them, so text is converted to the field's type ("3" -> 3, "yes" -> True) before it is
checked; the converted value is what the form stores.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

from .catalog import FieldSpec, Form

__all__ = ["FieldError", "check_value", "missing_fields", "normalize", "same_value"]

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TRUE = {"yes", "y", "true", "1", "sure", "yes please"}
_FALSE = {"no", "n", "false", "0", "no thanks"}

Value = str | int | float | bool


class FieldError(ValueError):
    """A value does not fit its field; the message says why and what would fit."""


def check_value(field: FieldSpec, value: Any) -> Value:
    """The value converted to the field's type, or `FieldError` saying what is wrong.

    Example:
        >>> from tapeagents.environments.form_filler.catalog import get_form
        >>> check_value(get_form("buy_gift_card").field("amount"), "50")
        50
    """
    label = field.label
    if isinstance(value, dict | list) or value is None:
        raise FieldError(f"The {label} must be a single value, not {type(value).__name__}.")
    text = value.strip() if isinstance(value, str) else value
    if text == "":
        raise FieldError(f"The {label} cannot be empty.")
    converted = _convert(field, text)
    schema = field.schema_
    if field.enum is not None and converted not in field.enum:
        match = _enum_match(field.enum, converted)
        if match is None:
            options = ", ".join(str(option) for option in field.enum)
            raise FieldError(f"The {label} must be one of: {options}; got {value!r}.")
        converted = match
    if isinstance(converted, str):
        if field.format == "date":
            _check_date(label, converted)
        elif field.format == "email" and not _EMAIL.match(converted):
            raise FieldError(
                f"The {label} must be an email address like name@example.com; got {value!r}."
            )
        if "pattern" in schema and not re.search(schema["pattern"], converted):
            raise FieldError(f"The {label} {value!r} is not valid: expected {field.description}.")
        if len(converted) < schema.get("minLength", 0):
            raise FieldError(
                f"The {label} must have at least {schema['minLength']} characters; got {value!r}."
            )
        if "maxLength" in schema and len(converted) > schema["maxLength"]:
            raise FieldError(f"The {label} must have at most {schema['maxLength']} characters.")
    if isinstance(converted, int | float) and not isinstance(converted, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and converted < low) or (high is not None and converted > high):
            raise FieldError(
                f"The {label} must be between {_show(low)} and {_show(high)}; got {value!r}."
            )
    return converted


def _convert(field: FieldSpec, value: Value) -> Value:
    label = field.label
    if field.type == "integer":
        try:
            number = float(str(value).replace(",", "")) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or not number.is_integer():
            raise FieldError(f"The {label} must be a whole number; got {value!r}.")
        return int(number)
    if field.type == "number":
        try:
            number = float(str(value).replace(",", "")) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise FieldError(f"The {label} must be a number; got {value!r}.")
        return int(number) if number.is_integer() else number
    if field.type == "boolean":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower().rstrip(".!")
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise FieldError(f"The {label} must be yes or no; got {value!r}.")
    return value if isinstance(value, str) else _show(value)


def _enum_match(options: list[Any], value: Value) -> Any:
    """The option that equals `value` up to case and surrounding spaces, if exactly one does."""
    key = str(value).strip().casefold()
    matches = [option for option in options if str(option).casefold() == key]
    return matches[0] if len(matches) == 1 else None


def _check_date(label: str, text: str) -> None:
    if not _DATE.match(text):
        raise FieldError(
            f"The {label} must be a date in the format YYYY-MM-DD (like 2025-03-14); got {text!r}."
        )
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        raise FieldError(f"The {label} {text!r} is not a real date.") from None


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def normalize(field: FieldSpec, value: Any) -> Any:
    """The value as the form would store it, or the raw value when it does not fit."""
    try:
        return check_value(field, value)
    except FieldError:
        return value


def same_value(field: FieldSpec, first: Any, second: Any) -> bool:
    """Whether two values mean the same for this field (case and spaces aside for text)."""
    a, b = normalize(field, first), normalize(field, second)
    if isinstance(a, str) and isinstance(b, str):
        return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b)
    return bool(a == b)


def missing_fields(form: Form, values: dict[str, Any]) -> list[FieldSpec]:
    """The required fields of `form` that have no value."""
    return [f for f in form.fields if f.required and f.name not in values]
