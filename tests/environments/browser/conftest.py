"""One browser per test module: a MiniWoB++ environment, and a server for small test pages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from tapeagents.environments.browser import MiniWoBEnvironment, MiniWoBServer

PAGES = {
    "form.html": """<!DOCTYPE html><html><head><title>Form</title></head><body>
<h1>Sign up</h1>
<label>Name <input id="name" type="text"></label>
<label>Colour <select id="colour"><option value="r">Red</option><option value="g">Green</option>
</select></label>
<label><input id="news" type="checkbox"> News</label>
<button onclick="document.getElementById('out').textContent =
  document.getElementById('name').value + '/' + document.getElementById('colour').value + '/' +
  document.getElementById('news').checked">Send</button>
<p id="out"></p>
<a href="second.html">Second page</a>
<a href="https://example.com/">Outside</a>
</body></html>""",
    "second.html": """<!DOCTYPE html><html><head><title>Second</title></head><body>
<p>The second page.</p><img src="https://tracker.example.net/pixel.png" alt="">
</body></html>""",
    "long.html": "<html><head><title>Long</title></head><body>"
    + "".join(f"<p>Paragraph number {i}</p>" for i in range(400))
    + "</body></html>",
}


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniWoBServer]:
    """A local HTTP server for the test pages (MiniWoBServer serves any directory)."""
    root: Path = tmp_path_factory.mktemp("pages")
    for name, html in PAGES.items():
        (root / name).write_text(html)
    with MiniWoBServer(root) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def miniwob() -> AsyncIterator[MiniWoBEnvironment]:
    """A MiniWoB++ environment (its own server and Chromium) shared by a module's tests."""
    async with MiniWoBEnvironment(action_timeout=2.0) as env:
        yield env
