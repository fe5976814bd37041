"""Ids in the studio's addresses, without a browser: checked where they are read, encoded where
they are written (links, form actions, fragment addresses, redirects)."""

from __future__ import annotations

import re
from html import unescape

from fastapi.testclient import TestClient

from tapeagents import AssistantMessage, Tape, UserMessage
from tapeagents.llms import LLMCall, LLMOutput, Prompt
from tapeagents.render.html import url_part
from tapeagents.steps import StepMetadata
from tapeagents.store import TapeStore
from tapeagents.studio import create_app
from tests.studio.conftest import csrf_of

ODD_ID = '?fragment=1#"><b>x<b>&..'


def test_url_part_keeps_an_id_in_its_segment() -> None:
    assert url_part("a/b?c#d&e=f g") == "a%2Fb%3Fc%23d%26e%3Df%20g"
    assert url_part("..") == "%252E%252E"  # a browser resolves %2E%2E like ..
    assert url_part(".") == "%252E"
    assert url_part("0123abcd") == "0123abcd"


def test_links_and_redirects_encode_stored_ids(store: TapeStore, client: TestClient) -> None:
    call = LLMCall(
        id="../tapes/x/json#",
        model="m",
        prompt=Prompt(messages=[{"role": "user", "content": "hi"}]),
        output=LLMOutput(content="hello"),
    )
    tape = Tape(
        id=ODD_ID,
        steps=[
            UserMessage(content="hi"),
            AssistantMessage(content="hello", metadata=StepMetadata(llm_call_id=call.id)),
        ],
    )
    store.save(tape, status="stopped", agent="a", llm_calls=[call])
    page = client.get(f"/tapes/{url_part(ODD_ID)}")
    assert page.status_code == 200
    html = page.text
    assert f'data-call-src="/calls/{url_part(call.id)}?fragment=1"' in html
    actions = {unescape(a) for a in re.findall(r'action="([^"]*)"', html)}
    assert f"/tapes/{url_part(ODD_ID)}/fork" in actions
    assert f"/tapes/{url_part(ODD_ID)}/annotations" in actions
    assert all("?" not in a and "#" not in a for a in actions), actions

    # a redirect after a form comes back to the same tape
    answer = client.post(
        f"/tapes/{url_part(ODD_ID)}/annotations",
        data={"csrf": csrf_of(client), "label": "x"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/tapes/{url_part(ODD_ID)}#notes"

    # the call fragment is marked as such; the page's script inserts nothing else
    fragment = client.get("/calls/" + url_part("../tapes/x/json#") + "?fragment=1")
    assert fragment.status_code == 404  # the path cannot hold a "/" id: refused, not followed
    own = client.get(f"/tapes/{url_part(ODD_ID)}/json")
    assert "x-studio-fragment" not in own.headers
    assert own.headers["content-disposition"] == 'attachment; filename="tape-_fragmen.json"'


def test_ids_of_the_wrong_shape_are_refused_with_a_clear_message(
    client: TestClient,
) -> None:
    for path in ["/tapes/%00x", "/calls/" + "a" * 300, "/tapes/" + "b" * 201 + "/json"]:
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "the studio can open" in answer.text, answer.text
    answer = client.get("/calls/%3Cscript%3E?fragment=1")
    assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/plain")
    csrf = csrf_of(client)
    answer = client.post("/annotations/%3Cimg%3E/delete", data={"csrf": csrf, "tape": "x"})
    assert answer.status_code == 400
    assert "not an annotation id" in answer.text and "<img>" not in answer.text


def test_token_redirect_stays_on_the_studio(store: TapeStore) -> None:
    app = create_app(store, token="secret")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answer = client.get("http://127.0.0.1//evil.example/x?token=secret", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/evil.example/x"
