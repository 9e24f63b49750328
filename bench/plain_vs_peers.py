"""The plain student against the majority class and the lexical logistic regression on a prepared split, seeds
apart, with and without the lexical head (student.lexical), without the teacher.

The students are trained by the library's `train_student` with the params file's student section (e.g. the
real-cpu profile a bench/quality.py workdir wrote), on every training pair; the lexical peer and the majority
class are fitted on the same rows. Each student row carries mean ± std over seeds and the paired bootstrap
interval (seeds and test pairs resampled, every drawn seed on the same pairs) of its difference from the
lexical LR. It measures a
student change in minutes where the whole pipeline (bench/quality.py) takes two hours; the CrossEncoder peer
is the pipeline's (`peers` stage), not re-run here.

    python bench/plain_vs_peers.py --prepared DIR/repo/data/prepared --params DIR/repo/params.yaml \\
        --name plain_vs_peers_hd [--tokens-only]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare_rows, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True, help="a prepare stage output (train/valid/test.parquet, labels.json)")
    ap.add_argument("--params", required=True, help="params file whose student section trains the students")
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 14, 15])
    ap.add_argument("--tokens-only", action="store_true", help="also train plain with student.lexical: false")
    ap.add_argument("--name", default="plain_vs_peers")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args()

    import pandas as pd

    from relkd.config import load_params
    from relkd.eval.peers import fit_lexical, fit_majority
    from relkd.student.config import VariantConfig
    from relkd.student.trainer import kept_epoch, predict, train_student

    params = load_params(a.params)
    prepared = Path(a.prepared)
    labels = tuple(json.loads((prepared / "labels.json").read_text(encoding="utf-8"))["labels"])
    splits = {s: pd.read_parquet(prepared / f"{s}.parquet") for s in ("train", "valid", "test")}
    gold = list(splits["test"]["label"])

    def label_of(probs) -> list:
        return [labels[k] for k in np.asarray(probs).argmax(axis=1)]

    lex = fit_lexical(splits["train"], labels, a.seeds[0], params.peers.lexical.C, params.peers.lexical.max_iter)
    systems = {"peer: majority class": [label_of(fit_majority(splits["train"]["label"], labels)
                                                 .predict_proba(splits["test"]))],
               "peer: lexical features + logistic regression": [label_of(lex.predict_proba(splits["test"]))]}
    epochs = {}
    plain = VariantConfig(extractor="none", guidance=False)
    for lexical in ([True, False] if a.tokens_only else [True]):
        cfg = params.student.model_copy(update={"lexical": lexical})
        name = "plain + lexical head" if lexical else "plain, tokens only"
        systems[name], epochs[name] = [], []
        for seed in a.seeds:
            t0 = time.time()
            model, tok, history = train_student(splits["train"], splits["valid"], labels, None, None, plain, cfg, seed,
                                                lexical_recipe=params.peers.lexical)
            systems[name].append(label_of(predict(model, tok, splits["test"], cfg.eval_batch_size)[0]))
            kept = kept_epoch(history)
            epochs[name].append({"seed": seed, "best_epoch": kept["epoch"], "valid_macro_f1": kept["valid_macro_f1"],
                                 "minutes": round((time.time() - t0) / 60, 1)})
            print(name, epochs[name][-1], flush=True)

    rows = compare_rows(gold, systems, labels, "peer: lexical features + logistic regression", "lexical LR")
    extra = {"prepared": prepared.name, "sizes": {s: len(f) for s, f in splits.items()}, "seeds": a.seeds,
             "student": params.student.model_dump(include={"backbone", "lr", "epochs", "batch_size", "pooling",
                                                           "max_length"}),
             "kept_epochs": epochs}
    columns = ["model", "seeds", "ACC", "ΔACC vs lexical LR [95% CI]", "F1", "ΔF1 vs lexical LR [95% CI]"]
    report(a.name, rows, columns, extra, a.out)


if __name__ == "__main__":
    main()
