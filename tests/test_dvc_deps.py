"""dvc.yaml knows what each stage runs, and no more: a stage's code deps are exactly the project files its module
imports (transitively, function-level imports included; scripts/dvc_code_deps.py computes them). A missing dep made
`dvc repro` keep results of code that had changed; a whole folder as a dep re-ran the teacher on a student-side
edit. The test names the stage and the files."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from dvc_code_deps import closure, code_deps, listed_code, stages  # noqa: E402

SPECS = stages((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("stage", sorted(SPECS))
def test_each_stage_lists_exactly_the_code_it_runs(stage):
    listed, runs = listed_code(SPECS[stage]), code_deps(SPECS[stage])
    missing, extra = sorted(set(runs) - set(listed)), sorted(set(listed) - set(runs))
    assert not missing, f"dvc.yaml stage {stage!r} runs {missing} but does not list them in deps " \
                        "(python scripts/dvc_code_deps.py)"
    assert not extra, f"dvc.yaml stage {stage!r} lists {extra} in deps but does not run them " \
                      "(python scripts/dvc_code_deps.py)"


def test_the_import_walk_sees_function_level_and_from_imports():
    # The walk itself must find what a stage runs, or the test above could not fail.
    found = {str(f.relative_to(ROOT)) for f in closure("pipeline.teacher_dpo")}
    assert "src/relkd/teacher/trainers.py" in found  # imported inside a function
    assert "pipeline/common.py" in found and "src/relkd/models.py" in found
    assert "src/relkd/teacher/config.py" not in found  # the schema: DVC tracks it as the stage's params


def test_a_student_side_edit_does_not_rerun_the_teacher():
    teacher = {d for name, spec in SPECS.items() if name.startswith("teacher_") for d in listed_code(spec)}
    assert not {d for d in teacher if d.startswith(("src/relkd/student/", "src/relkd/serving/", "src/relkd/embed"))}


@pytest.mark.parametrize("stage", sorted(SPECS))
def test_no_stage_runs_another_stages_module(stage):
    """Stages are glue: what two stages share lives in src/relkd (or the plumbing: common, _ranks, _results)."""
    own = code_deps(SPECS[stage])[0]
    others = [d for d in code_deps(SPECS[stage])[1:] if d.startswith("pipeline/") and
              Path(d).name not in ("common.py", "_ranks.py", "_results.py", "__init__.py")]
    assert not others, f"stage {stage!r} ({own}) imports the stage module(s) {others}: move what they share into relkd"
