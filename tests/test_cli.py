"""One CLI stack: every stage is a click command with its real options, under `relkd stage NAME` and as
`python -m pipeline.NAME` (what dvc.yaml runs); listing the stages imports none of them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from relkd.cli import _stage_names, main

ROOT = Path(__file__).resolve().parents[1]


def _relkd(*args):
    return subprocess.run([sys.executable, "-m", "relkd.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_stage_help_lists_the_real_options():
    """`relkd stage NAME` runs the stage module as a process of its own (the library never imports the glue)."""
    out = _relkd("stage", "teacher_dpo", "--help")
    assert out.returncode == 0, out.stderr
    for option in ("--params", "--pairs", "--sft", "--out", "--checkpoints", "--metrics"):
        assert option in out.stdout
    out = _relkd("probe", "--help")
    assert out.returncode == 0 and "--models" in out.stdout and "--embeddings" in out.stdout


def test_a_missing_path_is_named():
    out = _relkd("stage", "nightly")
    assert out.returncode == 2 and "Missing option '--out'" in out.stderr


def test_every_dvc_stage_command_parses(tmp_path):
    """Each dvc.yaml cmd's options are ones its stage command declares (a renamed option fails here, not in a
    two-hour repro)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name, spec in stages.items():
        cmd = spec.get("do", spec)["cmd"]
        launcher, rest = cmd.split(" -m pipeline.", 1)  # `python` or `accelerate launch --num_processes N`
        assert launcher.split()[0] in ("python", "accelerate"), f"{name}: launched by {launcher!r}"
        module = rest.split()[0]
        import importlib

        command = importlib.import_module(f"pipeline.{module}").main
        given = {w.split("=")[0] for w in rest.split() if w.startswith("--")}
        declared = {opt for p in command.params for opt in p.opts}
        assert given <= declared, f"{name}: {sorted(given - declared)} not options of pipeline.{module}"
        required = {p.opts[0] for p in command.params if p.required}
        assert required <= given, f"{name}: dvc.yaml does not pass {sorted(required - given)}"


def test_listing_stages_imports_no_stage():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom relkd.cli import main\n"
            "CliRunner().invoke(main, ['stage', '--help'])\n"
            "print(sorted(m for m in sys.modules if m.startswith('pipeline.')), 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[] False"
    assert "teacher_dpo" in _stage_names() and "common" not in _stage_names()


@pytest.mark.parametrize("name", ["nightly"])
def test_python_dash_m_runs_the_same_command(name):
    res = subprocess.run([sys.executable, "-m", f"pipeline.{name}", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "--out" in res.stdout
