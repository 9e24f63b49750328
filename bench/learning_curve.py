"""Learning curve on real data: the student, its lexical peers and sentence-transformers' CrossEncoder as the
training set grows, on one split by query of an external CSV (the Home Depot dev file by default).

The file is loaded, screened and split by query exactly as the `prepare` stage does (data.source: table, the
columns and class mapping given); validation and test are capped at a seeded draw of whole queries (the
validation pairs pick the students' epoch, the test pairs score everyone), and the training queries are shuffled
once so that every size is a prefix of the next (nested sets). At each size and seed it trains, on the same
training pairs:

* the student (`student` section of params.yaml + profile: the plain variant, with its lexical head) and the same
  student without the lexical head (`student.lexical: false`), by the library's `train_student`;
* the lexical logistic regression and gradient boosting, and the majority class (relkd.eval.peers);
* sentence-transformers' CrossEncoder on the students' backbone, by its own trainer (`peers.cross_encoder`);
* any `--student NAME=JSON` extra student (overrides of the student section, e.g. another lr or backbone).

Each finished cell (model, size, seed) is written to --workdir at once and skipped on a re-run with the same
--workdir, so a killed run resumes. The table: test ACC / macro-F1 (mean ± std over seeds) with the paired bootstrap
interval of each Δ vs the lexical LR at the same size and of each ΔF1 vs the gradient-boosted one, the training
pairs and the minutes per run. Only the table (aggregate metrics) is written to bench/results/<name>.{md,json};
the data and predictions stay in --workdir.

    nice -n 10 python bench/learning_curve.py --data PATH/TO/homedepot_dev.csv.gz --workdir DIR \\
        --sizes 400 1600 all --epochs 3 2 1 --runs 3 1 1 --name learning_curve_hd
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HOMEDEPOT_COLUMNS, HOMEDEPOT_THRESHOLDS, CellStore, compare_rows, dotted, named_overrides, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("majority", "lexical_lr", "lexical_hgb", "student", "cross_encoder", "student_tokens_only")
NAMES = {"majority": "peer: majority class", "lexical_lr": "peer: lexical features + logistic regression",
         "lexical_hgb": "peer: lexical features + gradient boosting",
         "cross_encoder": "peer: sentence-transformers CrossEncoder", "student": "student (plain + lexical head)",
         "student_tokens_only": "student, tokens only (no lexical head)"}
# Deterministic: one run per size (gradient boosting draws its early-stopping split, so it runs per seed).
SEEDLESS = ("majority", "lexical_lr")
HGB_DELTA = "ΔF1 vs lexical HGB [95% CI]"


def load_params(profile: str | None, data_overlay: dict, sets: list[str]):
    import yaml

    from relkd.config import merge, parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    if profile:
        raw = merge(raw, yaml.safe_load((ROOT / "profiles" / f"{profile}.yaml").read_text(encoding="utf-8")))
    return parse_params(merge(merge(raw, data_overlay), dotted(sets)))


def query_sample(df, n_pairs: int | None, seed: int):
    """Whole queries of `df`, drawn in a seeded order until `n_pairs` pairs are reached (None: all)."""
    if n_pairs is None or n_pairs >= len(df):
        return df.reset_index(drop=True)
    queries = df["query_id"].drop_duplicates().sample(frac=1.0, random_state=seed)
    sizes = df.groupby("query_id").size().loc[queries]
    keep = set(queries[: int(np.searchsorted(sizes.cumsum().to_numpy(), n_pairs)) + 1])
    return df[df["query_id"].isin(keep)].reset_index(drop=True)


def prepare(params, valid_pairs: int | None, test_pairs: int | None):
    """(train, valid, test, labels, sizes): the prepare stage's loading, screening and split by query."""
    from relkd.data.sources import load_dataset
    from relkd.data.splits import split_by_query
    from relkd.data.validate import screen

    cfg = params.data
    frame, labels = load_dataset(cfg)
    kept, rejects = screen(frame, labels)
    splits = split_by_query(kept, cfg.split.valid, cfg.split.test, cfg.split.seed)
    valid = query_sample(splits["valid"], valid_pairs, cfg.split.seed)
    test = query_sample(splits["test"], test_pairs, cfg.split.seed)
    info = {"rows_in": len(frame), "rejected": len(rejects), "split_rows": {k: len(v) for k, v in splits.items()},
            "split_queries": {k: int(v["query_id"].nunique()) for k, v in splits.items()},
            "valid_used": len(valid), "test_used": len(test), "test_queries_used": int(test["query_id"].nunique())}
    return splits["train"], valid, test, labels, info


def nested_train(train, sizes: list[str], seed: int = 0) -> dict[str, object]:
    """The training pairs at each size (a number of training queries, or 'all'): prefixes of one seeded order."""
    order = train["query_id"].drop_duplicates().sample(frac=1.0, random_state=seed).tolist()
    out = {}
    for size in sizes:
        n = len(order) if size == "all" else int(size)
        if n > len(order):
            raise SystemExit(f"--sizes {size}: the training split has only {len(order)} queries")
        out[size] = train[train["query_id"].isin(set(order[:n]))].reset_index(drop=True)
    return out


def fit_predict(model: str, train, valid, test, labels, seed: int, params, student_over: dict, epochs: int | None):
    """Train one model and return (predicted label codes on test, notes)."""
    from relkd.eval.peers import fit_lexical, fit_majority, train_cross_encoder

    if model == "majority":
        return fit_majority(train["label"].tolist(), labels).predict_proba(test).argmax(1), {}
    if model in ("lexical_lr", "lexical_hgb"):
        kind = model.split("_")[1]
        knobs = params.peers.lexical.model_dump() if kind == "lr" else {}
        return fit_lexical(train, labels, seed, kind=kind, **knobs).predict_proba(test).argmax(1), {}
    if model == "student_tokens_only":
        student_over = {"lexical": False, **student_over}
    student = params.student.model_copy(update={**({} if epochs is None else {"epochs": epochs}), **student_over})
    if model == "cross_encoder":
        from relkd.models import resolve

        ce = params.peers.cross_encoder
        # No validation set: the CrossEncoder's trainer would only log its loss there (nothing is selected by it).
        recipe = ce.model_copy(update={"epochs": epochs or ce.epochs})
        peer = train_cross_encoder(train, None, labels, resolve(student.backbone), seed, recipe, student.max_length,
                                   student.eval_batch_size)
        return peer.predict_proba(test).argmax(1), {"epochs": epochs or ce.epochs, "history": peer.history}
    from relkd.student.config import StudentConfig, VariantConfig
    from relkd.student.trainer import kept_epoch, predict, train_student

    cfg = StudentConfig.model_validate(student.model_dump())  # validates the overrides
    model_, tok, history = train_student(train, valid, labels, None, None, VariantConfig(extractor="none",
                                         guidance=False), cfg, seed, lexical_recipe=params.peers.lexical)
    kept = kept_epoch(history)
    notes = {"epochs": cfg.epochs, "lr": cfg.lr, "backbone": cfg.backbone, "lexical": cfg.lexical,
             "best_epoch": kept["epoch"],
             "valid_macro_f1": kept.get("valid_macro_f1"),
             "valid_f1_by_epoch": [h.get("valid_macro_f1") for h in history]}
    return predict(model_, tok, test, cfg.eval_batch_size)[0].argmax(1), notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CSV (optionally .gz) with query, title and graded label columns")
    ap.add_argument("--columns", default=json.dumps(HOMEDEPOT_COLUMNS), help="JSON: canonical name -> column")
    ap.add_argument("--thresholds", default=json.dumps(HOMEDEPOT_THRESHOLDS), help="JSON [[min_score, class], ...]")
    ap.add_argument("--valid-share", type=float, default=None, help="share of queries in validation "
                    "(default: params' data.split.valid)")
    ap.add_argument("--test-share", type=float, default=None, help="share of queries in test (data.split.test)")
    ap.add_argument("--valid-pairs", type=int, default=500, help="cap on validation pairs (whole queries; they pick "
                    "the students' epoch)")
    ap.add_argument("--test-pairs", type=int, default=2000, help="cap on test pairs (whole queries)")
    ap.add_argument("--sizes", nargs="+", default=["400", "1600", "all"], help="training queries per point, "
                    "or 'all'; nested")
    ap.add_argument("--epochs", type=int, nargs="+", default=None, help="epochs of the students and the "
                    "CrossEncoder at each size (one per --sizes); default: the profile's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 14, 15])
    ap.add_argument("--runs", type=int, nargs="+", default=None, help="seeds run at each size (the first N of "
                    "--seeds; one value per size); default: every seed at every size")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--student", action="append", default=[], metavar="NAME=JSON",
                    help="an extra student: overrides of the student section, e.g. 'lr1e-4={\"lr\": 0.0001}'")
    ap.add_argument("--profile", default="real-cpu", help="profiles/NAME.yaml merged over params.yaml first")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override, repeatable")
    ap.add_argument("--workdir", required=True, help="finished cells are kept here (re-run to resume)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: table the cells already finished (a model missing at a size is left out)")
    ap.add_argument("--name", default="learning_curve")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    for opt in ("epochs", "runs"):
        if getattr(a, opt) is not None and len(getattr(a, opt)) != len(a.sizes):
            ap.error(f"--{opt} needs one value per size ({len(a.sizes)})")
    extras = named_overrides(a.student, "--student")

    overlay = {"data": {"source": "table", "table": {"path": str(Path(a.data).resolve()),
                                                     "columns": json.loads(a.columns), "labels": None,
                                                     "thresholds": json.loads(a.thresholds)},
                        "split": {k: v for k, v in (("valid", a.valid_share), ("test", a.test_share))
                                  if v is not None}}}
    from relkd.eval.metrics import macro_f1

    params = load_params(a.profile, overlay, a.set)
    train, valid, test, labels, info = prepare(params, a.valid_pairs, a.test_pairs)
    trains = nested_train(train, a.sizes)
    print(json.dumps(info), {s: len(t) for s, t in trains.items()}, flush=True)
    store = CellStore(Path(a.workdir) / "cells")
    same = {"data": Path(a.data).name, "split": info, "profile": a.profile, "set": a.set,
            "test_pair_ids": hashlib.sha1("|".join(test["pair_id"]).encode()).hexdigest()}
    if (Path(a.workdir) / "settings.json").is_file():
        before = json.loads((Path(a.workdir) / "settings.json").read_text(encoding="utf-8"))
        if before != same:
            raise SystemExit(f"--workdir {a.workdir} holds cells of other data settings ({before}); give another "
                             "--workdir or the same settings")
    else:
        Path(a.workdir).mkdir(parents=True, exist_ok=True)
        (Path(a.workdir) / "settings.json").write_text(json.dumps(same, indent=2), encoding="utf-8")
    gold = test["label"].tolist()
    todo = [*a.models, *extras]
    def seeds_at(i: int, model: str) -> list[int]:
        seeds = a.seeds if a.runs is None else a.seeds[:a.runs[i]]
        return seeds[:1] if model in SEEDLESS else seeds

    def cell_key(i: int, model: str, seed: int) -> str:
        return f"{model}/{a.sizes[i]}" + ("" if a.epochs is None else f"/e{a.epochs[i]}") + f"/seed{seed}"

    # Seed by seed across the sizes: the first seed of every size (the curve) is in before any second seed.
    for k in range(0 if a.report_only else len(a.seeds)):
        for i, size in enumerate(a.sizes):
            for model in todo:
                seeds = seeds_at(i, model)
                if k >= len(seeds) or store.get(cell_key(i, model, seeds[k])) is not None:
                    continue
                key, t0 = cell_key(i, model, seeds[k]), time.time()
                codes, notes = fit_predict("student" if model in extras else model, trains[size], valid, test,
                                           labels, seeds[k], params, extras.get(model, {}),
                                           None if a.epochs is None else a.epochs[i])
                cell = store.put(key, {"pred": [int(c) for c in codes], "minutes": (time.time() - t0) / 60,
                                       "n_train": len(trains[size]), **notes})
                f1 = macro_f1(gold, [labels[c] for c in cell["pred"]], labels)
                print(f"[{time.strftime('%H:%M:%S')}] {key}: {cell['minutes']:.1f} min, test F1 {100 * f1:.2f}",
                      flush=True)
    results = {(size, m): [store.get(cell_key(i, m, seed)) for seed in seeds_at(i, m)]
               for i, size in enumerate(a.sizes) for m in todo}
    left_out = [f"{size}: {m}" for (size, m), runs in results.items() if any(r is None for r in runs)]
    results = {k: runs for k, runs in results.items() if all(r is not None for r in runs)}
    rows = []
    for size in a.sizes:
        systems = {m: [[labels[c] for c in r["pred"]] for r in results[(size, m)]] for m in todo
                   if (size, m) in results}
        if "lexical_lr" not in systems:
            continue
        # The stronger lexical peer at the larger sizes is gradient boosting: every row's ΔF1 against it too.
        hgb = systems.get("lexical_hgb")
        vs_hgb = {} if hgb is None else {
            r["model"]: r[HGB_DELTA] for r in compare_rows(
                gold, {m: p for m, p in systems.items() if len(hgb) in (1, len(p))}, labels, "lexical_hgb",
                "lexical HGB")}
        for row in compare_rows(gold, systems, labels, "lexical_lr", "lexical LR"):
            runs = results[(size, row["model"])]
            rows.append({"train queries": size, "train pairs": runs[0]["n_train"],
                         **{**row, "model": NAMES.get(row["model"], row["model"])},
                         HGB_DELTA: vs_hgb.get(row["model"], ""),
                         "min / run": f"{np.mean([r['minutes'] for r in runs]):.1f}",
                         "kept epochs": ",".join(str(r["best_epoch"]) for r in runs if "best_epoch" in r)})
    extra = {"data": Path(a.data).name, "split": info, "left_out": left_out, "sizes": a.sizes,
             "epochs": a.epochs, "seeds": a.seeds,
             "runs": a.runs, "profile": a.profile, "set": a.set, "extra_students": extras,
             "student": params.student.model_dump(exclude={"variants", "seeds"}),
             "cross_encoder": params.peers.cross_encoder.model_dump()}
    columns = ["train queries", "train pairs", "model", "seeds", "ACC", "F1", "ΔACC vs lexical LR [95% CI]",
               "ΔF1 vs lexical LR [95% CI]", HGB_DELTA, "min / run", "kept epochs"]
    report(a.name, rows, columns, extra, a.out)


if __name__ == "__main__":
    main()
