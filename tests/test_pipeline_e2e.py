"""The whole `dvc repro` on the tiny profile in a temporary copy of the repository."""
import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import copy_repo, sh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = copy_repo(tmp_path_factory.mktemp("repo"))
    sh("relkd profile tiny", root)
    sh("git -c user.email=t@t -c user.name=t commit -qam 'tiny profile'", root)
    res = sh("dvc repro", root)
    return root, res


def md5s(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_repro_builds_prepared_data(repo):
    root, res = repo
    prepared = root / "data" / "prepared"
    for split in ("train", "valid", "test"):
        assert (prepared / f"{split}.parquet").stat().st_size > 0
    labels = json.loads((prepared / "labels.json").read_text())["labels"]
    assert len(labels) == 6
    metrics = json.loads((root / "metrics" / "prepare.json").read_text())
    assert metrics["rows_in"] == 16 * 3
    assert sum(metrics["rows"].values()) + metrics["rows_rejected"] == metrics["rows_in"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert "prepare" in lock["stages"]
    # outputs are git-ignored and DVC-tracked
    ignored = sh(["git", "check-ignore", "data/prepared"], root, check=False)
    assert ignored.returncode == 0


def test_repro_runs_teacher_and_students(repo):
    root, _ = repo
    train_rows = json.loads((root / "metrics" / "prepare.json").read_text())["rows"]["train"]
    rationales = [json.loads(line) for line in (root / "data/teacher/rationales.jsonl").read_text().splitlines()]
    assert len(rationales) == train_rows and all("probs" in r for r in rationales)
    teacher = json.loads((root / "metrics" / "teacher_eval.json").read_text())["table"]
    assert {"MPCoT (few-shot)", "MPCoT (SFT)", "MPCoT (SFT+DPO)",
            "MPCoT, best perspective prompt (SFT)"} <= set(teacher)
    rows = _student_rows(root)
    compare = json.loads((root / "metrics" / "compare.json").read_text())
    assert set(compare) == set(rows)
    assert "delta_accuracy" in compare["lrkd_gat"] and "delta_accuracy" not in compare["plain"]
    assert (root / "reports/student/compare.md").read_text().count("\n| ") >= len(rows)
    assert len(list((root / "plots" / "confusion").glob("*.json"))) == len(rows)
    assert (root / "models/teacher/dpo/adapter_config.json").exists()
    # MLflow: one SFT and one DPO run per teacher, one run per student row and seed, in the embedded store
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{root}/registry/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=500)
    teachers = {stage: sorted(r.data.tags["relkd.teacher"] for r in runs if r.data.tags.get("relkd.stage") == stage)
                for stage in ("teacher_sft", "teacher_dpo")}
    assert teachers["teacher_sft"] == ["mpcot", "progressive:ProgressiveCoT", "single:business_rules",
                                       "single:user_intent"]
    single = sorted(f"single:{p}+{k}" for p in ("business_rules", "user_intent") for k in ("aligned", "mpcot"))
    assert teachers["teacher_dpo"] == ["mpcot", *single, "single:user_intent+size_matched"]
    assert sorted(r.data.tags["relkd.variant"] for r in runs if r.data.tags.get("relkd.stage") == "student") \
        == sorted([*rows, "single_business_rules", "single_user_intent"])


def _student_rows(root) -> list[str]:
    student = yaml.safe_load((root / "params.yaml").read_text())["student"]
    return [*student["variants"], *student["ensembles"], *student["combined"]]


def test_repro_builds_the_papers_remaining_rows(repo):
    """The tiny profile's part of paper-tables: every kind of its stages ran and wrote its rows."""
    root, _ = repo
    from relkd.io import read_jsonl

    for p in ("user_intent", "business_rules"):  # a single-perspective teacher learns from its own perspective only
        data = read_jsonl(root / f"data/teacher/single/{p}/sft_data.jsonl")
        assert data and {d["group"] for d in data} == {p}
        assert (root / f"models/teacher/single/{p}/dpo_mpcot/adapter_config.json").exists()
    mpcot = read_jsonl(root / "data/teacher/pairs/pairs.jsonl")
    assert len(read_jsonl(root / "data/teacher/single/user_intent/pairs/size_matched/pairs.jsonl")) == len(mpcot)
    teacher = json.loads((root / "metrics/teacher_eval.json").read_text())
    assert {"Best-SingleCoT (SFT)", "Best-SingleCoT (SFT+DPO)", "S-CoT user_intent (SFT+DPO, size-matched)",
            "ProgressiveCoT (SFT)"} <= set(teacher["table"])
    assert "+ MPCoT DPO" in teacher["ablation"] and "delta_accuracy" in teacher["ablation"]["+ MPCoT DPO"]
    o = teacher["oracle"]  # the oracle and pass@k both hold the control perspective's single pass
    assert o["k"] == 2 and o["n"] == 6 and o["oracle"] >= o["single_pass"] <= o["pass@2"]
    assert "what" in (root / "reports/teacher/teacher_table.md").read_text()
    combined = read_jsonl(root / "data/embeddings_combined/lrkd_combined/rationales.jsonl")
    assert combined and all(r["rationale"].count(" [SEP] ") >= 1 for r in combined)
    results = json.loads((root / "models/student/avg_ensemble/results.json").read_text())
    assert set(next(iter(results.values()))["members"]) == {"user_intent", "business_rules"}
    assert "`avg_ensemble`'s members alone" in (root / "reports/student/compare.md").read_text()


def test_repro_serves_scores_and_compares_champion_with_challenger(repo):
    root, _ = repo
    state = json.loads((root / "data/registry/register.json").read_text())
    assert set(state["versions"]) == set(_student_rows(root))
    # The tiny profile names the Avg. Ensemble the only candidate: its one ONNX graph is what the challenger serves.
    assert state["champion_variant"] == "plain" and state["challenger_variant"] == "avg_ensemble"
    served = sorted(p.name for p in (root / "triton_repo/relevance_student").iterdir() if p.name.isdigit())
    assert served == sorted([state["aliases"]["champion"], state["aliases"]["challenger"]], key=int)
    batch = pd.read_parquet(root / "data/nightly/batch.parquet")
    for role in ("champion", "challenger"):
        scores = pd.read_parquet(root / "data/scores" / role / "scores.parquet")
        rejects = (root / "data/scores" / role / "rejects.jsonl").read_text().splitlines()
        assert len(scores) + len(rejects) == len(batch) and len(rejects) >= 1  # the broken rows
        assert set(scores["tier"]) <= set(range(5))
    ab = json.loads((root / "metrics/ab.json").read_text())
    assert 0.0 <= ab["agreement"] <= 1.0 and ab["n"] == len(scores)
    assert "McNemar" in (root / "reports/ab/ab.md").read_text() or "mcnemar" in (root / "reports/ab/ab.md").read_text()
    # the online A/B: the batch replayed through the router, every request answered or rejected, and analysed
    online = json.loads((root / "metrics/ab_online.json").read_text())
    passes = yaml.safe_load((root / "params.yaml").read_text())["online"]["passes"]
    assert online["replay"]["answered"] + online["replay"]["rejected"] == passes * len(batch)
    assert online["verdict"] in ("promote", "keep", "stop") and sum(online["exposures"].values()) == \
        online["replay"]["answered"]
    assert "SIMULATED" in (root / "reports/ab/online.md").read_text()
    # the score stage stopped its server: no tritonserver is left
    left = sh("pgrep -x tritonserver || true", root).stdout.strip()
    assert left == "", left


def test_second_repro_does_nothing(repo):
    root, _ = repo
    before = md5s(root / "data" / "prepared")
    res = sh("dvc repro", root)
    assert "didn't change" in res.stdout or "Data and pipelines are up to date" in res.stdout
    assert "Running stage" not in res.stdout
    assert md5s(root / "data" / "prepared") == before


def test_param_change_reruns_only_what_reads_it(repo):
    root, _ = repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tracking"]["experiment"] = "other"  # no stage declares `tracking`
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Running stage" not in sh("dvc repro", root).stdout
    params["probe"]["n_runs"] = 3  # read by `probe` only
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh("dvc repro", root).stdout
    ran = sorted(set(re.findall(r"Running stage '([^']+)'", out)))
    assert ran == ["probe"], out


def test_remote_push_then_pull_into_fresh_clone(repo, tmp_path):
    root, _ = repo
    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "-d", "-f", "storage", str(remote)], root)
    sh("git add -A && git -c user.email=t@t -c user.name=t commit -qm 'lock and remote'", root)
    sh("dvc push", root)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    assert not (clone / "data" / "prepared").exists()
    sh("dvc pull", clone)
    assert md5s(clone / "data" / "prepared") == md5s(root / "data" / "prepared")
    assert "up to date" in sh("dvc status", clone).stdout


def test_promote_then_repro_serves_the_new_champion(repo, tmp_path):
    """The registry is what is served: `relkd promote` moves the champion alias and writes registry/aliases.json,
    the export stage's dep, so the next `dvc repro` re-exports (and re-scores) and serves the new champion."""
    root, _ = repo
    before = json.loads((root / "registry/aliases.json").read_text())["aliases"]
    policy = tmp_path / "lenient.yaml"  # a gate the tiny challenger passes: this test is about what follows
    policy.write_text(yaml.safe_dump({"metric": "macro_f1", "min_gain": -1.0, "guards": [], "per_class_floor": 0.0}))
    out = sh(["relkd", "promote", "--policy", str(policy)], root).stdout
    assert f"v{before['challenger']['version']}" in out and "promoted" in out, out
    after = json.loads((root / "registry/aliases.json").read_text())["aliases"]
    assert after == {"champion": before["challenger"]}  # the challenger alias went with the promotion
    ran = set(re.findall(r"Running stage '([^']+)'", sh("dvc repro", root).stdout))
    assert {"export", "score", "ab", "ab_online"} <= ran and not ran & {"register", "student@plain", "teacher_sft"}, ran
    served = sorted(p.name for p in (root / "triton_repo/relevance_student").iterdir() if p.name.isdigit())
    assert served == [before["challenger"]["version"]]
    info = json.loads((root / "reports/export/export.json").read_text())
    assert info["champion"]["version"] == int(before["challenger"]["version"])
    assert json.loads((root / "metrics/ab.json").read_text())["arms"] == 1
    assert json.loads((root / "metrics/ab_online.json").read_text())["arms"] == 1
