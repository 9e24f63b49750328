"""No import circles: the module-level imports among relkd's and pipeline's modules form no cycle (a circle made
`import relkd.student.config` alone fail unless relkd.config came first), and each module of the params schema
imports alone in a fresh interpreter."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from dvc_code_deps import PACKAGES, module_file, module_name  # noqa: E402


def modules() -> list[str]:
    return sorted(module_name(f) for root in PACKAGES.values() for f in root.rglob("*.py"))


def top_level_imports(name: str) -> set[str]:
    """Project modules imported when `name` is imported: its module-level imports (not those inside functions
    or under `if TYPE_CHECKING:`), each with the packages on its way."""
    path = module_file(name)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for n in names:
            parts = n.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i]))}
    return found - {name}


def test_module_level_imports_have_no_cycle():
    graph = {m: top_level_imports(m) for m in modules()}
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
    # A package importing its own submodule (relkd.tracking -> relkd.tracking.runs) is no circle unless the
    # submodule imports the package's names back; keep only cycles through two different files' bodies.
    real = [c for c in cycles if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not real, f"import cycles: {[' -> '.join(c) for c in real]}"


def test_the_cycle_check_sees_a_cycle(tmp_path, monkeypatch):
    # The walk must be able to fail: two modules importing each other at module level.
    import dvc_code_deps

    pkg = tmp_path / "relkd"
    pkg.mkdir()
    (pkg / "a.py").write_text("from relkd import b\n")
    (pkg / "b.py").write_text("import relkd.a\n")
    monkeypatch.setitem(dvc_code_deps.PACKAGES, "relkd", pkg)
    assert top_level_imports("relkd.a") == {"relkd.b"} and top_level_imports("relkd.b") == {"relkd.a"}
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: ["relkd.a", "relkd.b"])
    with pytest.raises(AssertionError, match="relkd.a -> relkd.b -> relkd.a"):
        test_module_level_imports_have_no_cycle()


@pytest.mark.parametrize("name", [m for m in modules() if m.endswith(("config", "section", "schema"))])
def test_each_config_module_imports_alone(name):
    # The params schema is what every stage and command loads first; each part must import on its own.
    res = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
