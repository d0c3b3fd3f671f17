"""The package's shape, enforced: no import cycle (function-local imports included: they only hide
one), nothing outside ``cli/`` imports the CLI, and only the CLI and the human verifier draw with rich."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "autoannotator"
RICH_ALLOWED = ("autoannotator.cli", "autoannotator.verify.human")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every autoannotator module ``path`` imports, at any depth of the file (TYPE_CHECKING blocks excepted)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` imports are for the type checker, never executed
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from pkg import module` names a module too
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, name, set(mods)) for name, path in mods.items()}


def _rich_users() -> set[str]:
    users = set()
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m == "rich" or m.startswith("rich.") for m in mods):
                users.add(name)
    return users


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_nothing_outside_the_cli_imports_it():
    offenders = {name: sorted(d for d in deps if d == "autoannotator.cli" or d.startswith("autoannotator.cli."))
                 for name, deps in _graph().items()
                 if not (name == "autoannotator.cli" or name.startswith("autoannotator.cli."))}
    assert not {k: v for k, v in offenders.items() if v}


def test_only_the_cli_and_the_human_verifier_use_rich():
    assert {m for m in _rich_users() if not m.startswith(RICH_ALLOWED)} == set()


def test_the_checks_see_real_edges():
    # A checker that found nothing would pass vacuously: it must see the package's known edges.
    graph = _graph()
    assert "autoannotator.graphs.annotate" in graph["autoannotator.runner"]
    assert "autoannotator.run.cache" in graph["autoannotator.verify.llm"]
    assert "autoannotator.cli.chat" in graph["autoannotator.cli.app"]
    assert "autoannotator.cli.trace" in _rich_users()
