"""An import-linter contract type (``pyproject.toml`` registers it): no module uses a
private name (``_x``, not ``__x__``) of another module of the project.

Read from each module's source with ``ast``, nothing is imported: ``from a.b import _x``,
``from a import b`` then ``b._x``, and ``import a.b as m`` then ``m._x`` all count. A
module may use its own private names, and a name that a module defines for itself does
not count when the module happens to import another of the same spelling.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _source(module: str) -> Path | None:
    base = Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_uses(module: str, roots: tuple[str, ...]) -> list[str]:
    """``"module:line uses target._name"`` for every private name of another project module."""
    path = _source(module)
    if path is None:
        return []
    tree = ast.parse(path.read_text(), filename=str(path))
    ours = lambda m: m.split(".")[0] in roots  # noqa: E731
    aliases: dict[str, str] = {}  # local name -> project module it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _absolute(module, node, path.name == "__init__.py")
            if not ours(target) or target == module:
                continue
            for a in node.names:
                if _private(a.name):
                    found.append(f"{module}:{node.lineno} imports {target}.{a.name}")
                elif _source(f"{target}.{a.name}") is not None:
                    aliases[a.asname or a.name] = f"{target}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if ours(a.name) and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and _private(node.attr) and aliases[node.value.id] != module):
            found.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return sorted(found, key=lambda line: int(line.split(":")[1].split()[0]))


def _render(title: str, lines: list[str]) -> None:
    """A broken contract's report: its title, then one line per finding."""
    output.print_error(title, bold=False)
    output.new_line()
    for line in lines:
        output.print_error(f"- {line}", bold=False)
    output.new_line()


class PrivateNamesContract(Contract):
    type_name = "private_names"

    packages = fields.ListField(subfield=fields.StringField())  # the project's names
    modules = fields.ListField(subfield=fields.StringField(), required=False)  # single-file modules to read too

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        roots = tuple(self.packages)  # type: ignore[arg-type]
        found = []
        for module in sorted(set(graph.modules) | set(self.modules or ())):  # type: ignore[arg-type]
            if module.split(".")[0] in roots:
                found += private_uses(module, roots)
        return ContractCheck(kept=not found, metadata={"uses": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        _render("Private names used from another module:", check.metadata["uses"])


def face_of(package: str) -> tuple[str, ...] | None:
    """The modules a subpackage offers to the rest of the project: its ``__init__``'s
    ``__all__`` (read with ``ast``); None without one."""
    path = _source(package)
    if path is None:
        return None
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
                and isinstance(node.value, (ast.List, ast.Tuple))):
            return tuple(e.value for e in node.value.elts if isinstance(e, ast.Constant))
    return None


def behind_faces(graph: grimp.ImportGraph, containers: list[str], importers: tuple[str, ...]) -> list[str]:
    """``"importer -> module"`` for every import, from a module of ``importers`` outside a
    subpackage of a container, of a module that the subpackage's face does not name."""
    found = []
    for container in containers:
        for package in sorted(graph.find_children(container)):
            face = face_of(package)
            if face is None:
                continue
            for module in sorted(graph.find_descendants(package)):
                if module.split(".")[len(package.split("."))] in face:
                    continue
                for importer in sorted(graph.find_modules_that_directly_import(module)):
                    if importer.split(".")[0] in importers and not importer.startswith(package + "."):
                        found.append(f"{importer} -> {module} (the face of {package}: {', '.join(face)})")
    return found


class PublicFaceContract(Contract):
    """Each subpackage of ``containers`` that declares ``__all__`` is used from outside only
    through the modules it names there; ``importers`` are the root packages held to it."""

    type_name = "public_face"

    containers = fields.ListField(subfield=fields.StringField())
    importers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        found = behind_faces(graph, list(self.containers), tuple(self.importers))  # type: ignore[arg-type]
        return ContractCheck(kept=not found, metadata={"imports": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        _render("Imports past a subpackage's face (its __init__'s __all__):", check.metadata["imports"])
