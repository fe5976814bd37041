"""Values are converted to the field's type and checked, with messages people can act on."""

from __future__ import annotations

import pytest
from tapeagents.environments.form_filler import FieldError, check_value, get_form
from tapeagents.environments.form_filler.validation import same_value


def field(form: str, name: str):
    found = get_form(form).field(name)
    assert found is not None
    return found


def test_text_is_converted_to_the_field_type() -> None:
    assert check_value(field("buy_gift_card", "amount"), " 50 ") == 50
    assert check_value(field("schedule_pickup", "weight_kg"), "2.5") == 2.5
    assert check_value(field("track_order", "sms_updates"), "Yes") is True
    assert check_value(field("track_order", "sms_updates"), "no") is False
    assert check_value(field("return_item", "return_reason"), "Damaged") == "damaged"
    assert check_value(field("book_appointment", "date_of_birth"), "1990-02-28") == "1990-02-28"


@pytest.mark.parametrize(
    ("form", "name", "value", "message"),
    [
        ("book_appointment", "date_of_birth", "02/28/1990", "format YYYY-MM-DD"),
        ("book_appointment", "date_of_birth", "1990-02-30", "not a real date"),
        ("track_order", "email", "alice at example.com", "email address"),
        ("return_item", "return_reason", "the usual one", "one of: wrong size, damaged"),
        ("buy_gift_card", "amount", "a few", "whole number"),
        ("buy_gift_card", "amount", "5000", "between 10 and 500"),
        ("buy_gift_card", "amount", 12.5, "whole number"),
        ("return_item", "order_number", "204518", "NW- followed by 6 digits"),
        ("track_order", "sms_updates", "maybe", "yes or no"),
        ("return_item", "item_name", "   ", "cannot be empty"),
        ("return_item", "item_name", ["a", "list"], "single value"),
    ],
)
def test_invalid_values_are_refused_with_the_reason(form, name, value, message) -> None:
    with pytest.raises(FieldError, match=message):
        check_value(field(form, name), value)


def test_same_value_ignores_case_spaces_and_number_formatting() -> None:
    assert same_value(field("return_item", "item_name"), "Rain  Jacket", "rain jacket")
    assert same_value(field("buy_gift_card", "amount"), 50, "50")
    assert not same_value(field("buy_gift_card", "amount"), 50, "51")
    assert same_value(field("track_order", "sms_updates"), True, "yes")
