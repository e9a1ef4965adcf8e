"""The module map in docs/developer.rst is true: it lists every module of
lib/icf/, and no module imports an icf module the map does not allow."""

from __future__ import annotations

import ast
import re

from conftest import REPO

LIB = REPO / "lib" / "icf"
ROW = re.compile(r"^   \* - :mod:`(icf(?:\.\w+)?)`\n((?:     .*\n)+?)     -(.*)\n((?:       .*\n)*)", re.M)


def module_map() -> dict[str, set[str]]:
    """module -> the icf modules the developer guide allows it to import."""
    text = (REPO / "docs" / "developer.rst").read_text()
    allowed = {}
    for name, _, first, more in ROW.findall(text):
        words = (first + " " + more).replace(",", " ").split()
        allowed[name] = {"icf" if word == "icf" else f"icf.{word}" for word in words}
    return allowed


def imports(path) -> set[str]:
    """The icf modules a source file imports (``from icf import x`` counts
    as importing ``icf``, ``from icf.x import y`` as ``icf.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "icf":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "icf")
    return found


def test_module_map_lists_every_module_and_every_import():
    allowed = module_map()
    modules = {"icf" if p.stem == "__init__" else f"icf.{p.stem}": p for p in LIB.glob("*.py")}
    assert set(allowed) == set(modules)
    for name, path in modules.items():
        assert imports(path) <= allowed[name], name
    order = list(allowed)
    for name, others in allowed.items():  # bottom-up: no cycles
        assert all(order.index(other) < order.index(name) for other in others), name
