"""relkd.tracking: embedded SQLite store under registry/, env override, and a real team server."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from relkd import procs
from relkd.tracking import (
    artifact_root,
    configure,
    dir_md5,
    experiment_id,
    log_metrics,
    param_strings,
    stage_run,
    tracking_uri,
)

PARAMS = {
    "model": {"name": "tiny", "layers": [2, 4], "lora": {"r": 8}},
    "seed": 7,
    "note": None,
    "long": "x" * 10_000,
}


def _git(root, *args):
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """tmp_path as the repository root: a git repo with one commit, registry/ ignored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / ".gitignore").write_text("/registry/\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_bytes(b'{"q": "red shoes", "label": 1}\n')
    (tmp_path / "data" / "sub").mkdir()
    (tmp_path / "data" / "sub" / "b.txt").write_bytes(b"bbb")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "init")
    yield tmp_path
    if mlflow.active_run():
        mlflow.end_run()


def test_param_strings_flatten_stringify_truncate():
    flat = param_strings(PARAMS)
    assert flat["model.name"] == "tiny"
    assert flat["model.layers"] == "[2, 4]"
    assert flat["model.lora.r"] == "8"
    assert flat["seed"] == "7"
    assert flat["note"] == "None"
    assert len(flat["long"]) == 6000
    assert flat["long"].startswith("xxx") and flat["long"].endswith("[truncated, 10000 chars]")


def test_stage_run_embedded_store(repo):
    data = repo / "data"
    with stage_run("train", PARAMS, inputs=["data/train.jsonl", data / "sub"], tags={"extra": 1}) as run:
        logged = log_metrics({"eval": {"f1": 0.75, "acc": 1}, "name": "skip me", "none": None, "ok": True}, step=2)
        mlflow.log_text("hello artifact", "notes/hello.txt")
    assert logged == {"eval.f1": 0.75, "eval.acc": 1.0, "ok": 1.0}

    # the store is the SQLite file under registry/, by absolute path
    db = repo / "registry" / "mlflow.db"
    assert tracking_uri() == f"sqlite:///{db}"
    assert db.is_file()
    client = MlflowClient(f"sqlite:///{db}")
    r = client.get_run(run.info.run_id)
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "train"
    assert client.get_experiment(r.info.experiment_id).name == "relkd"

    assert r.data.params == param_strings(PARAMS)
    assert r.data.params["model.lora.r"] == "8"
    peak = r.data.metrics.pop("peak_rss_mb")
    wall = r.data.metrics.pop("wall_s")
    assert 0 < wall < 60  # the seconds the block ran
    assert r.data.metrics == {"eval.f1": 0.75, "eval.acc": 1.0, "ok": 1.0}
    assert 10 < peak < 64_000  # this test process's peak resident memory in MB, logged as the run closes
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval.f1")] == [2]

    tags = r.data.tags
    assert tags["relkd.stage"] == "train"
    assert tags["extra"] == "1"
    assert tags["git.commit"] == _git(repo, "rev-parse", "HEAD") and len(tags["git.commit"]) == 40
    assert tags["git.dirty"] == "false"
    assert tags["dvc.md5.data/train.jsonl"] == hashlib.md5((data / "train.jsonl").read_bytes()).hexdigest()
    expected_dir = hashlib.md5(
        json.dumps([["b.txt", hashlib.md5(b"bbb").hexdigest()]]).encode()
    ).hexdigest()
    assert tags["dvc.md5.data/sub"] == expected_dir == dir_md5(data / "sub")

    # artifacts under registry/artifacts, nothing in ./mlruns
    art = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="notes/hello.txt",
                                                   tracking_uri=tracking_uri()))
    assert art.read_text() == "hello artifact"
    stored = list((repo / "registry" / "artifacts").rglob("hello.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "hello artifact"
    assert r.info.artifact_uri.startswith(artifact_root())
    assert not (repo / "mlruns").exists()

    # a tracked change makes the next run dirty; the experiment is reused
    (data / "train.jsonl").write_bytes(b"changed\n")
    with stage_run("train", {}, inputs=["data/train.jsonl"]) as run2:
        pass
    r2 = client.get_run(run2.info.run_id)
    assert r2.data.tags["git.dirty"] == "true"
    assert r2.data.tags["dvc.md5.data/train.jsonl"] == hashlib.md5(b"changed\n").hexdigest()
    assert r2.info.experiment_id == r.info.experiment_id


def test_stage_run_failure_marks_run_failed_and_missing_input_fails_early(repo):
    with pytest.raises(ValueError):
        with stage_run("prep", {"a": 1}) as run:
            raise ValueError("boom")
    client = MlflowClient(tracking_uri())
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    with pytest.raises(FileNotFoundError, match="nope"):
        with stage_run("prep", {}, inputs=["nope.csv"]):
            pytest.fail("must not run")
    runs = client.search_runs([experiment_id("relkd")])
    assert len(runs) == 1  # no empty run for the missing input


def test_not_a_git_repo_tags_unknown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    with stage_run("eval", {"k": 1}, experiment="other") as run:
        pass
    r = MlflowClient(tracking_uri()).get_run(run.info.run_id)
    assert r.data.tags["git.commit"] == "unknown"
    assert r.data.tags["git.dirty"] == "unknown"
    assert (tmp_path / "registry" / "mlflow.db").is_file()


def test_env_var_overrides_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    assert tracking_uri() == f"sqlite:///{other}"
    assert configure() == f"sqlite:///{other}"
    assert mlflow.get_tracking_uri() == f"sqlite:///{other}"
    with stage_run("train", {"a": 1}) as run:
        pass
    assert other.is_file()
    assert not (tmp_path / "registry" / "mlflow.db").exists()
    assert MlflowClient(f"sqlite:///{other}").get_run(run.info.run_id).data.params == {"a": "1"}


def _mlflow_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "mlflow"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]


@pytest.mark.integration
def test_team_mode_round_trip_through_real_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = procs.free_port()
    cmd = _mlflow_cmd() + [
        "server",
        "--backend-store-uri", f"sqlite:///{tmp_path}/srv.db",
        "--default-artifact-root", str(tmp_path / "art"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with procs.running(cmd, f"{url}/health", timeout=90, env=env, log_path=tmp_path / "server.log") as proc:
        startup = time.monotonic() - t0
        print(f"mlflow server ready in {startup:.1f}s")
        pgid = proc.pid
        members = procs.group_members(pgid)
        assert len(members) >= 2  # mlflow CLI + uvicorn (+ job runner, huey consumers)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        assert tracking_uri() == url
        with stage_run("serve", {"triton": {"port": 8000}}, experiment="team") as run:
            log_metrics({"latency_ms": 12.5})
            mlflow.log_text("from team mode", "out/report.txt")

        client = MlflowClient(url)
        r = client.get_run(run.info.run_id)
        assert r.data.params == {"triton.port": "8000"}
        assert r.data.metrics["latency_ms"] == 12.5 and r.data.metrics["peak_rss_mb"] > 10
        assert r.data.tags["relkd.stage"] == "serve"
        assert [f.path for f in client.list_artifacts(run.info.run_id, "out")] == ["out/report.txt"]
        got = client.download_artifacts(run.info.run_id, "out/report.txt", str(tmp_path / "dl"))
        assert Path(got).read_text() == "from team mode"
        assert list((tmp_path / "art").rglob("report.txt"))  # the server's artifact root
        assert not (tmp_path / "registry").exists() and not (tmp_path / "mlruns").exists()
        t_stop = time.monotonic()

    print(f"mlflow server: {len(members)} processes in its group, stopped in {time.monotonic() - t_stop:.1f}s")
    assert proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    for pid, _, _ in members:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
