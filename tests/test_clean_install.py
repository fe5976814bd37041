"""The package installs without extras into a clean venv, and its quickstart runs there.

`pip install .` into a fresh virtual environment (the package registries are the only network
CI has), then the README's quickstart runs with `ScriptedLLM` in place of the local model, and
`import tapeagents` loads no extra's package. Slow (about a minute): `make test-slow-key` runs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXTRAS_PACKAGES = ("litellm", "torch", "transformers", "playwright", "ray", "fastapi")
SCRIPT = """\
from tapeagents.llms import LLMOutput, ScriptedLLM, tool_call

ANSWERS = [LLMOutput(tool_calls=[tool_call("add", '{"a": 2, "b": 3}')]), "2 + 3 = 5."]
"""


def quickstart() -> str:
    """The README's first Python block, with a scripted model in place of the local one."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None, "README.md has no Python block under '## Quickstart'"
    source = code.group(1)
    assert 'llms="local"' in source, "the quickstart no longer picks the model with llms=..."
    return SCRIPT + source.replace('llms="local"', "llms=ScriptedLLM(ANSWERS)")


def copy_source(target: Path) -> Path:
    """The files `pip install .` needs, copied so the build never writes into the checkout."""
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("tapeagents", "environments"):
        shutil.copytree(ROOT / name, target / name, ignore=ignore)
    return target


def source_packages() -> set[str]:
    """Every package of the checkout, by the path it installs to (`tapeagents/llms/local`)."""
    packages = {
        str(init.parent.relative_to(ROOT)) for init in (ROOT / "tapeagents").rglob("__init__.py")
    }
    for init in (ROOT / "environments").rglob("__init__.py"):
        packages.add(str(Path("tapeagents") / init.parent.relative_to(ROOT)))
    return {name for name in packages if "__pycache__" not in name}


def installed_packages(python: Path) -> set[str]:
    """Every package `pip install .` put into the venv's site-packages."""
    where = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    site = Path(where.stdout.strip())
    return {
        str(init.parent.relative_to(site))
        for init in (site / "tapeagents").rglob("__init__.py")
        if "__pycache__" not in str(init)
    }


@pytest.mark.slow
def test_installs_without_extras_and_runs_the_quickstart(tmp_path: Path) -> None:
    source = copy_source(tmp_path / "source")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(source)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert installed_packages(python) == source_packages()

    check = (
        quickstart()
        + "\nimport sys\n"
        + f"loaded = [name for name in {EXTRAS_PACKAGES!r} if name in sys.modules]\n"
        + "print('EXTRAS', loaded)\n"
        + "print('KINDS', result.tape.kinds())\n"
    )
    ran = subprocess.run(
        [str(python), "-c", check], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "awaiting_input" in ran.stdout
    assert "EXTRAS []" in ran.stdout, ran.stdout
    assert "KINDS ['user', 'tool_call', 'tool_result', 'assistant']" in ran.stdout, ran.stdout
    assert "assistant main 2 + 3 = 5." in ran.stdout

    for name in EXTRAS_PACKAGES:  # not even installed: no extra is a hidden requirement
        found = subprocess.run(
            [str(python), "-c", f"import importlib.util as u; print(u.find_spec({name!r}))"],
            capture_output=True,
            text=True,
        )
        assert found.stdout.strip() == "None", f"{name} was installed without its extra"


def test_the_quickstart_runs_here() -> None:
    """The same script, in this environment: fast feedback when the README changes."""
    namespace: dict[str, object] = {}
    exec(compile(quickstart(), "README.md#quickstart", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert result.tape.kinds() == ["user", "tool_call", "tool_result", "assistant"]  # type: ignore[attr-defined]
    assert sys.modules.get("tapeagents") is not None
