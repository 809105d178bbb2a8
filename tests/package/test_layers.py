"""Layers point one way (docs/design.md): a module imports only from lower layers or from its own
group, at module level or inside functions alike, so nothing reaches upward behind a lazy import."""

import ast
import os

from helpers import REPO

# Lowest first. A group is a module or a subpackage; groups of one layer do not import each other.
LAYERS = [
    ("foundation", ["uio_ds", "uio_ds.config", "uio_ds.formats", "uio_ds.machine",
                    "uio_ds.offload", "uio_ds.memory_tracker", "uio_ds.checkpoint", "uio_ds.run_dir",
                    "uio_ds.stopping"]),
    ("model", ["uio_ds.model"]),
    ("methods", ["uio_ds.algo", "uio_ds.baselines", "uio_ds.data"]),
    ("runs", ["uio_ds.engine", "uio_ds.eval", "uio_ds.memory_plan", "uio_ds.pretrain", "uio_ds.serve"]),
    ("trainer", ["uio_ds.trainer"]),
    ("entry points", ["uio_ds.train", "uio_ds.plan", "uio_ds.cli"]),
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
                # `from uio_ds import engine` imports the module uio_ds.engine
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
            same_group = t_group == group or (group in FOUNDATION and t_group in FOUNDATION)
            if not same_group and t_layer >= layer:
                wrong.append(f"{module} ({LAYERS[layer][0]}) imports {target} ({LAYERS[t_layer][0]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    """The scan finds function-level and relative imports, so the test above can fail."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from uio_ds.eval.passkey import evaluate_passkey\n    from ..model import kv\n"
                    "    from uio_ds import trainer\n")
    found = _imports(str(path), "uio_ds.data.probe")
    assert found == {"uio_ds.eval.passkey", "uio_ds.model.kv", "uio_ds.trainer"}
    assert _group("uio_ds.data.probe")[0] < _group("uio_ds.eval.passkey")[0]
