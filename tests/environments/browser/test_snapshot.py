"""Snapshots: stable references, trimming with a marker, and the parser the experts use."""

from __future__ import annotations

from tapeagents.environments.browser import RefMap, parse_snapshot, trim_snapshot

PAGE = """\
- generic [active] [ref=e1]:
  - 'button "Say \\"hi\\": now" [ref=e2]'
  - paragraph [ref=e3]: "Text: with colon"
  - radio "one" [checked] [ref=e5]
  - text: one
  - textbox "Name" [ref=e6]: "abc: d"
  - list [ref=e8]:
    - listitem [ref=e9]: item
  - link "Home" [ref=e10] [cursor=pointer]:
    - /url: /index.html
  - iframe [ref=e12]:
    - button "inner" [ref=f1e2]"""


def test_refs_are_renumbered_in_order_of_first_appearance() -> None:
    refs = RefMap()
    first = refs.rewrite("- button [ref=e57]\n- link [ref=e60]")
    assert first == "- button [ref=e1]\n- link [ref=e2]"
    # a later snapshot keeps the numbers of known elements and continues for new ones
    assert refs.rewrite("- link [ref=e60]\n- textbox [ref=e99]") == (
        "- link [ref=e2]\n- textbox [ref=e3]"
    )
    assert refs.resolve("e3") == "e99"
    assert refs.resolve("e4") is None
    refs.clear()
    assert refs.rewrite("- textbox [ref=e99]") == "- textbox [ref=e1]"


def test_iframe_refs_are_renumbered_too() -> None:
    refs = RefMap()
    assert refs.rewrite("- button [ref=f1e2]") == "- button [ref=e1]"
    assert refs.resolve("e1") == "f1e2"


def test_long_snapshots_are_cut_at_a_line_with_a_marker() -> None:
    text = "\n".join(f"- paragraph: line {i}" for i in range(100))
    trimmed = trim_snapshot(text, 200)
    kept, marker = trimmed.rsplit("\n", 1)
    assert len(kept) <= 200 and kept.endswith(text.splitlines()[len(kept.splitlines()) - 1])
    assert marker.startswith("[... page trimmed:") and "more lines" in marker
    assert trim_snapshot(text, 10_000) == text


def test_parser_reads_roles_names_refs_attributes_and_text() -> None:
    root = parse_snapshot(PAGE)
    (body,) = root.children
    assert (body.role, body.ref, body.attributes) == ("generic", "e1", {"active": ""})
    by_ref = {e.ref: e for e in root.walk() if e.ref}
    assert by_ref["e2"].role == "button" and by_ref["e2"].name == 'Say "hi": now'
    assert by_ref["e3"].text == "Text: with colon"
    assert "checked" in by_ref["e5"].attributes
    assert (by_ref["e6"].name, by_ref["e6"].text) == ("Name", "abc: d")
    assert by_ref["e8"].children[0].text == "item"
    assert by_ref["e10"].properties == {"/url": "/index.html"}
    assert by_ref["f1e2"].name == "inner"
    assert [e.role for e in body.children].count("text") == 1
    assert by_ref["e8"].all_text() == "item"
