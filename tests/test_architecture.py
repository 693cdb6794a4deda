"""The structure rules that import-linter's contracts do not express: no import cycle between
the package's modules, and no module importing another's private names."""

import ast
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parents[1] / "fewshot_metaopt"


def module_cycles(graph) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.find_modules_directly_imported_by(node):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_between_modules():
    # A package's __init__ importing its own modules is how packages export; it is no cycle.
    graph = grimp.build_graph("fewshot_metaopt", exclude_type_checking_imports=True)
    for module in list(graph.modules):
        if graph.find_children(module):
            for child in graph.find_modules_directly_imported_by(module):
                graph.remove_import(importer=module, imported=child)
    assert module_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("a", "b", "c"):
        graph.add_module(name)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="a")
    graph.add_import(importer="b", imported="c")
    assert module_cycles(graph) == [["a", "b"]]


def private_imports(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """``from X import _name`` where X is another module of the package under ``root``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("fewshot_metaopt")):
            found += [f"{path.relative_to(root)}: {alias.name}" for alias in node.names
                      if alias.name.startswith("_") and not alias.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    assert [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in private_imports(path)] == []


def test_the_private_import_scan_sees_one(tmp_path):
    copy = tmp_path / "fewshot_metaopt" / "x.py"
    copy.parent.mkdir()
    copy.write_text((PACKAGE / "optim" / "tree.py").read_text() + "\nfrom .schedules import _shown\n")
    assert private_imports(copy, tmp_path) == ["fewshot_metaopt/x.py: _shown"]
