"""Layers point one way (docs/design.md): a module imports only from lower layers or from its own
group, at module level or inside functions alike, so nothing reaches upward behind a lazy import."""

import ast
import os

from helpers import REPO

# Lowest first. A group is a module or a subpackage; groups of one layer do not import each other,
# but in the foundation, whose groups may import each other except config (a leaf).
LAYERS = [
    ("foundation", ["uio_ds", "uio_ds.config", "uio_ds.formats", "uio_ds.utils"]),
    ("model", ["uio_ds.model"]),
    ("methods", ["uio_ds.algo", "uio_ds.baselines", "uio_ds.data"]),
    ("runs", ["uio_ds.train", "uio_ds.eval", "uio_ds.pretrain", "uio_ds.serve"]),
    ("planner", ["uio_ds.plan"]),
    ("entry points", ["uio_ds.cli"]),
    ("python -m uio_ds", ["uio_ds.__main__"]),
]
FOUNDATION = LAYERS[0][1]


def _group(module: str) -> tuple[int, str]:
    """(layer index, group) of a dotted module name; the longest matching group wins."""
    best = None
    for index, (_name, groups) in enumerate(LAYERS):
        for group in groups:
            if (module == group or module.startswith(group + ".")) and (best is None or len(group) > len(best[1])):
                best = (index, group)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/design.md"
    return best


def _modules() -> dict[str, str]:
    out = {}
    root = os.path.join(REPO, "uio_ds")
    for folder, _dirs, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), REPO)[: -len(".py")].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(folder, f)
    return out


def _imports(path: str, module: str) -> set[str]:
    """Every uio_ds module ``path`` imports, anywhere in the file (relative imports resolved)."""
    found = set()
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "uio_ds"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "uio_ds":
                # `from uio_ds.train import engine` imports the module uio_ds.train.engine
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    is_module = os.path.exists(os.path.join(REPO, *sub.split(".")) + ".py") or os.path.isdir(
                        os.path.join(REPO, *sub.split(".")))
                    found.add(sub if is_module else base)
    return found


def test_every_module_imports_downward_only():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        layer, group = _group(module)
        for target in _imports(path, module):
            t_layer, t_group = _group(target)
            same_group = t_group == group or (group in FOUNDATION and t_group in FOUNDATION
                                              and group != "uio_ds.config")
            if not same_group and t_layer >= layer:
                wrong.append(f"{module} ({LAYERS[layer][0]}) imports {target} ({LAYERS[t_layer][0]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_back():
    """No import cycle, lazy imports included: within a group every module has its own place too."""
    modules = _modules()
    graph = {m: {t for t in _imports(p, m) if t in modules and t != m} for m, p in modules.items()}
    # a package's __init__ re-exports its modules; a module importing its package's name is not a cycle
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_config_is_a_leaf():
    """uio_ds.config imports nothing else of uio_ds, so every layer may read it."""
    modules = _modules()
    outside = {f"{m} imports {t}" for m, p in modules.items() if m.startswith("uio_ds.config")
               for t in _imports(p, m) if not t.startswith("uio_ds.config")}
    assert not outside, sorted(outside)


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    """The scan finds function-level and relative imports, so the test above can fail."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from uio_ds.eval.passkey import evaluate_passkey\n    from ..model import kv\n"
                    "    from uio_ds import train\n")
    found = _imports(str(path), "uio_ds.data.probe")
    assert found == {"uio_ds.eval.passkey", "uio_ds.model.kv", "uio_ds.train"}
    assert _group("uio_ds.data.probe")[0] < _group("uio_ds.eval.passkey")[0]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
