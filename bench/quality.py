"""Quality on real data: the teacher and student pipeline (the real `dvc repro`) on an external CSV.

Takes a sample of the file's queries (all rows of each), runs the committed pipeline in a fresh clone of
this repository with `data.source: table` pointed at the sample, and reports the teacher's few-shot /
SFT / SFT+DPO rows and the students (mean ± std over seeds, paired bootstrap CI of each Δ vs plain) with their
peers from the pipeline's `compare` (majority class, lexical logistic regression and gradient boosting,
sentence-transformers' CrossEncoder; trained on the same rows and seeds), and beside each table the embed stage's
probe of whether the rationale embeddings (e_cot) carry the gold label.
Then it re-runs the annotation and the students with label-hinted rationales (`teacher.annotate.hint:
gold`) and reports that table too: the check of whether LRKD's guidance helps once the rationales carry
the label's reasons, which a chance-level teacher's own rationales do not.

    python bench/quality.py --data PATH/TO/homedepot_dev.csv.gz   # the benchmark data file, never committed

The defaults are the Home Depot file's columns and the class mapping its README suggests, the real-cpu
profile, and every query of the file (`--queries all`): the students and the peers train on all the labelled
training pairs, which is what a team would do, while the teacher annotates a sample of them (`--annotate`); a
number of queries samples fewer (600 queries: 2,416 training pairs, the runs below). Timed on 2026-12-06
(2 cores): `--queries 600 --rounds none --variants plain lrkd_gat lrkd_gat_lam1` took about 72 minutes (the
teacher's stages 23, each student 12 for 3 seeds, the peers 11); every round of `--rounds` adds its annotation
and students. Re-running with the same --workdir resumes (DVC skips the stages that finished). The data stays in
--workdir (outside the repository); only the tables are written to
bench/results/quality.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HOMEDEPOT_COLUMNS, HOMEDEPOT_THRESHOLDS, dotted, dvc_repro, machine, markdown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = {"none": "the teacher's own rationales (paper)", "gold": "label-hinted rationales"}


def _variants() -> dict:
    """The students this benchmark can train: relkd's named variants (their one definition) and LRKD-GAT at
    lambda = 1, as params.yaml specs."""
    from relkd.student.config import VariantConfig, named_variants

    specs = {name: v.model_dump(exclude_defaults=True) for name, v in named_variants().items()}
    return {**specs, "lrkd_gat_lam1": VariantConfig(extractor="gat", lam=1.0).model_dump(exclude_defaults=True)}


VARIANTS = _variants()


def sample_queries(data: str, query_col: str, n_queries: int | None, seed: int, out: Path) -> dict:
    """Every row of `n_queries` queries drawn at random, or of all of them with None (the split by query happens in
    `prepare`)."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(data)
    if query_col not in frame.columns:
        raise SystemExit(f"--data {data}: no column {query_col!r} (columns: {list(frame.columns)}); "
                         "pass --query-col")
    queries = frame[query_col].drop_duplicates()
    n = len(queries) if n_queries is None else min(n_queries, len(queries))
    chosen = set(queries.sample(n=n, random_state=np.random.RandomState(seed)))
    sample = frame[frame[query_col].isin(chosen)]
    sample.to_csv(out, index=False)
    return {"file_rows": len(frame), "file_queries": int(len(queries)), "sample_rows": len(sample),
            "sample_queries": len(chosen)}


def overlay(a, sample: Path) -> dict:
    return {
        "data": {"source": "table",
                 "table": {"path": str(sample), "columns": json.loads(a.columns), "labels": None,
                           "thresholds": json.loads(a.thresholds)}},
        "teacher": {"eval": {"n_test_pairs": a.teacher_test}, "annotate": {"max_pairs": a.annotate}},
        "student": {"seeds": a.seeds},
    }


def set_params(clone: Path, over: dict, variants: dict, hint: str, profile: str | None) -> None:
    from relkd.config import merge, parse_params

    params = yaml.safe_load((clone / "params.yaml").read_text(encoding="utf-8"))
    if profile:
        params = merge(params, yaml.safe_load((clone / "profiles" / f"{profile}.yaml").read_text(encoding="utf-8")))
    params = merge(params, over)
    params["student"]["variants"] = variants
    params["teacher"]["annotate"]["hint"] = hint
    parse_params(params)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")


def read(clone: Path, rel: str) -> dict:
    return json.loads((clone / rel).read_text(encoding="utf-8"))


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def student_rows(compare: dict, variants: list[str]) -> list[dict]:
    """Rows of the table from compare's metrics (metrics/compare.json for students, reports/student/peers.json
    for the peer rows: the same format)."""
    rows = []
    for name in variants:
        m = compare[name]
        row = {"model": name, "ACC": f"{pct(m['accuracy'])} ± {pct(m['accuracy_std'])}",
               "F1": f"{pct(m['macro_f1'])} ± {pct(m['macro_f1_std'])}", **m}
        for metric, short in (("accuracy", "ΔACC"), ("macro_f1", "ΔF1")):
            row[f"{short} [95% CI]"] = "-" if f"delta_{metric}" not in m else (
                f"{100 * m[f'delta_{metric}']:+.2f} [{100 * m[f'delta_{metric}_ci_low']:+.2f}, "
                f"{100 * m[f'delta_{metric}_ci_high']:+.2f}]")
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="CSV (optionally .gz) with query, title and graded label columns")
    ap.add_argument("--columns", default=json.dumps(HOMEDEPOT_COLUMNS), help="JSON: canonical name -> column")
    ap.add_argument("--thresholds", default=json.dumps(HOMEDEPOT_THRESHOLDS),
                    help="JSON [[min_score, class], ...] (the Home Depot README's mapping)")
    ap.add_argument("--queries", type=lambda v: None if v == "all" else int(v), default=None,
                    help="queries sampled from the file (all their rows), or 'all' (the default: every training "
                    "pair of the file's split; 1,000 Home Depot queries: ~4,000 training pairs)")
    ap.add_argument("--annotate", type=int, default=400, help="train pairs the teacher annotates (the guidance "
                    "targets; the students train on every training pair, student.train_rows: all)")
    ap.add_argument("--teacher-test", type=int, default=200, help="test pairs the teacher tables are measured on "
                    "(200: a 7-point difference is visible; 40 gave +-14 points)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 14, 15])
    ap.add_argument("--rounds", nargs="+", default=list(ROUNDS), choices=list(ROUNDS))
    ap.add_argument("--seed", type=int, default=0, help="query sample seed")
    ap.add_argument("--workdir", default=None, help="clone + sample + logs here (kept; re-run to resume)")
    ap.add_argument("--profile", default="real-cpu", help="a profiles/NAME.yaml overlay first (real-cpu: the "
                    "students' recipe for a few thousand real pairs; tiny: a quick smoke run)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--from-json", default=None, help="only re-render quality.md from a quality.json")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="student variants trained (plain always first)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a params override on top of the sample's, repeatable (e.g. student.epochs=5); "
                    "recorded in the results")
    a = ap.parse_args()
    if not (a.data or a.from_json):
        ap.error("--data is required (or --from-json to re-render)")
    if a.from_json:
        payload = json.loads(Path(a.from_json).read_text(encoding="utf-8"))
        return write(a.out, payload)

    work = Path(a.workdir or tempfile.mkdtemp(prefix="relkd-quality-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    clone = work / "repo"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                      text=True).stdout.strip():
        print("note: the working tree has uncommitted changes; the benchmark runs the committed pipeline "
              f"({commit[:10]})", flush=True)
    if not clone.exists():
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    sample = work / f"sample-q{a.queries or 'all'}-seed{a.seed}.csv"
    sizes = sample_queries(a.data, json.loads(a.columns)["query"], a.queries, a.seed, sample)
    print(f"workdir {work}; sample {sizes}", flush=True)
    from relkd.config import merge

    over = merge(overlay(a, sample), dotted(a.set))
    variants = {k: VARIANTS[k] for k in dict.fromkeys(["plain", *a.variants])}  # every delta is vs plain

    result = {"data": str(a.data), "commit": commit, "sizes": sizes,
              "settings": {k: getattr(a, k) for k in ("queries", "annotate", "teacher_test", "seeds", "seed", "set")},
              "variants": variants, "rounds": {}, "wall_s": {}}
    for hint in a.rounds:
        set_params(clone, over, variants, hint, a.profile)
        result["settings"]["train_rows"] = yaml.safe_load((clone / "params.yaml").read_text(encoding="utf-8"))[
            "student"].get("train_rows", "annotated")
        wall = dvc_repro(clone, work / f"repro-{hint}.log", "compare", "teacher_eval")
        result["wall_s"][hint] = round(wall, 1)
        result["rounds"][hint] = {"compare": read(clone, "metrics/compare.json"),
                                  "peers": read(clone, "reports/student/peers.json"),
                                  "peers_n_train": {k: v["n_train"]
                                                    for k, v in read(clone, "metrics/peers.json").items()},
                                  "embed": read(clone, "metrics/embed.json"),
                                  "annotate": read(clone, "metrics/annotate.json")}
        if "prepare" not in result:
            result["prepare"] = read(clone, "metrics/prepare.json")
            result["teacher"] = read(clone, "metrics/teacher_eval.json")
        shutil.copytree(clone / "reports" / "student", work / f"reports-{hint}", dirs_exist_ok=True)
        shutil.copytree(clone / "models" / "student", work / f"students-{hint}", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "tokenizer*", "vocab.txt"))
        shutil.copytree(clone / "models" / "peers", work / f"peers-{hint}", dirs_exist_ok=True)
        print(f"round {hint}: {wall / 60:.1f} min", flush=True)

    write(a.out, {"benchmark": "quality", "machine": machine(), **result})


def probe_line(embed: dict | None) -> list[str]:
    """The e_cot label probe of the round (results written before the probe existed have none)."""
    probe = (embed or {}).get("e_cot_probe")
    if not probe:
        return []
    if probe["status"] != "ok":
        return [f"e_cot probe (linear, rationale embedding -> gold label): skipped, {probe['reason']}.", ""]
    left = f"; left out (one pair each): {probe['left_out']}" if probe["left_out"] else ""
    return [f"e_cot probe (linear, rationale embedding -> gold label, {probe['folds']}-fold held-out predictions on "
            f"{probe['n']} annotated train pairs): ACC {pct(probe['accuracy'])}, F1 {pct(probe['macro_f1'])}; "
            f"majority rate {pct(probe['majority_rate'])} (F1 {pct(probe['majority_macro_f1'])}){left}.", ""]


def trained_on(settings: dict) -> str:
    """Which train pairs the students saw (results from before `student.train_rows` existed: the annotated ones)."""
    if "train_rows" not in settings:
        return f"The students train on {settings['annotate']} class-balanced train pairs the teacher annotated."
    if settings["train_rows"] == "annotated":
        return f"The students train on the {settings['annotate']} train pairs the teacher annotated."
    return (f"The students and the peers train on every train pair; the teacher annotated {settings['annotate']} of "
            "them, the students' guidance target where present.")


def render(result: dict) -> str:
    sizes, st, prep = result["sizes"], result["settings"], result["prepare"]
    lines = [f"# Quality on {Path(result['data']).name}", "", json.dumps(result["machine"]), "",
             f"Commit {result['commit'][:10]}; {sizes['sample_queries']} of {sizes['file_queries']} queries "
             f"({sizes['sample_rows']} rows) sampled with seed {st['seed']}; split by query into "
             f"{prep['rows']}; labels per split {prep['labels']}. " + trained_on(st) + f" Seeds {st['seeds']}."
             + (f" Params set on top: {', '.join(st['set'])}." if st.get("set") else "") + " Wall time per "
             "round (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in result["wall_s"].items()) + ".", "",
             f"## Teacher ({result['teacher']['n_test_pairs']} test pairs)", ""]
    teacher = [{"model": k, "ACC": pct(v["accuracy"]), "F1": pct(v["macro_f1"]),
                "unparseable %": pct(v["unparseable_rate"])} for k, v in sorted(result["teacher"]["table"].items())]
    lines += [markdown(teacher, ["model", "ACC", "F1", "unparseable %"]), ""]
    for hint, r in result["rounds"].items():
        ann = r["annotate"]
        peers = r.get("peers", {})
        lines += [f"## Students with {ROUNDS[hint]} (`teacher.annotate.hint: {hint}`)", "",
                  f"Annotation: {ann['n_pairs']} pairs, teacher accuracy on them "
                  f"{pct(ann['teacher_accuracy_on_train'])}, unparseable {pct(ann['unparseable_rate'])}%, "
                  f"{ann['mean_rationale_words']:.1f} words per rationale.",
                  "", *probe_line(r.get("embed")),
                  markdown(student_rows(r["compare"], list(result["variants"])) + student_rows(peers, list(peers)),
                           ["model", "ACC", "F1", "ΔACC [95% CI]", "ΔF1 [95% CI]"]), ""]
        if r.get("peers_n_train"):
            lines += [f"Peers trained on {sorted(set(r['peers_n_train'].values()))} train pairs.", ""]
    lines += ["Mean ± std over seeds; Δ vs plain: the mean over seeds of the per-seed difference, with its 95% paired "
              "bootstrap interval (test rows and seeds resampled, the same rows for every drawn seed). "
              "`lrkd_gat_lam1` is lrkd_gat "
              "with the guidance weight λ = 1 instead of 0.1. `peer:` rows (when the run has them) come from the "
              "pipeline's `peers` stage: `majority` (the train split's commonest class), `lexical_lr` / `lexical_hgb` "
              "(token overlap, TF-IDF cosines, BM25 over the training titles, number matches and lengths, with "
              "logistic "
              "regression / histogram gradient boosting) and `cross_encoder` (sentence-transformers' CrossEncoder on "
              "the students' backbone, trained by its own CrossEncoderTrainer and recipe, params.yaml `peers`)."]
    return "\n".join(lines) + "\n"


def write(out_dir: str, payload: dict) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    text = render(payload)
    (out / "quality.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
