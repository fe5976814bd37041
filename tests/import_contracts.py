"""An import-linter contract that `lint-imports` runs: no module imports another's private names.

ruff's `PLC2701` (import-private-name) checks this across packages only: inside `tapeagents` a
`from tapeagents.export.formats import _open` passes it. This contract covers the package itself.
A private name (`_name`, not a dunder) belongs to its module; another module that needs it should
use, or ask for, a public name.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck

__all__ = ["PrivateNamesContract"]


@dataclass(frozen=True)
class PrivateImport:
    """`importer` imports the private `name` from the module `imported` (line `line`)."""

    importer: str
    imported: str
    name: str
    line: int


class PrivateNamesContract(Contract):
    """No module of `packages` imports a private name from another module.

    Configuration options:

        - packages: The packages whose modules are checked (all of their modules).
    """

    type_name = "private_names"

    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        found: list[PrivateImport] = []
        for package in self.packages:  # type: ignore[attr-defined]
            modules = {package} | graph.find_descendants(package)
            for module in sorted(modules):
                found.extend(_private_imports(module, _source_file(module), graph))
        return ContractCheck(kept=not found, metadata={"found": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        output.print_error("These modules import another module's private names:", bold=False)
        output.new_line()
        for item in check.metadata["found"]:
            output.print_error(
                f"- {item.importer} -> {item.imported}.{item.name} (l.{item.line})", bold=False
            )
            output.new_line()
        output.print("Make the name public (and list it in `__all__`), or move the code.")


def _source_file(module: str) -> Path:
    """The file of `module`, found without importing it (its package may import an extra)."""
    root, _, rest = module.partition(".")
    spec = importlib.util.find_spec(root)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"Cannot find the package {root!r}; run lint-imports from the repository.")
    base = Path(next(iter(spec.submodule_search_locations)))
    path = base.joinpath(*rest.split(".")) if rest else base
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _private_imports(module: str, path: Path, graph: grimp.ImportGraph) -> list[PrivateImport]:
    is_package = path.name == "__init__.py"
    found: list[PrivateImport] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        imported = _absolute(module, is_package, node.module, node.level)
        if imported == module or not imported.startswith(module.split(".")[0] + "."):
            continue  # its own names, or another package's (ruff checks those)
        for alias in node.names:
            name = alias.name
            if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
                continue
            if f"{imported}.{name}" in graph.modules:
                continue  # a private submodule: import-linter's `private_modules` judges those
            found.append(PrivateImport(module, imported, name, node.lineno))
    return found


def _absolute(module: str, is_package: bool, target: str | None, level: int) -> str:
    """The absolute name of the module a `from ... import` statement reads from."""
    if level == 0:
        return target or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)
