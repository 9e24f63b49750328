"""Stage `compare`: the student table (Table 1 shape): ACC / macro-F1 over seeds, Δ vs plain with 95%
bootstrap CIs, per-class F1, retention of the teacher, confusion plots."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.common import read_labels, setup, stage_args
from relkd.eval.plots import confusion_plot, dvc_confusion_rows, save_figure
from relkd.eval.stats import bootstrap_diff_ci
from relkd.eval.tables import STUDENT_COLUMNS, student_table, to_markdown
from relkd.io import write_json, write_text


def load_variant(models: str, name: str, seeds) -> tuple[list[dict], pd.DataFrame]:
    results = json.loads((Path(models) / name / "results.json").read_text(encoding="utf-8"))
    preds = pd.concat([pd.read_parquet(Path(models) / name / f"seed{s}" / "test_predictions.parquet").assign(seed=s)
                       for s in seeds], ignore_index=True)
    reports = [{"accuracy": results[str(s)]["accuracy"], "macro_f1": results[str(s)]["macro_f1"],
                "per_class": {k: {"f1": v} for k, v in results[str(s)]["per_class_f1"].items()},
                "confusion": results[str(s)]["confusion"]} for s in seeds]
    return reports, preds


def teacher_score(teacher_metrics: str) -> dict | None:
    table = json.loads(Path(teacher_metrics).read_text(encoding="utf-8")).get("table", {})
    return table.get("MPCoT (SFT+DPO)")


def run(params_path, prepared, models, teacher_metrics, out, plots, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.student
    labels = read_labels(prepared)
    seeds = cfg.seeds
    results, preds = {}, {}
    for name in cfg.variants:
        results[name], preds[name] = load_variant(models, name, seeds)
    base = preds["plain"]
    # Per seed, paired row by row with plain's same seed; the interval is for the mean over seeds of the
    # per-seed difference (the Δ the table shows), every resample drawing the same rows for all seeds.
    cis = {}
    for name, p in preds.items():
        if name == "plain":
            continue
        if not (p["pair_id"].tolist() == base["pair_id"].tolist()):
            raise SystemExit(f"compare: {name} and plain predicted different test rows; re-run both")
        first = base[base["seed"] == seeds[0]]
        by_seed = {v: [d[d["seed"] == s]["pred"].tolist() for s in seeds] for v, d in (("a", base), ("b", p))}
        cis[name] = {m: bootstrap_diff_ci(first["label"].tolist(), by_seed["a"], by_seed["b"], m, labels,
                                          n_boot=1000, seed=0) for m in ("accuracy", "macro_f1")}
    teacher = teacher_score(teacher_metrics)
    rows = student_table(results, baseline="plain", cis=cis, teacher=teacher)
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(plots).mkdir(parents=True, exist_ok=True)
    for name, reports in results.items():
        cm = np.sum([r["confusion"] for r in reports], axis=0).tolist()
        write_json(Path(plots) / f"{name}.json", dvc_confusion_rows(cm, labels))
        save_figure(confusion_plot(cm, labels, title=f"{name} (test, {len(seeds)} seed(s))"),
                    Path(out) / f"confusion_{name}.png")
    per_class = [{"model": r["model"], **{lab: f"{100 * r['per_class_f1'][lab]:.1f}" for lab in labels}}
                 for r in rows if "per_class_f1" in r]
    t = "" if not teacher else (f"Teacher MPCoT (SFT+DPO): ACC {100 * teacher['accuracy']:.2f}, F1 "
                                f"{100 * teacher['macro_f1']:.2f} (teacher_eval's test subset).")
    write_text(Path(out) / "compare.md",
               f"# Students on the test split ({len(base) // len(seeds)} pairs, seeds {seeds})\n\n"
               + to_markdown(rows, list(STUDENT_COLUMNS)) + f"\n\n{t}\n\nΔ: difference from `plain`, "
               "95% paired bootstrap interval over test rows (the same rows resampled for every seed).\n\n## Per-class F1\n\n"
               + to_markdown(per_class, ["model", *labels]) + "\n")
    metrics = {r["model"]: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                            "accuracy_std": r["accuracy_std"], "macro_f1_std": r["macro_f1_std"],
                            **({f"delta_{m}{end}": v for m in ("accuracy", "macro_f1")
                                for end, v in (("", r[f"delta_{m}"]), ("_ci_low", r[f"delta_{m}_ci"][0]),
                                               ("_ci_high", r[f"delta_{m}_ci"][1]))}
                               if r["delta_accuracy"] is not None else {}),
                            **({"retention_accuracy": r["retention_accuracy"]} if r["retention_accuracy"] else {})}
               for r in rows}
    write_json(metrics_path, metrics)
    return metrics


def main(argv=None) -> None:
    ap = stage_args(__doc__, ("prepared", "prepared data folder"), ("models", "models/student folder"),
                    ("teacher-metrics", "teacher_eval metrics JSON"), ("out", "report folder"),
                    ("plots", "DVC plot data folder"), ("metrics", "metrics JSON"))
    a = ap.parse_args(argv)
    run(a.params, a.prepared, a.models, a.teacher_metrics, a.out, a.plots, a.metrics)


if __name__ == "__main__":
    main()
