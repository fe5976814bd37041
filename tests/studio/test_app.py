"""The studio's routes through the real application (FastAPI TestClient over a SQLite store)."""

from __future__ import annotations

import json
import os
import re
import socket
import time

import pytest
from fastapi.testclient import TestClient

from tapeagents import LeaseHeld, Tape, UserMessage
from tapeagents.store import TapeStore
from tapeagents.studio import create_app
from tests.studio.conftest import AGENTS, csrf_of


def wait_until_done(store: TapeStore, tape_id: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while (status := store.status(tape_id)) == "running" or status is None:
        assert time.monotonic() < deadline, "the run did not finish"
        time.sleep(0.05)
    return status


# ----------------------------------------------------------------------------- the tape list


def test_list_shows_tapes_with_filters_and_facets(client: TestClient, tapes) -> None:
    page = client.get("/")
    assert page.status_code == 200
    for tape in tapes.values():
        assert f'/tapes/{tape.id}"' in page.text
    assert '<option value="travel">travel (1)</option>' in page.text  # agent facet
    travel = client.get("/", params={"agent": "travel"}).text
    assert tapes["browse"].id in travel and tapes["calc"].id not in travel
    by_tag = client.get("/", params={"tag": "browser"}).text
    assert tapes["browse"].id in by_tag and tapes["calc"].id not in by_tag
    by_text = client.get("/", params={"q": "cheapest direct"}).text
    assert tapes["browse"].id in by_text and tapes["calc"].id not in by_text
    assert "No tape matches" in client.get("/", params={"q": "no such words anywhere"}).text


def test_list_pages_through_many_tapes(client: TestClient, store: TapeStore) -> None:
    for i in range(45):
        store.save(Tape(steps=[UserMessage(content=f"task {i}")]), status="stopped", agent="bulk")
    first = client.get("/", params={"per": 20}).text
    assert "page 1 of 3" in first and first.count('name="t"') == 20
    last = client.get("/", params={"per": 20, "page": 3}).text
    assert "page 3 of 3" in last and last.count('name="t"') == 5
    assert "page 3 of 3" in client.get("/", params={"per": 20, "page": 99}).text  # clamped
    assert 'href="/?per=20&amp;page=2"' in first


def test_list_date_filters(client: TestClient, tapes) -> None:
    assert tapes["calc"].id in client.get("/", params={"since": "2000-01-01"}).text
    assert tapes["calc"].id not in client.get("/", params={"until": "2000-01-01"}).text
    page = client.get("/", params={"since": "yesterday"})
    assert page.status_code == 200 and "is not a date like 2025-01-31" in page.text


# ----------------------------------------------------------------------------- a tape


def test_tape_view_shows_steps_tokens_cost_and_notes(client: TestClient, tapes) -> None:
    tape = tapes["browse"]
    page = client.get(f"/tapes/{tape.id}").text
    for index, step in enumerate(tape.steps):
        assert f'id="step-{index}" data-index="{index}" data-kind="{step.kind}"' in page
    assert "travel/browse" in page  # agent and node
    assert "212 → 38 tok" in page and "$0.0001" in page  # from the step's LLM call
    assert "2,042 → 59" in page and "$0.0003" in page  # tape totals
    assert 'data-call-src="/calls/studio-test-call-1?fragment=1"' in page
    assert "from the same LLM call as" in page
    assert 'src="data:image/png;base64,' in page  # the screenshot
    assert "good-plan" in page and "Checks the timetable first." in page
    assert "Show all · 5,190 characters, 59 lines" in page  # the long page text is folded
    assert client.get(f"/tapes/{tape.id[:8]}", follow_redirects=False).status_code == 307


def test_call_fragment_has_the_exact_prompt_tools_and_output(client: TestClient, tapes) -> None:
    fragment = client.get("/calls/studio-test-call-2", params={"fragment": 1})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    text = fragment.text
    assert "You are a travel assistant with a web browser." in text
    assert 'class="message role-tool"' in text and "call_open" in text
    assert "open_url" in text and "Open a web page in the browser." in text
    assert "{&#34;answer&#34;: &#34;Flight 2 at 08:15, NOK 974.&#34;}" in text  # raw arguments
    assert "1,830 prompt + 21 completion tokens" in text
    assert client.get("/calls/nope", params={"fragment": 1}).status_code == 404
    assert "<html" in client.get("/calls/studio-test-call-2").text


def test_unknown_tape_is_a_404_page(client: TestClient, tapes) -> None:
    page = client.get("/tapes/ffffffffffff")
    assert page.status_code == 404 and "tapeagents ls" in page.text


def test_tape_json_download(client: TestClient, tapes) -> None:
    response = client.get(f"/tapes/{tapes['calc'].id}/json")
    assert Tape.model_validate(response.json()).steps == tapes["calc"].steps


# ----------------------------------------------------------------------------- changes


def test_fork_at_a_step(client: TestClient, store: TapeStore, tapes) -> None:
    parent = tapes["calc"]
    response = client.post(
        f"/tapes/{parent.id}/fork",
        data={"at": "2", "csrf": csrf_of(client)},
        follow_redirects=False,
    )
    assert response.status_code == 303
    child_id = re.search(r"/tapes/([0-9a-f]+)", response.headers["location"]).group(1)
    child = store.get(child_id)
    assert child.parent_id == parent.id and child.steps == parent.steps[:2]
    page = client.get(response.headers["location"]).text
    assert "Forked tape" in page and f'href="/tapes/{parent.id}" id="parent-link"' in page


def test_edit_validates_against_the_step_type(client: TestClient, store: TapeStore, tapes) -> None:
    tape = tapes["calc"]
    form = client.get(f"/tapes/{tape.id}/steps/0/edit").text
    assert "What is 2 + 3?" in form and "UserMessage" in form
    csrf = csrf_of(client)
    cases = {
        "{not json": "not valid JSON",
        "[1, 2]": "must be a JSON object",
        '{"kind": "user"}': "content: Field required",
        '{"kind": "user", "content": "x", "mood": "happy"}': "mood: Extra inputs are not permitted",
        '{"kind": "assistant", "content": "x"}': "The kind must stay &#39;user&#39;",
    }
    for text, message in cases.items():
        bad = client.post(f"/tapes/{tape.id}/steps/0/edit", data={"step": text, "csrf": csrf})
        assert bad.status_code == 400 and message in bad.text, text
        assert "Save as a fork" in bad.text  # the form again, with what was typed
    before = store.count()
    good = client.post(
        f"/tapes/{tape.id}/steps/0/edit",
        data={"step": json.dumps({"kind": "user", "content": "What is 20 + 22?"}), "csrf": csrf},
        follow_redirects=False,
    )
    assert good.status_code == 303 and store.count() == before + 1
    child = store.get(re.search(r"/tapes/([0-9a-f]+)", good.headers["location"]).group(1))
    assert child.parent_id == tape.id and len(child) == 1
    assert child[0].content == "What is 20 + 22?"
    assert child[0].metadata.extra["edited_from"] == tape[0].metadata.id
    assert store.get(tape.id) == tape  # the original is untouched


def test_edit_keeps_agent_and_node_and_drops_the_llm_call(client: TestClient, store, tapes):
    tape = tapes["calc"]
    step = tape[1]  # reasoning, written by the model
    edit = json.dumps({"kind": "reasoning", "text": "Better plan."})
    data = {"step": edit, "csrf": csrf_of(client)}
    response = client.post(f"/tapes/{tape.id}/steps/1/edit", data=data, follow_redirects=False)
    child = store.get(re.search(r"/tapes/([0-9a-f]+)", response.headers["location"]).group(1))
    edited = child[1]
    assert edited.metadata.agent == step.metadata.agent == "calc"
    assert edited.metadata.node == step.metadata.node == "solve"
    assert edited.metadata.llm_call_id is None and child[0] == tape[0]


def test_resume_runs_the_agent_in_the_background(client: TestClient, store, tapes) -> None:
    fork = store.fork(tapes["calc"].id, 0)
    fork_id = fork.id
    response = client.post(
        f"/tapes/{fork_id}/resume",
        data={
            "agent": "calc",
            "message": "What is 20 + 22?",
            "max_steps": "10",
            "csrf": csrf_of(client),
        },
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert wait_until_done(store, fork_id) == "stopped"
    resumed = store.get(fork_id)
    assert resumed.kinds() == ["user", "reasoning", "tool_call", "tool_result", "final_answer"]
    assert resumed[-1].answer == "42" and resumed.parent_id == tapes["calc"].id
    page = client.get(f"/tapes/{fork_id}").text
    assert "What is 20 + 22?" in page and "42" in page
    events = client.get(f"/tapes/{fork_id}/events", params={"from": 3}).text
    assert events.count("event: step") == 2 and 'id=\\"step-4\\"' in events
    assert 'event: end\ndata: {"status": "stopped"' in events


def test_resume_reports_unknown_and_broken_agents(client: TestClient, store, tapes) -> None:
    tape_id = tapes["calc"].id
    csrf = csrf_of(client)
    page = client.post(f"/tapes/{tape_id}/resume", data={"agent": "nobody", "csrf": csrf}).text
    assert "No agent named &#39;nobody&#39;" in page and "broken, calc, slow" in page
    page = client.post(f"/tapes/{tape_id}/resume", data={"agent": "broken", "csrf": csrf}).text
    assert "RuntimeError: this agent cannot be built" in page
    assert store.status(tape_id) == "stopped"


def test_annotations_are_added_shown_and_deleted(client: TestClient, store, tapes) -> None:
    tape_id = tapes["calc"].id
    csrf = csrf_of(client)
    form = {"step": "2", "rating": "-1", "label": "wrong-tool", "comment": "Should multiply."}
    form["csrf"] = csrf
    client.post(f"/tapes/{tape_id}/annotations", data=form)
    client.post(f"/tapes/{tape_id}/annotations", data={"rating": "4", "csrf": csrf})
    notes = store.annotations(tape_id)
    assert [(n.step_index, n.rating, n.label) for n in notes] == [
        (2, -1, "wrong-tool"),
        (None, 4, None),
    ]
    page = client.get(f"/tapes/{tape_id}").text
    assert "wrong-tool" in page and "Should multiply." in page and "4/5" in page
    empty = client.post(f"/tapes/{tape_id}/annotations", data={"step": "1", "csrf": csrf}).text
    assert "An annotation needs a rating, a label or a comment." in empty
    client.post(f"/annotations/{notes[0].id}/delete", data={"tape": tape_id, "csrf": csrf})
    assert [n.id for n in store.annotations(tape_id)] == [notes[1].id]


def test_diff_of_a_tape_and_its_edited_fork(client: TestClient, store, tapes) -> None:
    tape = tapes["calc"]
    fork = store.fork(tape, 5, edits={4: tape[4].model_copy(update={"answer": "6"})})
    page = client.get("/diff", params={"a": tape.id, "b": fork.id}).text
    assert "First divergence at step" in page and 'href="#diff-4">4</a>' in page
    assert "<del>5</del><ins>6</ins>" in page
    same = client.get("/diff", params=[("t", tape.id), ("t", tape.id)]).text
    assert "The tapes are the same" in same
    assert "Compare two tapes" in client.get("/diff").text


def test_pages_load_the_step_view_stylesheet_from_render(client: TestClient, tapes) -> None:
    page = client.get(f"/tapes/{tapes['calc'].id}").text
    assert '<link rel="stylesheet" href="/static/view/steps.css">' in page
    stylesheet = client.get("/static/view/steps.css")
    assert stylesheet.status_code == 200 and ".ta .fam-user" in stylesheet.text
    assert client.get("/static/studio.css").status_code == 200


# ----------------------------------------------------------------------------- security


def test_pages_carry_a_strict_content_security_policy(client: TestClient, tapes) -> None:
    headers = client.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_changes_need_the_csrf_token_and_the_same_origin(client: TestClient, store, tapes) -> None:
    tape_id = tapes["calc"].id
    before = store.count()
    assert client.post(f"/tapes/{tape_id}/fork", data={"at": "1"}).status_code == 403
    csrf = csrf_of(client)
    evil = client.post(
        f"/tapes/{tape_id}/fork",
        data={"at": "1", "csrf": csrf},
        headers={"origin": "http://evil.example"},
    )
    assert evil.status_code == 403 and "Cross-site request refused" in evil.text
    assert client.get(f"/tapes/{tape_id}/fork").status_code == 405  # changes are never GETs
    assert store.count() == before
    ok = client.post(
        f"/tapes/{tape_id}/fork",
        data={"at": "1", "csrf": csrf},
        headers={"origin": "http://127.0.0.1"},
        follow_redirects=False,
    )
    assert ok.status_code == 303 and store.count() == before + 1


def test_only_loopback_host_names_are_answered(store: TapeStore) -> None:
    with TestClient(create_app(store), base_url="http://attacker.example") as client:
        response = client.get("/")
    assert response.status_code == 400 and "does not answer for host" in response.text
    with TestClient(create_app(store), base_url="http://localhost:8765") as client:
        assert client.get("/").status_code == 200


def test_a_token_is_needed_once_then_kept_in_a_cookie(store: TapeStore, tapes) -> None:
    app = create_app(store, agents=AGENTS, token="s3cret")
    with TestClient(app, base_url="http://studio.lan:8765") as client:
        refused = client.get("/")
        assert refused.status_code == 401 and "?token=" in refused.text
        assert client.get("/", params={"token": "wrong"}).status_code == 401
        entry = client.get(
            f"/tapes/{tapes['calc'].id}", params={"token": "s3cret"}, follow_redirects=False
        )
        assert entry.status_code == 303 and "token" not in entry.headers["location"]
        cookie = entry.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert client.get(entry.headers["location"]).status_code == 200  # the cookie now
    with TestClient(app, base_url="http://studio.lan:8765") as other:
        assert other.get("/", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert other.get("/static/studio.css").status_code == 401


def test_one_run_at_a_time_and_live_events(client: TestClient, store, tapes) -> None:
    tape = store.fork(tapes["calc"].id, 1)  # the question only
    csrf = csrf_of(client)
    form = {"agent": "slow", "csrf": csrf}
    assert client.post(f"/tapes/{tape.id}/resume", data=form).status_code == 200
    again = client.post(f"/tapes/{tape.id}/resume", data=form).text
    assert "An agent is already running on tape" in again
    assert 'id="live"' in again and "data-live-src" in again  # the page follows the run
    with client.stream("GET", f"/tapes/{tape.id}/events", params={"from": 1}) as events:
        text = "".join(events.iter_text())
    steps = [json.loads(line[6:]) for line in text.split("\n") if line.startswith('data: {"index')]
    assert [step["index"] for step in steps] == [1, 2, 3, 4]
    assert 'data-kind="final_answer"' in steps[-1]["html"]
    assert text.rstrip().endswith('"error": null}') and "event: end" in text
    assert wait_until_done(store, tape.id) == "stopped"


def test_a_tape_left_running_by_another_process_can_be_followed_and_resumed(
    client: TestClient, store: TapeStore, tapes
) -> None:
    tape = store.fork(tapes["calc"].id, 1)
    store.set_status(tape.id, "running")  # its process was killed
    page = client.get(f"/tapes/{tape.id}").text
    assert "data-live-src" in page and "no live run holds it" in page
    assert 'name="force"' not in page  # nothing to take over
    assert "Resume this tape</button>" in page and "disabled>Resume" not in page
    form = {"agent": "calc", "csrf": csrf_of(client)}
    client.post(f"/tapes/{tape.id}/resume", data=form)
    assert wait_until_done(store, tape.id) == "stopped"
    assert store.get(tape.id)[-1].answer == "5"


def test_a_tape_that_a_live_run_elsewhere_holds_is_refused_until_taken_over(
    client: TestClient, store: TapeStore, tapes
) -> None:
    tape = store.fork(tapes["calc"].id, 1)
    store.set_status(tape.id, "running")
    elsewhere = store.lease(tape.id)  # a run in another process, alive: it holds the lease
    page = client.get(f"/tapes/{tape.id}").text
    assert f"being run elsewhere, by pid {os.getpid()} on {socket.gethostname()}" in page
    assert 'name="force"' in page and "Take over" in page
    form = {"agent": "calc", "csrf": csrf_of(client)}
    refused = client.post(f"/tapes/{tape.id}/resume", data=form).text
    assert f"Tape {tape.id[:8]} is being run elsewhere, by pid {os.getpid()}" in refused
    assert "its lease expires in" in refused and "Take over" in refused
    assert store.get(tape.id).kinds() == ["user"] and store.status(tape.id) == "running"

    client.post(f"/tapes/{tape.id}/resume", data={**form, "force": "on"})
    assert wait_until_done(store, tape.id) == "stopped"
    assert store.get(tape.id)[-1].answer == "5"
    assert store.lease_holder(tape.id) is None
    with pytest.raises(LeaseHeld, match="took it over"):  # the run elsewhere lost the tape
        elsewhere.renew()
