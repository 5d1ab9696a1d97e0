"""The shape of the package, kept by tests: the import graph of skhpo/ is acyclic (imports
inside functions included), no module only re-exports another, few wide signatures, and the
searches keep a fit's state in one object, not in private attributes read back by name."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "skhpo"


def _modules():
    """``{dotted name: parsed module}`` of every module under skhpo/."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text()))
    return out


def _imports(name, path, tree, modules):
    """The skhpo modules ``name`` imports, at any depth of its code."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in modules and m != name}


def _cycle(graph):
    """One import cycle of ``graph`` as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_is_acyclic():
    modules = _modules()
    graph = {name: _imports(name, path, tree, modules)
             for name, (path, tree) in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_only_re_exports_another():
    """An alias module (a star import, or imports alone, outside a package's __init__)."""
    for name, (path, tree) in _modules().items():
        if path.name == "__init__.py":
            continue
        body = [node for node in tree.body
                if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                and not (isinstance(node, ast.Assign) and
                         getattr(node.targets[0], "id", "") == "__all__")]
        stars = [node for node in body if isinstance(node, ast.ImportFrom) and
                 any(alias.name == "*" for alias in node.names)]
        assert not stars, f"{name} star-imports another module"
        assert any(not isinstance(node, (ast.Import, ast.ImportFrom)) for node in body), \
            f"{name} only imports"


def _wide(tree, limit=8):
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "__init__":
            a = node.args
            n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + \
                bool(a.kwarg) - bool(a.args and a.args[0].arg in ("self", "cls"))
            if n >= limit:
                out.append(node.name)
    return out


def test_at_most_three_wide_signatures():
    wide = [f"{name}.{f}" for name, (_, tree) in _modules().items() for f in _wide(tree)]
    assert len(wide) <= 3, wide


def test_the_searches_read_no_private_state_by_name():
    """A fit's state is one object (``FitState``, ``HoldoutRun``), not ``getattr(self,
    "_...")`` reads of attributes set somewhere else."""
    reads = []
    for name, (_, tree) in _modules().items():
        if not name.startswith("skhpo.search"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" \
                    and len(node.args) >= 2 and getattr(node.args[0], "id", None) == "self" \
                    and str(getattr(node.args[1], "value", "")).startswith("_"):
                reads.append(f"{name}:{node.lineno}")
    assert len(reads) <= 5, reads
