"""Where the label signal sits on a prepared split: lexical features, the frozen sentence encoder's cosine of
query and title encoded apart, and a trained student's own predictions, each alone and stacked.

One logistic regression (scikit-learn, the lexical peer's recipe) per feature set, fitted on the train split
and scored on valid and test, with the paired bootstrap interval of each row's test difference from the
lexical row (the peer relkd's plain student is held to). It answers, before any student is changed, whether
a signal the student does not use exists: e.g. the bi-encoder cosine of all-MiniLM-L6-v2 (the student's own
backbone, trained as a bi-encoder), which a cross-encoder fine-tuned on a few thousand pairs does not recover.

    python bench/pair_signal.py --prepared DIR/repo/data/prepared \\
        --student DIR/repo/models/student/plain/seed13 --name pair_signal_hd
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402


def bi_encoder_cosine(queries, titles, model: str, max_length: int) -> np.ndarray:
    """cos(e(query), e(title)) with both sides encoded apart and normalised (the embed stage's encoder)."""
    from relkd.embed import encode_rationales

    q = encode_rationales(queries, model, max_length)
    t = encode_rationales(titles, model, max_length)
    return (q * t).sum(axis=1, keepdims=True)


def student_log_probs(folder: str, frame) -> np.ndarray:
    from relkd.student.model import load_student
    from relkd.student.trainer import predict

    model, tokenizer = load_student(folder)
    return np.log(predict(model, tokenizer, frame, 64)[0] + 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True, help="a prepare stage output (train/valid/test.parquet, labels.json)")
    ap.add_argument("--student", default=None, help="a student folder; adds its log-probabilities as features")
    ap.add_argument("--encoder", default="pypi:all-MiniLM-L6-v2", help="sentence encoder of the cosine feature")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--name", default="pair_signal")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args()

    import pandas as pd

    from relkd.eval.metrics import classification_report
    from relkd import lexical
    from relkd.eval.peers import feature_classifier
    from relkd.eval.config import LexicalPeerConfig
    from relkd.eval.stats import bootstrap_diff_ci

    prepared = Path(a.prepared)
    labels = tuple(json.loads((prepared / "labels.json").read_text(encoding="utf-8"))["labels"])
    splits = {s: pd.read_parquet(prepared / f"{s}.parquet") for s in ("train", "valid", "test")}
    tables = lexical.fit_tables(list(splits["train"]["query"]), list(splits["train"]["title"]))
    blocks = {"lexical": {s: lexical.features(list(f["query"]), list(f["title"]), tables) for s, f in splits.items()},
              "cosine": {s: bi_encoder_cosine(list(f["query"]), list(f["title"]), a.encoder, a.max_length)
                         for s, f in splits.items()}}
    if a.student:
        blocks["student"] = {s: student_log_probs(a.student, f) for s, f in splits.items()}
    sets = [("lexical",), ("cosine",), ("lexical", "cosine")]
    if a.student:
        sets += [("student",), ("lexical", "student"), ("lexical", "cosine", "student")]

    lexical_cfg = LexicalPeerConfig()
    rows, preds, gold = [], {}, list(splits["test"]["label"])
    for names in sets:
        x = {s: np.hstack([blocks[n][s] for n in names]) for s in splits}
        clf = feature_classifier("lr", a.seed, lexical_cfg.C, lexical_cfg.max_iter)
        clf.fit(x["train"], splits["train"]["label"])
        row = {"features": " + ".join(names)}
        for s in ("valid", "test"):
            p = list(clf.predict(x[s]))
            rep = classification_report(list(splits[s]["label"]), p, labels)
            row[f"{s} ACC"], row[f"{s} F1"] = round(100 * rep["accuracy"], 2), round(100 * rep["macro_f1"], 2)
            if s == "test":
                preds[row["features"]] = p
        for metric, short in (("accuracy", "ACC"), ("macro_f1", "F1")):
            if names == ("lexical",):
                row[f"test Δ{short} vs lexical [95% CI]"] = "-"
                continue
            ci = bootstrap_diff_ci(gold, preds["lexical"], preds[row["features"]], metric, labels, seed=a.seed)
            row[f"test Δ{short} vs lexical [95% CI]"] = (
                f"{100 * ci['diff']:+.2f} [{100 * ci['low']:+.2f}, {100 * ci['high']:+.2f}]")
        rows.append(row)
    majority = splits["train"]["label"].value_counts().index[0]
    extra = {"prepared": prepared.name, "student": Path(a.student).name if a.student else None, "encoder": a.encoder,
             "sizes": {s: len(f) for s, f in splits.items()},
             "majority_rate": {s: round(100 * float((f["label"] == majority).mean()), 2) for s, f in splits.items()}}
    print(json.dumps(extra))
    report(a.name, rows, list(rows[0]), extra, a.out)


if __name__ == "__main__":
    main()
