"""Stage `ab`: champion vs challenger on the same nightly batch: agreement, tier shift, filtered shares,
labelled quality with a paired bootstrap CI and McNemar's test, and a simulated 10%/10% traffic split."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pandas as pd

from pipeline.common import read_labels, setup, stage_command
from relkd.io import write_json, write_text
from relkd.tracking import log_metrics, stage_run


def arm(scores_dir: Path) -> pd.DataFrame:
    s = pd.read_parquet(scores_dir / "scores.parquet")
    return pd.DataFrame({"id": s["id"].astype(str), "label": s["label"], "tier": s["tier"].astype(int),
                         "probs": [np.asarray(p, dtype=float) for p in s["probs"]]})


def cost(folder: Path) -> float | None:
    """Seconds per 1,000 pairs recorded by the scorer that wrote `folder`, if it recorded it."""
    f = folder / "cost.json"
    return json.loads(f.read_text(encoding="utf-8")).get("seconds_per_1000_pairs") if f.exists() else None


def run(params_path, batch, scores, prepared, out, metrics_path, teacher_scores=None) -> dict:
    params = setup(params_path)
    cfg = params.ab
    from relkd.serving.ab import ab_markdown, ab_report, traffic_split
    from relkd.serving.inputs import read_table

    labels = read_labels(prepared)
    if not (Path(scores) / "challenger" / "scores.parquet").exists():
        # Right after a promotion the registry has a champion and no challenger: one arm, nothing to compare.
        Path(out).mkdir(parents=True, exist_ok=True)
        write_text(Path(out) / "ab.md", "# A/B\n\nNo challenger is served (the registry has only a champion, e.g. "
                   "right after `relkd promote`): nothing to compare until `register` names a challenger.\n")
        metrics = {"arms": 1, "n": 0}
        write_json(Path(out) / "ab.json", metrics)
        write_json(metrics_path, metrics)
        return metrics
    arms = {role: arm(Path(scores) / role) for role in ("champion", "challenger")}
    if teacher_scores:  # TaoSR1's alternative: the LLM itself, tiered (relkd teacher-score)
        arms["teacher"] = arm(Path(teacher_scores))
    rows = read_table(batch)
    ids = rows["id"].astype(str) if "id" in rows else pd.Series(range(len(rows))).astype(str)
    gold = None
    if "label" in rows:
        g = rows["label"].where(rows["label"].astype(str).str.len() > 0)
        gold = pd.Series(g.to_numpy(), index=ids.to_numpy())
    # Rejected rows are in neither arm's scores: compare on the rows both arms scored.
    common = set.intersection(*(set(a["id"]) for a in arms.values()))
    arms = {k: v[v["id"].isin(common)].reset_index(drop=True) for k, v in arms.items()}
    report = ab_report(arms, labels, gold, seed=cfg.seed, n_boot=cfg.n_boot)
    # Online-style simulation: each id lands in one arm by a salted hash (10% / 10% by default) and is
    # served by that arm only; the rest of the traffic is untouched.
    ids_sorted = sorted(common)
    split = dict(zip(ids_sorted, traffic_split(ids_sorted, cfg.salt, {"champion": cfg.champion_share,
                                                                       "challenger": cfg.challenger_share})))
    sim = {}
    for role, frame in arms.items():
        mine = frame[frame["id"].map(split) == role]
        entry = {"n": int(len(mine)), "filtered_share": float(mine["tier"].isin([0, 1]).mean()) if len(mine) else None}
        if gold is not None and len(mine):
            g = gold.reindex(mine["id"].to_numpy())
            has = g.notna().to_numpy()
            entry["labelled"] = int(has.sum())
            entry["accuracy"] = float((mine["label"].to_numpy()[has] == g.to_numpy()[has]).mean()) if has.any() else None
        sim[role] = entry
    report["online_simulation"] = sim
    report["seconds_per_1000_pairs"] = {role: cost(Path(scores) / role) for role in ("champion", "challenger")}
    if teacher_scores:
        report["seconds_per_1000_pairs"]["teacher"] = cost(Path(teacher_scores))
    Path(out).mkdir(parents=True, exist_ok=True)
    write_text(Path(out) / "ab.md", ab_markdown(report) + "\n\n## Online-style simulation\n\n"
               f"Each id goes to one arm by sha256(salt={cfg.salt!r}, id): {cfg.champion_share:.0%} champion, "
               f"{cfg.challenger_share:.0%} challenger.\n\n```\n{sim}\n```\n\n## Cost\n\nSeconds per 1,000 pairs "
               f"(scoring wall time, this machine): {report['seconds_per_1000_pairs']}\n")
    write_json(Path(out) / "ab.json", report)
    metrics = {"arms": 2, "agreement": report["agreement"], "n": report["n"],
               "filtered_share": report["filtered_share"],
               "seconds_per_1000_pairs": {k: v for k, v in report["seconds_per_1000_pairs"].items() if v is not None}}
    if report.get("labelled"):
        lab = report["labelled"]
        metrics["labelled"] = {"n": lab["n"], **{f"{k}_{m}": v[m] for k, v in lab["metrics"].items()
                                                 for m in ("accuracy", "macro_f1")},
                               "mcnemar_p": lab["mcnemar"]["p_value"]}
    with stage_run("ab", {"ab": cfg.model_dump()}, inputs=[batch, scores], experiment=params.tracking.experiment):
        log_metrics(metrics)
        import mlflow

        mlflow.log_artifact(str(Path(out) / "ab.md"))
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.batch, a.scores, a.prepared, a.out, a.metrics, a.teacher_scores)


main = stage_command(__doc__, _main, ("batch", "the scored batch file"), ("scores", "score stage output folder"),
                     ("prepared", "prepared data (label set)"), ("out", "report folder"),
                     ("metrics", "metrics JSON"),
                     options=[click.Option(["--teacher-scores"], default=None,
                                           help="a `relkd teacher-score` output folder: third arm")])

if __name__ == "__main__":
    main()
