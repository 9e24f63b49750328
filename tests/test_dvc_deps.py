"""dvc.yaml knows what each stage runs: every project file a stage's module imports (transitively, function-level
imports included) is under one of that stage's `deps:`, so an edit to it re-runs the stage. A missing dep made
`dvc repro` keep results of code that had changed; this test names the stage and the file."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"relkd": ROOT / "src" / "relkd", "pipeline": ROOT / "pipeline"}


def module_file(name: str) -> Path | None:
    head, *rest = name.split(".")
    if head not in PACKAGES:
        return None
    base = PACKAGES[head].joinpath(*rest)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return base / "__init__.py" if (base / "__init__.py").is_file() else None


def module_name(path: Path) -> str:
    for head, root in PACKAGES.items():
        if path.is_relative_to(root):
            parts = [head, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def imported(path: Path) -> set[str]:
    """Project modules `path` imports anywhere in its body, with the packages on the way (their __init__ runs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}  # `from relkd.eval import metrics`
    found = set()
    for name in names:
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i]))}
    return found


def inert(path: Path) -> bool:
    """A package __init__ holding only a docstring and constants: importing it runs nothing an edit could change
    in a stage's result."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(n, (ast.Expr, ast.Assign)) for n in body)


def schema(path: Path) -> bool:
    """The params schema (relkd.config and the typed sections it assembles): what a stage reads from it are the
    values DVC already tracks as the stage's `params:` (and test_config holds the defaults equal to params.yaml),
    so a stage does not list these files, nor what they import for their constants, and the walk stops there."""
    return path.name in ("config.py", "section.py") or path.name.endswith("_config.py")


def closure(module: str) -> set[Path]:
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if not schema(module_file(name)):
            todo += sorted(imported(module_file(name)) - seen)
    return {f for f in map(module_file, seen) if not (schema(f) or f.name == "__init__.py" and inert(f))}


def stages() -> dict[str, dict]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: s.get("do", s) for name, s in spec.items()}


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or rel.is_relative_to(Path(d)) for d in deps)


@pytest.mark.parametrize("stage", sorted(stages()))
def test_each_stage_declares_the_code_it_runs(stage):
    spec = stages()[stage]
    module = spec["cmd"].split(" -m ", 1)[1].split()[0]  # `python -m X` or `accelerate launch ... -m X`
    missing = sorted(str(f.relative_to(ROOT)) for f in closure(module) if not covered(f, spec["deps"]))
    assert not missing, f"dvc.yaml stage {stage!r} runs {missing} but does not list them in deps:"


def test_the_import_walk_sees_function_level_and_from_imports():
    # The walk itself must find what a stage runs, or the test above could not fail.
    found = {str(f.relative_to(ROOT)) for f in closure("pipeline.teacher_dpo")}
    assert "src/relkd/teacher/trainers.py" in found  # imported inside a function
    assert "pipeline/common.py" in found and "src/relkd/models.py" in found
    assert not covered(ROOT / "src/relkd/models.py", ["src/relkd/teacher", "pipeline/teacher_dpo.py"])
