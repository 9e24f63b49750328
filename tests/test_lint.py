"""The code's shape, held by ruff (configured in pyproject.toml): lines of at most 120 characters, imports in order,
no unused imports or names."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "pipeline", "tests", "bench", "scripts"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"ruff check (fix with `ruff check --fix`, then shorten long lines):\n{res.stdout}"
