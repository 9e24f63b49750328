import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sh(cmd, cwd, env=None, check=True):
    """Run a command with the test's venv first on PATH (DVC stage commands call `python`)."""
    full = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {}))
    full.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, shell=isinstance(cmd, str))
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


# Pipeline outputs of a local `dvc repro` never belong in the copy: a clean clone has none of them.
OUTPUT_ROOTS = ("data/", "models/", "reports/", "plots/", "metrics/", "triton_repo/relevance_student/")


def copy_repo(dest: Path) -> Path:
    """A temporary copy of the working tree as a fresh git repository, so DVC and git behave as in a
    clean clone: tracked files, plus untracked source files (work not yet committed) outside the
    pipeline's output folders."""
    def listed(*args: str) -> list[str]:
        out = subprocess.run(["git", "ls-files", "-z", *args], cwd=ROOT, capture_output=True, check=True)
        return [f for f in out.stdout.decode().split("\0") if f]

    files = listed("--cached") + [f for f in listed("--others", "--exclude-standard")
                                  if not f.startswith(OUTPUT_ROOTS)]
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    sh("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm copy", dest)
    return dest


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
