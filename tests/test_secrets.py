"""One secret scrubber: names that mark credentials, and credentials hidden in what is shown."""

from __future__ import annotations

import pytest

from tapeagents.secrets import is_secret_name, redact_headers, redact_url, scrub


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "OPENAI_API_KEY",
        "aws_secret_access_key",
        "password",
        "db_passwd",
        "credentials",
        "Authorization",
        "Proxy-Authorization",
        "X-Api-Key",
        "Cookie",
        "extra_headers",
        "token",
        "access_token",
        "X-Auth-Token",
    ],
)
def test_credential_names_are_secret(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["temperature", "max_tokens", "top_p", "seed", "logprobs", "Content-Type", "stop"]
)
def test_model_parameters_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://me:hunter2@llm.example.com/v1", "https://me:***@llm.example.com/v1"),
        ("https://sk-abc123@llm.example.com/v1", "https://***@llm.example.com/v1"),
        ("http://u:p@w@host:8000/v1?x=1", "http://u:***@host:8000/v1?x=1"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("https://host/v1/users/@me", "https://host/v1/users/@me"),
    ],
)
def test_redact_url_hides_the_password_of_the_userinfo(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_headers_hides_the_values_of_secret_headers() -> None:
    headers = {"Authorization": "Bearer sk-1", "X-Api-Key": "k", "Accept": "application/json"}
    assert redact_headers(headers) == {
        "Authorization": "***",
        "X-Api-Key": "***",
        "Accept": "application/json",
    }


def test_scrub_hides_known_secrets_url_passwords_and_bearer_tokens() -> None:
    text = (
        "401 Unauthorized for key sk-live-123 at https://bot:hunter2@llm.example.com/v1 "
        "(sent 'Authorization: Bearer eyJhbGciOi.x.y')"
    )
    assert scrub(text, secrets=["sk-live-123", None, ""]) == (
        "401 Unauthorized for key *** at https://bot:***@llm.example.com/v1 "
        "(sent 'Authorization: Bearer ***')"
    )
    assert scrub("nothing to hide at http://host/v1") == "nothing to hide at http://host/v1"


async def test_openai_compat_shows_no_url_password_in_its_repr_or_errors() -> None:
    from tapeagents.errors import LLMError
    from tapeagents.llms import OpenAICompatLLM, Prompt

    # port 9 on loopback: nothing listens, the connection is refused at once
    llm = OpenAICompatLLM("m", base_url="http://bot:hunter2@127.0.0.1:9/v1", max_retries=0)
    assert repr(llm) == "OpenAICompatLLM('m', base_url='http://bot:***@127.0.0.1:9/v1')"
    with pytest.raises(LLMError) as info:
        await llm.generate(Prompt(messages=[{"role": "user", "content": "hi"}]))
    await llm.aclose()
    assert "bot:***@127.0.0.1:9" in str(info.value) and "hunter2" not in str(info.value)


async def test_litellm_errors_do_not_echo_the_api_key_or_extra_headers() -> None:
    litellm = pytest.importorskip("litellm")
    from tapeagents.errors import LLMError
    from tapeagents.llms import LiteLLM, Prompt

    error = litellm.AuthenticationError(
        "Incorrect API key provided: sk-live-123 (token tk-9 via https://u:pw@proxy/v1)",
        llm_provider="openai",
        model="gpt-4o-mini",
    )
    llm = LiteLLM(
        "gpt-4o-mini",
        api_key="sk-live-123",
        extra_headers={"X-Proxy-Token": "tk-9"},
        max_retries=0,
        mock_response=error,
    )
    with pytest.raises(LLMError) as info:
        await llm.generate(Prompt(messages=[{"role": "user", "content": "hi"}]))
    message = str(info.value)
    assert "Incorrect API key provided: ***" in message and "https://u:***@proxy" in message
    assert not any(secret in message for secret in ("sk-live-123", "tk-9", ":pw@"))
