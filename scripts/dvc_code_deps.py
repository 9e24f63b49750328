"""dvc.yaml's code deps, computed: each stage lists exactly the project files its module runs (the import closure
of `python -m MODULE`, function-level imports included, the params schema left out: DVC tracks what a stage reads
from it as its `params:`). An edit re-runs the stages that run the edited file and no other.

    python scripts/dvc_code_deps.py          # rewrite the code entries of every stage's deps in dvc.yaml
    python scripts/dvc_code_deps.py --check  # exit 1 and name the stages whose code deps differ

tests/test_dvc_deps.py holds dvc.yaml equal to what this computes."""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CODE = ("src/", "pipeline/")
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


def stages(text: str) -> dict[str, dict]:
    spec = yaml.safe_load(text)["stages"]
    return {name: s.get("do", s) for name, s in spec.items()}


def stage_module(spec: dict) -> str:
    return spec["cmd"].split(" -m ", 1)[1].split()[0]  # `python -m X` or `accelerate launch ... -m X`


def code_deps(spec: dict) -> list[str]:
    """The project files the stage's module runs, relative to the repository, sorted (its own module first)."""
    own = str(module_file(stage_module(spec)).relative_to(ROOT))
    rest = sorted(str(f.relative_to(ROOT)) for f in closure(stage_module(spec)))
    return [own, *[r for r in rest if r != own]]


def listed_code(spec: dict) -> list[str]:
    return [d for d in spec["deps"] if isinstance(d, str) and d.startswith(CODE)]


def rewrite(text: str) -> str:
    """dvc.yaml with each stage's code entries under deps replaced by :func:`code_deps` (other deps, comments and
    layout kept; the code entries go where the first one was)."""
    wanted = {name: code_deps(spec) for name, spec in stages(text).items()}
    lines, out, stage, i = text.splitlines(keepends=True), [], None, 0
    while i < len(lines):
        line = lines[i]
        head = re.match(r"^  ([A-Za-z0-9_]+):\s*$", line)
        if head:
            stage = head.group(1)
        deps = re.match(r"^(\s+)deps:\s*$", line)
        out.append(line)
        i += 1
        if not deps:
            continue
        item = deps.group(1) + "  - "
        placed = False
        while i < len(lines) and lines[i].startswith(item):
            entry = lines[i][len(item):].strip()
            if entry.startswith(CODE):
                if not placed:
                    out += [f"{item}{d}\n" for d in wanted[stage]]
                    placed = True
            else:
                out.append(lines[i])
            i += 1
        if not placed:
            raise SystemExit(f"dvc.yaml stage {stage!r} lists no code under deps: add its module file")
    return "".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only say which stages differ (exit 1 if any)")
    ap.add_argument("--dvc-yaml", default=str(ROOT / "dvc.yaml"), help="the dvc.yaml to read (and rewrite)")
    a = ap.parse_args(argv)
    path = Path(a.dvc_yaml)
    text = path.read_text(encoding="utf-8")
    new = rewrite(text)
    if a.check:
        old, now = stages(text), stages(new)
        bad = [n for n in old if listed_code(old[n]) != listed_code(now[n])]
        for n in bad:
            print(f"{n}: code deps differ from its imports; run python scripts/dvc_code_deps.py")
        return 1 if bad else 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
