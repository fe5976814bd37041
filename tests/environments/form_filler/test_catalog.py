"""The forms: enough of them, valid JSON schemas, split by company, findable from requests."""

from __future__ import annotations

import pytest
from tapeagents.environments.form_filler import (
    FieldError,
    check_value,
    companies,
    forms,
    get_form,
    search_forms,
)
from tapeagents.environments.form_filler.simulator import UNKNOWN_REQUESTS, question_kind

from tapeagents.errors import UsageError


def test_at_least_30_forms_from_6_companies_split_by_company() -> None:
    assert len(forms()) >= 30
    assert len(companies()) >= 6
    train = {f.company for f in forms("train")}
    test = {f.company for f in forms("test")}
    assert train and test and not train & test
    assert len(forms("train")) + len(forms("test")) == len(forms())
    names = [f.name for f in forms()]
    assert len(names) == len(set(names)), "form names are unique across companies"


@pytest.mark.parametrize("form", forms(), ids=lambda f: f.name)
def test_each_form_is_a_function_spec_with_typed_fields(form) -> None:
    spec = form.function_spec()
    assert set(spec) == {"name", "description", "parameters"}
    assert spec["parameters"]["type"] == "object"
    fields = form.fields
    assert any(f.required for f in fields) and any(not f.required for f in fields)
    assert any(question_kind(f) for f in fields), "a field the user can ask about"
    constrained = [f for f in fields if f.enum or f.format or "pattern" in f.schema_]
    assert constrained or any("minimum" in f.schema_ for f in fields)
    for field in fields:
        assert field.description
        for example in field.examples:  # every example is a valid value
            check_value(field, example)


def test_forms_are_valid_json_schemas_and_our_checks_are_never_laxer() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    probes = ("", "not a value", "2025-13-45", "1990-02-28", "a@b.co", "NW-123456", "3", 10**9, -1)
    for form in forms():
        validator_class = jsonschema.validators.validator_for(form.parameters)
        validator_class.check_schema(form.parameters)
        validator = validator_class(form.parameters, format_checker=validator_class.FORMAT_CHECKER)
        values = {f.name: check_value(f, f.examples[0]) for f in form.fields}
        assert list(validator.iter_errors(values)) == []
        for field in form.fields:  # what our validator accepts, the schema accepts
            for probe in probes:
                try:
                    value = check_value(field, probe)
                except FieldError:
                    continue
                errors = list(validator.iter_errors({**values, field.name: value}))
                assert errors == [], (form.name, field.name, probe)


@pytest.mark.parametrize("form", forms(), ids=lambda f: f.name)
def test_every_request_finds_its_form_first(form) -> None:
    company_forms = forms(company=form.company)
    for request in form.requests:
        assert search_forms(request, company_forms)[0].name == form.name, request


def test_requests_no_form_covers_find_nothing() -> None:
    for company in companies():
        for request in UNKNOWN_REQUESTS:
            assert search_forms(request, forms(company=company)) == []


def test_unknown_form_names_list_the_known_ones() -> None:
    with pytest.raises(UsageError, match="known forms: .*return_item"):
        get_form("order_pizza")
