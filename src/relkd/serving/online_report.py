"""The online A/B from its files: the router's exposure folder, an outcomes table and a server statistics snapshot ->
the report (reports/ab/online.md and online.json) and its MLflow run; and the simulated traffic and outcomes of the
embedded demo."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from relkd.io import write_json, write_text


def traffic(batch: pd.DataFrame, passes: int, users: int, seed: int) -> pd.DataFrame:
    """The batch `passes` times over, each row sent by a simulated user (unit) drawn from `users`: what a day of
    searches looks like to the router (a user searches several times and keeps their arm)."""
    rng = np.random.default_rng(seed)
    ids = batch["id"].astype(str) if "id" in batch.columns else pd.Series(range(len(batch))).astype(str)
    parts = []
    for p in range(passes):
        part = batch[["query", "title"]].copy()
        part["request_id"] = [f"p{p}-{i}" for i in ids]
        part["unit_id"] = [f"user-{k:05d}" for k in rng.integers(0, users, len(batch))]
        part["gold_label"] = batch["label"].astype(str).tolist() if "label" in batch.columns else ""
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def simulate_outcomes(records: list[dict], rows: pd.DataFrame, noise: float, seed: int) -> pd.DataFrame:
    """One simulated judgement per exposure whose row has a gold label: 1 when the served label is the gold one,
    flipped with probability `noise`; the column `simulated` says so in the file itself."""
    served = pd.DataFrame(records, columns=["request_id", "label"]).drop_duplicates("request_id")
    gold = rows.set_index("request_id")["gold_label"]
    served = served.assign(gold=served["request_id"].map(gold)).dropna(subset=["gold"])
    served = served[served["gold"].astype(str).str.len() > 0].sort_values("request_id")
    flip = np.random.default_rng(seed).random(len(served)) < noise
    correct = (served["label"] == served["gold"]).to_numpy()
    return pd.DataFrame({"request_id": served["request_id"].to_numpy(), "outcome": (correct ^ flip).astype(float),
                         "simulated": True})


def analyse(params, exposures, outcomes_path, stats_path, out, note: str | None = None, replay: dict | None = None,
            outcome_column: str = "outcome", inputs=()) -> tuple[dict, dict]:
    """The online analysis of an exposure folder, an outcomes file and a statistics snapshot (either may be
    None) -> out/online.md and out/online.json, tracked as an MLflow run; returns (report, metrics). What
    `relkd ab online` runs; the stage adds its `replay` summary."""
    from relkd.serving.assignment import Assigner
    from relkd.serving.inputs import read_table
    from relkd.serving.exposures import read_folder
    from relkd.serving.online_ab import online_markdown, online_report
    from relkd.tracking import log_metrics, stage_run

    ab, online = params.ab, params.online
    records, counts = read_folder(exposures)
    outcomes = read_table(outcomes_path) if outcomes_path else None
    if note is None and outcomes is not None and "simulated" in outcomes.columns \
            and outcomes["simulated"].astype(bool).all():
        note = "Outcomes are SIMULATED (every row of the outcomes file says simulated=true)."
    stats = json.loads(Path(stats_path).read_text(encoding="utf-8")) if stats_path else None
    expected = Assigner(ab.salt, {"champion": ab.champion_share, "challenger": ab.challenger_share}).expected()
    report = online_report(records, counts, outcomes, stats, ab.salt, expected, online, ab.n_boot, ab.seed,
                           outcome_column)
    report["outcome_note"] = note
    text = online_markdown(report, note)
    if replay:
        text += (f"\n## Replay\n\n{replay['answered']} of {replay['rows']} requests answered through "
                 f"`{online.router_name}`, {replay['refused']} refused, {replay['rejected']} not sendable (rejects: "
                 f"replay/rejects.jsonl); {replay['requests_per_s'] or 0:.1f} requests/s with {online.concurrency} "
                 f"clients (rate limit {online.rate or 'none'}), this machine. Server peak memory "
                 f"{replay['server_peak_mb']:.0f} MB.\n")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "online.md", text)
    write_json(out / "online.json", report)
    metrics = metrics_of(report, replay)
    with stage_run("ab_online", {"ab": ab.model_dump(), "online": online.model_dump()},
                   inputs=[*inputs, *(p for p in (outcomes_path, stats_path) if p)],
                   experiment=params.tracking.experiment, tags={"relkd.verdict": report["verdict"]}):
        log_metrics({**metrics, "verdict_promote": report["verdict"] == "promote"})
        import mlflow

        mlflow.log_artifact(str(out / "online.md"))
        mlflow.log_artifact(str(out / "online.json"))
    return report, metrics


def metrics_of(report: dict, replay: dict | None = None) -> dict:
    """The metrics of an analysis (numbers dvc metrics and MLflow can compare)."""
    m = {"verdict": report["verdict"], "units": report["units"], "exposures": report["exposures"],
         "log": {k: v for k, v in report["log"].items() if isinstance(v, int)}}
    if report["srm"]:
        m["srm"] = {"p_value": report["srm"]["p_value"], "mismatch": report["srm"]["mismatch"]}
    if report["comparison"]:
        m["rate"] = {a: x["rate"] for a, x in report["comparison"]["arms"].items()}
        if report["comparison"]["diff"]:
            m["diff"] = {k: report["comparison"]["diff"][k] for k in ("diff", "low", "high")}
    if replay:
        m["replay"] = {k: replay[k] for k in ("rows", "answered", "refused", "rejected", "seconds", "requests_per_s")}
    return m
