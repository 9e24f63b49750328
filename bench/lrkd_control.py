"""Does LRKD transfer reasoning when there is reasoning to transfer? The oracle control on the embedded catalogue.

In a clone of this repository (--workdir, kept: a re-run resumes) the real pipeline runs up to `embed` twice on one
embedded catalogue, every training pair annotated (`teacher.annotate.max_pairs: null`): once with the teacher's
rationales (the trained SmolLM2 teacher, `teacher.annotate.source: teacher`) and once with the oracle's
(`source: oracle`: each pair's reason written from the catalogue's construction, a control); each round's e_cot
probe (metrics/embed.json) says how much of the label its rationales carry. Then, at each training size (a seeded
prefix of the training queries) and seed, it trains with the library's `train_student` on the same pairs:

* `plain` and `no_guidance` (the GAT extractor, λ 0);
* LRKD-MLP / Poly / GAT guided by (a) the teacher's e_cot, (b) the oracle's, (c) the oracle's shuffled across the
  training pairs (a rationale-shaped target with no per-pair information; the permutation seeded per seed), and
  (d) the oracle's class centroid (each pair's target the mean oracle e_cot of the training pairs with its gold
  label: the label's information and none of the pair's own reason);
* any `--try NAME=JSON`: plain and the LRKD rows guided by the oracle and by its shuffle again, with those
  student-section overrides (e.g. '{"lam": 1}'; Δ against that try's plain, which is the plain row when the
  overrides only touch the guidance), to find what makes the guidance work.

Every finished cell (size, row, seed) is written to --workdir at once and skipped on a re-run. The table: test
ACC / macro-F1 (mean ± std over seeds), Δ vs plain and, for the oracle rows, Δ vs the same extractor on the
shuffled oracle, with paired bootstrap intervals over test pairs and seeds (relkd.eval.stats.bootstrap_diff_ci),
and the guidance term's share of CE in the last epoch. Only the table goes to bench/results/<name>.{md,json}.

    nice -n 10 python bench/lrkd_control.py --workdir DIR --queries 400 --sizes 32 130 all --name lrkd_control
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CellStore, clone_env, compare_rows, dotted, dvc_repro, named_overrides, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXTRACTORS = ("mlp", "poly", "gat")


def workspace(work: Path, n_queries: int, sets: dict, profile: str | None) -> Path:
    """A clone of this repository's HEAD with params for the control: the catalogue size and every training pair
    annotated."""
    from relkd.config import merge, parse_params

    clone = work / "repo"
    if not clone.exists():
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        params = yaml.safe_load((clone / "params.yaml").read_text(encoding="utf-8"))
        if profile:
            params = merge(params, yaml.safe_load((clone / "profiles" / f"{profile}.yaml").read_text(encoding="utf-8")))
        params = merge(params, merge({"data": {"catalogue": {"n_queries": n_queries}},
                                      "teacher": {"annotate": {"max_pairs": None}}}, sets))
        parse_params(params)
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True),
                                           encoding="utf-8")
    return clone


def rationales(work: Path, clone: Path, source: str) -> Path:
    """The round of `source`'s rationales and e_cot, copied to work/sources/<source> with the round's annotate and
    embed metrics. The teacher's round is `dvc repro embed` (the teacher's stages first). The oracle reads no
    teacher, and DVC would train one first (annotate lists the teacher as a dep), so its round runs the prepare,
    annotate and embed stages' own commands from dvc.yaml, outside DVC."""
    dest = work / "sources" / source
    if (dest / "embed.json").exists():
        return dest
    params = yaml.safe_load((clone / "params.yaml").read_text(encoding="utf-8"))
    params["teacher"]["annotate"]["source"] = source
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    log = work / f"rationales-{source}.log"
    t0 = time.time()
    if source == "teacher":
        dvc_repro(clone, log, "embed")
    else:
        stages = yaml.safe_load((clone / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
        for name in ("prepare", "annotate", "embed"):
            if name == "prepare" and (clone / "data/prepared/labels.json").exists():
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {name} ({source})", flush=True)
            with open(log, "a", encoding="utf-8") as fh:
                subprocess.run(stages[name]["cmd"], shell=True, cwd=clone, env=clone_env(clone), stdout=fh,
                               stderr=subprocess.STDOUT, check=True)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(clone / "data/teacher/rationales.jsonl", dest / "rationales.jsonl")
    shutil.copytree(clone / "data/embeddings", dest / "embeddings", dirs_exist_ok=True)
    for name in ("annotate", "embed"):
        shutil.copy(clone / "metrics" / f"{name}.json", dest / f"{name}.json")
    print(f"{source}: rationales and e_cot in {(time.time() - t0) / 60:.1f} min", flush=True)
    return dest


GUIDANCE_ONLY = {"lam", "guidance_normalize", "guidance_into_backbone"}  # knobs an unguided student ignores


def rows_to_train(tries: dict, extractors=EXTRACTORS) -> dict[str, tuple[dict, str | None, dict, str]]:
    """row name -> (variant spec, e_cot source or None, student overrides, the cell's name). A try's plain row shares
    the plain cells when its overrides only touch the guidance."""
    rows = {"plain": ({"extractor": "none", "guidance": False}, None, {}, "plain"),
            "no_guidance": ({"extractor": "gat", "guidance": False, "lam": 0.0}, None, {}, "no_guidance")}
    for source in ("teacher", "oracle", "shuffled", "centroid"):
        for ext in extractors:
            rows[f"lrkd_{ext} / {source}"] = ({"extractor": ext}, source, {}, f"lrkd_{ext} / {source}")
    for name, over in tries.items():
        rows[f"plain / {name}"] = (rows["plain"][0], None, over,
                                   "plain" if set(over) <= GUIDANCE_ONLY else f"plain / {name}")
        for source in ("oracle", "shuffled"):
            for ext in extractors:
                row = f"lrkd_{ext} / {source} / {name}"
                rows[row] = ({"extractor": ext}, source, over, row)
    return rows


def group_of(name: str, tries: dict) -> str:
    """The try a row belongs to ("" for the rows without overrides): its Δ is against that try's plain row."""
    return next((t for t in tries if name.endswith(f" / {t}")), "")


def guidance_target(folder: Path, train) -> np.ndarray:
    """A round's e_cot aligned with `train` (NaN where a pair has none)."""
    from relkd.embed.store import read_embeddings

    vectors, meta = read_embeddings(folder / "embeddings")
    row_of = {p: i for i, p in enumerate(meta["pair_ids"])}
    missing = np.full(vectors.shape[1], np.nan, dtype=np.float32)
    return np.stack([vectors[row_of[p]] if p in row_of else missing for p in train["pair_id"]])


def shuffled(emb: np.ndarray, seed: int) -> np.ndarray:
    """The rows of `emb` permuted among the pairs that have one (seeded): the same targets, no pair's own."""
    out = emb.copy()
    have = np.flatnonzero(np.isfinite(emb).all(axis=1))
    out[have] = emb[np.random.default_rng(seed).permutation(have)]
    return out


def train_cell(row, train, valid, test, labels, emb, seed: int, params) -> dict:
    from relkd.student.config import StudentConfig, VariantConfig
    from relkd.student.trainer import kept_epoch, predict, train_student

    spec, source, over, _ = row
    variant = VariantConfig(**spec)
    cfg = StudentConfig.model_validate({**params.student.model_dump(), **over})
    t0 = time.time()
    model, tok, history = train_student(train, valid, labels, emb if variant.needs_embeddings else None, None,
                                        variant, cfg, seed, lexical_recipe=params.peers.lexical)
    codes = predict(model, tok, test, cfg.eval_batch_size)[0].argmax(1)
    kept = kept_epoch(history)
    return {"pred": [int(c) for c in codes], "minutes": (time.time() - t0) / 60, "n_train": len(train),
            "best_epoch": kept["epoch"], "valid_macro_f1": kept.get("valid_macro_f1"),
            "guidance_to_ce": [h.get("train_guidance_to_ce") for h in history],
            "train_guidance": [h.get("train_guidance") for h in history], "overrides": over}


def centroids(emb: np.ndarray, labels: list) -> np.ndarray:
    """Each row replaced by the mean of the rows with the same label (among the rows that have one)."""
    out = emb.copy()
    have = np.isfinite(emb).all(axis=1)
    labels = np.asarray(labels)
    for label in np.unique(labels):
        rows = have & (labels == label)
        out[rows] = emb[rows].mean(axis=0)
    return out


def vs_shuffled(gold, systems: dict, labels) -> dict[str, str]:
    """Δ macro-F1 of each oracle row vs the same extractor (and overrides) on the shuffled oracle."""
    from relkd.eval.stats import bootstrap_diff_ci

    out = {}
    for name, preds in systems.items():
        if " / oracle" in name:
            base = systems.get(name.replace(" / oracle", " / shuffled"))
            if base is None:
                continue
            ci = bootstrap_diff_ci(gold, base, preds, "macro_f1", labels, seed=0)
            out[name] = f"{100 * ci['diff']:+.2f} [{100 * ci['low']:+.2f}, {100 * ci['high']:+.2f}]"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="the clone, both rounds of rationales and the finished cells")
    ap.add_argument("--queries", type=int, default=400, help="data.catalogue.n_queries (4 pairs each; split "
                    "65/15/20 by query)")
    ap.add_argument("--sizes", nargs="+", default=["32", "130", "all"], help="training queries per point, or 'all'")
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 14, 15])
    ap.add_argument("--rows", nargs="+", default=None, help="only these rows and plain, their reference (default: all)")
    ap.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=EXTRACTORS,
                    help="the LRKD extractors trained (default: all three)")
    ap.add_argument("--try", dest="tries", action="append", default=[], metavar="NAME=JSON",
                    help="LRKD rows again with student overrides, e.g. 'lam1={\"lam\": 1}'")
    ap.add_argument("--try-sizes", nargs="+", default=None, help="sizes the --try rows run at (default: all)")
    ap.add_argument("--profile", default=None, help="a profiles/NAME.yaml merged over the workspace's params.yaml "
                    "(tiny: a smoke run with tiny models)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="params override of the workspace (before the rationales run)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: table the rows whose cells are all finished (the others named as left out)")
    ap.add_argument("--name", default="lrkd_control")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    tries = named_overrides(a.tries, "--try")  # a bad item stops before the workspace is cloned
    from pipeline.common import read_labels, read_split
    from relkd.config import load_params

    work = Path(a.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    clone = workspace(work, a.queries, dotted(a.set), a.profile)
    folders = {"oracle": rationales(work, clone, "oracle")}  # the oracle's rows first: they need no teacher
    params = load_params(clone / "params.yaml")
    prepared = clone / "data" / "prepared"
    labels = read_labels(str(prepared))
    train, valid, test = (read_split(str(prepared), s) for s in ("train", "valid", "test"))
    targets = {}

    def target(source: str) -> np.ndarray:
        if source not in targets:
            folders[source] = folders.get(source) or rationales(work, clone, source)
            targets[source] = guidance_target(folders[source], train)
        return targets[source]

    rows = rows_to_train(tries, a.extractors)
    if a.rows:  # plain stays: every Δ is against it (its cells are trained if missing)
        rows = {k: v for k, v in rows.items()
                if k in a.rows or k == "plain" or any(k.endswith(f" / {t}") for t in tries)}
    order = train["query_id"].drop_duplicates().sample(frac=1.0, random_state=0).tolist()
    parts = {size: train["query_id"].isin(set(order[:len(order) if size == "all" else int(size)])).to_numpy()
             for size in a.sizes}
    store = CellStore(work / "cells")
    gold = test["label"].tolist()

    def planned(size: str, name: str) -> bool:
        return not (rows[name][2] and a.try_sizes and size not in a.try_sizes)

    def key(size: str, name: str, seed: int) -> str:
        return f"{size}/{rows[name][3].replace(' / ', '__')}/seed{seed}"

    # At each size the teacher's rows come last: its round (the teacher's training, then annotating every pair) is
    # the long one, run when its first row is due.
    for size in [] if a.report_only else a.sizes:
        for teacher_pass in (False, True):
            part = parts[size]
            sub = train[part].reset_index(drop=True)
            for name, row in rows.items():
                if (row[1] == "teacher") != teacher_pass or not planned(size, name):
                    continue
                for seed in a.seeds:
                    if store.get(key(size, name, seed)) is not None:
                        continue
                    source = row[1]
                    emb = None if source is None else (
                        shuffled(target("oracle")[part], seed) if source == "shuffled" else
                        centroids(target("oracle")[part], sub["label"].tolist()) if source == "centroid" else
                        target(source)[part])
                    cell = store.put(key(size, name, seed),
                                     train_cell(row, sub, valid, test, labels, emb, seed, params))
                    print(f"[{time.strftime('%H:%M:%S')}] {key(size, name, seed)}: {cell['minutes']:.1f} min, valid "
                          f"F1 {100 * cell['valid_macro_f1']:.1f}", flush=True)

    table, left_out = [], []
    for size in a.sizes:
        cells = {name: [store.get(key(size, name, seed)) for seed in a.seeds] for name in rows if planned(size, name)}
        left_out += [f"{size}: {name}" for name, runs in cells.items() if any(c is None for c in runs)]
        cells = {name: runs for name, runs in cells.items() if all(c is not None for c in runs)}
        systems = {name: [[labels[c] for c in r["pred"]] for r in runs] for name, runs in cells.items()}
        shuffle_delta = vs_shuffled(gold, systems, labels)
        compared = []
        for group in ["", *tries]:
            members = {k: v for k, v in systems.items() if group_of(k, tries) == group}
            if members:
                compared += compare_rows(gold, members, labels, f"plain / {group}" if group else "plain", "plain")
        for r in compared:
            runs = cells[r["model"]]
            table.append({"train queries": size, "train pairs": runs[0]["n_train"], **r,
                          "ΔF1 vs shuffled oracle [95% CI]": shuffle_delta.get(r["model"], ""),
                          "λ·guidance / CE (last epoch)": "" if rows[r["model"]][1] is None else
                          f"{np.mean([c['guidance_to_ce'][-1] for c in runs]):.2f}",
                          "min / run": f"{np.mean([c['minutes'] for c in runs]):.1f}"})
    # Every round of rationales finished in this workdir (a --report-only run loads none of them above).
    folders.update({s: work / "sources" / s for s in ("teacher", "oracle")
                    if (work / "sources" / s / "embed.json").exists()})
    probes = {s: json.loads((f / "embed.json").read_text()) for s, f in folders.items()}
    extra = {"queries": a.queries, "sizes": a.sizes, "seeds": a.seeds, "tries": tries, "set": a.set,
             "left_out": left_out,
             "split": {s: len(f) for s, f in (("train", train), ("valid", valid), ("test", test))},
             "e_cot_probe": {s: p["e_cot_probe"] for s, p in probes.items()},
             "annotate": {s: json.loads((f / "annotate.json").read_text()) for s, f in folders.items()},
             "profile": a.profile, "student": params.student.model_dump(exclude={"variants", "seeds"}),
             "teacher_sft": params.teacher.sft.model_dump(),
             "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True,
                                      text=True).stdout.strip()}
    columns = ["train queries", "train pairs", "model", "seeds", "ACC", "F1", "ΔACC vs plain [95% CI]",
               "ΔF1 vs plain [95% CI]", "ΔF1 vs shuffled oracle [95% CI]", "λ·guidance / CE (last epoch)",
               "min / run"]
    report(a.name, table, columns, extra, a.out)
    for source, p in probes.items():
        q = p["e_cot_probe"]
        print(f"e_cot probe, {source}: ACC {100 * q['accuracy']:.1f} / F1 {100 * q['macro_f1']:.1f} on {q['n']} "
              f"pairs (majority {100 * q['majority_rate']:.1f})")


if __name__ == "__main__":
    main()
