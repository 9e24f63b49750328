"""relkd.tracking.compare: runs side by side from a temporary MLflow store."""
from __future__ import annotations

import mlflow
import pytest

from relkd.tracking import configure, log_metrics, stage_run
from relkd.tracking.compare import BASE_COLUMNS, format_table, runs_table


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure(tmp_path)
    runs = [("lrkd_gat", 13, 5e-5, {"valid_macro_f1": 0.5, "test_macro_f1": 0.61, "test_accuracy": 0.7}),
            ("lrkd_gat", 14, 5e-5, {"valid_macro_f1": 0.55, "test_macro_f1": 0.63, "test_accuracy": 0.72}),
            ("plain", 13, 1e-4, {"valid_macro_f1": 0.4, "test_macro_f1": 0.52, "test_accuracy": 0.66})]
    for variant, seed, lr, metrics in runs:
        params = {"variant": variant, "seed": seed, "student": {"lr": lr, "epochs": 3, "max_length": 64}}
        with stage_run("student", params, run_name=f"{variant}-seed{seed}",
                       tags={"relkd.variant": variant, "relkd.seed": str(seed)}):
            log_metrics({"valid_macro_f1": 0.1, "train_loss": 2.0}, step=0)  # an earlier epoch
            log_metrics({**metrics, "train_loss": 1.0, "test_f1.a": 0.3}, step=1)
    with stage_run("teacher_sft", {"teacher": {"model": "tiny:llama"}}, experiment="teacher"):
        log_metrics({"accuracy": 0.4})
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


def test_runs_table_shows_differing_params_and_latest_metrics(store):
    rows, params, metrics = runs_table(experiment="relkd", stage="student")
    assert [r["run"] for r in rows] == ["plain-seed13", "lrkd_gat-seed14", "lrkd_gat-seed13"]  # newest first
    assert params == ["student.lr"]  # epochs and max_length are equal in every run
    assert metrics == ["test_accuracy", "test_macro_f1", "valid_macro_f1"]  # not train_loss nor test_f1.a
    assert rows[2]["variant"] == "lrkd_gat" and rows[2]["seed"] == "13" and rows[2]["stage"] == "student"
    assert rows[2]["student.lr"] == "5e-05" and rows[0]["student.lr"] == "0.0001"
    assert rows[2]["valid_macro_f1"] == 0.5  # the latest value, not the first step's 0.1

    rows, params, metrics = runs_table(variant="lrkd_gat")
    assert [r["seed"] for r in rows] == ["14", "13"]
    assert params == [] and metrics == ["test_accuracy", "test_macro_f1", "valid_macro_f1"]

    rows, params, _ = runs_table(metrics=("train_*",))  # every experiment, every stage
    assert {r["stage"] for r in rows} == {"student", "teacher_sft"}
    assert "teacher.model" in params and "student.lr" in params  # present in some runs only: they differ
    assert "student.epochs" in params

    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'"):
        runs_table(experiment="nope")


def test_format_table_aligns_columns(store):
    rows, params, metrics = runs_table(experiment=["relkd"], stage="student")
    text = format_table(rows, [*BASE_COLUMNS, *params, *metrics])
    lines = text.splitlines()
    assert lines[0].split() == ["run", "variant", "seed", "stage", "student.lr", "test_accuracy", "test_macro_f1",
                                "valid_macro_f1"]
    assert set(lines[1]) == {"-", " "} and len(lines) == 2 + len(rows)
    assert lines[2].split() == ["plain-seed13", "plain", "13", "student", "0.0001", "0.6600", "0.5200", "0.4000"]
    # numbers are right-aligned: every value of a metric column ends where its header ends
    end = lines[0].index("test_macro_f1") + len("test_macro_f1")
    assert all(line[end - 6:end] in ("0.5200", "0.6300", "0.6100") for line in lines[2:])

    table = format_table([{"a": "x" * 50, "b": None}, {"a": "y", "b": 1.5}], ["a", "b"], max_width=10)
    assert table.splitlines()[2] == "xxxxxxx...       -"
    assert table.splitlines()[3] == "y           1.5000"


def test_cli_lists_every_stage_runs_time_and_peak_memory_without_params(store):
    from click.testing import CliRunner

    from relkd.cli import main

    res = CliRunner().invoke(main, ["runs", "compare", "--stage", "", "--metric", "peak_rss_mb", "--metric", "wall_s",
                                    "--no-params"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["run", "variant", "seed", "stage", "peak_rss_mb", "wall_s"]
    assert [line.split()[3] for line in lines[2:]] == ["teacher_sft", "student", "student", "student"]
    assert all(float(line.split()[4]) > 10 for line in lines[2:])  # every stage run logged its peak (MB)
    assert all(0 < float(line.split()[5]) < 60 for line in lines[2:])  # and the seconds its block ran
