"""Stage `compare`: the student table (Table 1 shape): ACC / macro-F1 over seeds, Δ vs plain with 95%
bootstrap CIs, per-class F1, retention of the teacher, confusion plots; with the peers' rows (majority, lexical,
CrossEncoder: `peer:<name>`) trained on the same rows, scored the same way."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.common import read_labels, seed_dir, setup, stage_command
from relkd.eval.peers import PEERS
from relkd.eval.plots import confusion_plot, dvc_confusion_rows, save_figure
from relkd.eval.stats import bootstrap_diff_ci
from relkd.eval.tables import STUDENT_COLUMNS, student_table, to_markdown
from relkd.io import write_json, write_text


def load_variant(models: str, name: str, seeds) -> tuple[list[dict], pd.DataFrame]:
    results = json.loads((Path(models) / name / "results.json").read_text(encoding="utf-8"))
    preds = pd.concat([pd.read_parquet(seed_dir(Path(models) / name, s) / "test_predictions.parquet").assign(seed=s)
                       for s in seeds], ignore_index=True)
    reports = [{"accuracy": results[str(s)]["accuracy"], "macro_f1": results[str(s)]["macro_f1"],
                "per_class": {k: {"f1": v} for k, v in results[str(s)]["per_class_f1"].items()},
                "confusion": results[str(s)]["confusion"]} for s in seeds]
    return reports, preds


def teacher_score(teacher_metrics: str) -> dict | None:
    table = json.loads(Path(teacher_metrics).read_text(encoding="utf-8")).get("table", {})
    return table.get("MPCoT (SFT+DPO)")


PEER_PREFIX = "peer:"  # peer rows are marked in the table and kept out of the students' metrics
PEER_WHAT = "a peer trained on the same rows (below)"


def members_line(models: str, cfg, seeds) -> str:
    """The Avg. Ensembles' members, each scored on its own (mean over seeds), after the table; '' without one."""
    lines = []
    for name in cfg.ensembles:
        found = json.loads((Path(models) / name / "results.json").read_text(encoding="utf-8"))
        scores = {p: [found[str(s)]["members"][p] for s in seeds] for p in found[str(seeds[0])]["members"]}
        lines.append(f"`{name}`'s members alone (ACC / F1): " + ", ".join(
            f"{p} {100 * np.mean([x['accuracy'] for x in v]):.2f} / {100 * np.mean([x['macro_f1'] for x in v]):.2f}"
            for p, v in scores.items()) + ".")
    return "\n".join(lines) + ("\n\n" if lines else "")


def train_rows(folder: str, name: str, seeds) -> list[int]:
    """The distinct training-set sizes a variant's (or peer's) seeds saw."""
    found = json.loads((Path(folder) / name / "results.json").read_text(encoding="utf-8"))
    return sorted({found[str(s)].get("n_train") for s in seeds})


def majority_line(test: pd.DataFrame, students: list[int], peers: list[int]) -> str:
    """The test split's majority rate, and a warning when the peers did not train on the students' rows."""
    counts = test["label"].value_counts()
    line = (f"Majority rate of the test split: {100 * counts.iloc[0] / len(test):.2f}% (`{counts.index[0]}`, "
            f"{counts.iloc[0]} of {len(test)} pairs); `{PEER_PREFIX}majority` predicts the train split's commonest "
            "class.")
    if students != peers:
        line += (f" Note: the students trained on {students} rows, the peers on {peers}: not the same rows, so "
                 "the peer rows are no like-for-like reference.")
    return line


def run(params_path, prepared, models, peers, teacher_metrics, out, plots, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.student
    labels = read_labels(prepared)
    seeds = cfg.seeds
    results, preds = {}, {}
    for name in [*cfg.variants, *cfg.table6_rows]:  # Table 1's students, then Table 6's (the Avg. Ensemble, ...)
        results[name], preds[name] = load_variant(models, name, seeds)
    for name in PEERS:
        if not (Path(peers) / name / "results.json").is_file():
            raise SystemExit(f"compare: no peer {name!r} in {peers}; run the `peers` stage (dvc repro peers)")
        results[PEER_PREFIX + name], preds[PEER_PREFIX + name] = load_variant(peers, name, seeds)
    base = preds["plain"]
    # Per seed, paired row by row with plain's same seed; the interval is for the mean over seeds of the
    # per-seed difference (the Δ the table shows), every resample drawing seeds and rows (stats.bootstrap_diff_ci).
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
    perspectives = params.teacher.single.perspectives
    for r in rows:
        r["what"] = (PEER_WHAT if r["model"].startswith(PEER_PREFIX)
                     else cfg.row_description(r["model"], perspectives))
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(plots).mkdir(parents=True, exist_ok=True)
    for name, reports in results.items():
        cm = np.sum([r["confusion"] for r in reports], axis=0).tolist()
        peer = name.startswith(PEER_PREFIX)
        if not peer:  # DVC's confusion plots are the students'; peers get the picture only
            write_json(Path(plots) / f"{name}.json", dvc_confusion_rows(cm, labels))
        save_figure(confusion_plot(cm, labels, title=f"{name} (test, {len(seeds)} seed(s))"),
                    Path(out) / f"confusion_{name.replace(PEER_PREFIX, 'peer_')}.png")
    per_class = [{"model": r["model"], **{lab: f"{100 * r['per_class_f1'][lab]:.1f}" for lab in labels}}
                 for r in rows if "per_class_f1" in r]
    t = "" if not teacher else (f"Teacher MPCoT (SFT+DPO): ACC {100 * teacher['accuracy']:.2f}, F1 "
                                f"{100 * teacher['macro_f1']:.2f} (teacher_eval's test subset).")
    note = majority_line(base[base["seed"] == seeds[0]], train_rows(models, "plain", seeds),
                         train_rows(peers, PEERS[0], seeds))
    write_text(Path(out) / "compare.md",
               f"# Students on the test split ({len(base) // len(seeds)} pairs, seeds {seeds})\n\n"
               + to_markdown(rows, [*STUDENT_COLUMNS, "what"])
               + f"\n{note}\n\n{t}\n\n{members_line(models, cfg, seeds)}"
               "Δ: difference from `plain`, 95% paired bootstrap interval over test rows and, with several seeds, "
               "over the seeds too (seed i of a row paired with plain's seed i; the same rows for every drawn seed). "
               f"`{PEER_PREFIX}` rows are peers trained on the same rows with the same seeds: the "
               "train split's majority class, lexical features (overlap, TF-IDF, BM25, numbers, lengths) with "
               "logistic regression (`lexical_lr`) or gradient boosting (`lexical_hgb`), and sentence-transformers' "
               "CrossEncoder with its own trainer and recipe.\n\n## Per-class F1\n\n"
               + to_markdown(per_class, ["model", *labels]) + "\n")
    metrics = {r["model"]: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                            "accuracy_std": r["accuracy_std"], "macro_f1_std": r["macro_f1_std"],
                            **({f"delta_{m}{end}": v for m in ("accuracy", "macro_f1")
                                for end, v in (("", r[f"delta_{m}"]), ("_ci_low", r[f"delta_{m}_ci"][0]),
                                               ("_ci_high", r[f"delta_{m}_ci"][1]))}
                               if r["delta_accuracy"] is not None else {}),
                            **({"retention_accuracy": r["retention_accuracy"]} if r["retention_accuracy"] else {})}
               for r in rows}
    # metrics/compare.json keeps the students only (one key per variant); the peers' rows, in the same format,
    # go beside the report.
    write_json(Path(out) / "peers.json", {k: v for k, v in metrics.items() if k.startswith(PEER_PREFIX)})
    metrics = {k: v for k, v in metrics.items() if not k.startswith(PEER_PREFIX)}
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.prepared, a.models, a.peers, a.teacher_metrics, a.out, a.plots, a.metrics)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"), ("models", "models/student folder"),
                     ("peers", "models/peers folder (the peers stage)"),
                     ("teacher-metrics", "teacher_eval metrics JSON"), ("out", "report folder"),
                     ("plots", "DVC plot data folder"), ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
