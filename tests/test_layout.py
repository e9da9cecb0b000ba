"""The layout of gateway/: imports point one way (commands -> daemon -> stages -> records and
config), no module reaches into another's private names, and modules stay small.

The sources are read with ast, never imported: an import inside a function counts as much as
one at the top, as it is a dependency all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
STAGES = ("radio", "uplink", "detect", "publish", "service")
MAX_LINES = 400
REASON = "Over 400 lines:"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, str | None, int]]:
    """(gateway module imported, name taken from it or None, line) for every import of `name`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per dot past the first
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                # `from gateway.detect import persistence` imports the module gateway.detect.persistence.
                submodule = f"{base}.{alias.name}"
                if submodule in MODULES:
                    found.append((submodule, None, node.lineno))
                else:
                    found.append((base, alias.name, node.lineno))
    return [(m, n, line) for m, n, line in found if m in MODULES and m != name]


def _graph() -> dict[str, set[str]]:
    return {name: {m for m, _, _ in _imports(name)} for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first search closes, each as the path round it."""
    cycles: list[list[str]] = []
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node)
    return cycles


def _layer(name: str) -> int | None:
    """Higher layers may import lower ones, never the reverse; records and config are beside them all."""
    parts = name.split(".")
    if len(parts) > 1 and parts[1] == "commands":
        return 2
    if name == "gateway.daemon":
        return 1
    if len(parts) > 1 and parts[1] in STAGES:
        return 0
    return None


def test_the_package_is_read() -> None:
    assert {"gateway.daemon", "gateway.commands", "gateway.detect.detector"} <= MODULES.keys()


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names() -> None:
    bad = [
        f"{name}:{line} imports {taken} from {module}"
        for name in MODULES
        for module, taken, line in _imports(name)
        if taken is not None and taken.startswith("_") and not taken.endswith("__")
    ]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_modules_over_400_lines_say_why() -> None:
    bad = []
    for path in MODULES.values():
        text = path.read_text()
        lines = len(text.splitlines())
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and not any(line.startswith(REASON) for line in doc.splitlines()):
            bad.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines and no '{REASON} <why>' in its docstring")
    assert not bad, "\n".join(bad)


def test_imports_point_one_way() -> None:
    """A stage imports neither the daemon nor the commands; the daemon does not import the commands."""
    bad = []
    for name in MODULES:
        low = _layer(name)
        for module, _, line in _imports(name):
            high = _layer(module)
            if low is not None and high is not None and high > low:
                bad.append(f"{name}:{line} imports {module}")
    assert not bad, "imports against the data flow (commands -> daemon -> stages):\n" + "\n".join(bad)
