"""The package's shape: no import cycles, no lower layer importing a higher one, no reaching into another module's
private names, and checking a config loads neither hnswlib nor ONNX Runtime.

Imports are read from the source (``ast``), including those under ``TYPE_CHECKING`` and inside functions: a cycle
hidden behind a lazy import is still a cycle for the reader.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "facegate"

#: Lowest first. A module may import its own layer or lower ones. Prefixes match module names (``packs`` = every
#: ``facegate.packs.*``); the longest matching prefix wins.
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "errors", "fileio", "limits", "signing", "calibration", "scoring", "detections", "imaging", "config",
     "config_rules", "config_file"),
    ("packs", "gallery.location", "homeassistant"),
    ("pipeline", "gallery", "config_checks", "evaluation", "door"),
    ("runtime",),
    ("commands", "cli", "console"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts) or "__init__"] = path
    return out


def _imports(path: Path, name: str) -> list[tuple[str, list[str], int]]:
    """(imported facegate module, names taken from it, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("facegate."):
                    found.append((alias.name.removeprefix("facegate."), [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            elif node.module and (node.module == "facegate" or node.module.startswith("facegate.")):
                module = node.module.removeprefix("facegate").removeprefix(".") or "__init__"
            else:
                continue
            found.append((module, [a.name for a in node.names], node.lineno))
    return found


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"module facegate.{module} is in no layer of tests/test_layers.py: add it"
    return best


def _resolve(module: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """``from facegate.x import y``: y may be a submodule."""
    targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
    return targets or [module]


def test_no_import_cycles_and_no_upward_imports():
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    upward = []
    for name, path in modules.items():
        for module, names, line in _imports(path, name):
            for target in _resolve(module, names, modules):
                if target not in modules or target == name:
                    continue
                graph[name].add(target)
                if _layer(target) > _layer(name):
                    upward.append(f"facegate.{name}:{line} imports facegate.{target} (a higher layer)")
    assert not upward, "\n".join(upward)
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    private = []
    for name, path in modules.items():
        for module, names, line in _imports(path, name):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    private.append(f"facegate.{name}:{line} imports {n} from facegate.{module}")
    assert not private, "\n".join(private)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_checking_a_config_loads_neither_hnswlib_nor_onnxruntime(tmp_path):
    config = tmp_path / "facegate.yaml"
    config.write_text("cameras: [{id: a, usb: 0}]\ndecision: {k: 2, n: 4}\n")
    code = textwrap.dedent(f"""
        import sys
        from facegate.config_checks import check_file
        checked, issues = check_file({str(config)!r})  # what `facegate config check` runs
        assert checked is not None and issues == [], issues
        print(",".join(m for m in ("hnswlib", "onnxruntime", "cv2") if m in sys.modules))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "", f"loaded by reading a config: {run.stdout}"
