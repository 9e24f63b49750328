"""Probing (paper Fig. 4): does the latent reasoning vector r encode rationale keywords absent from the input?

Keywords are words frequent in teacher rationales that do not occur in the pair's own query or
title, so a probe cannot find them by surface matching. For each keyword a linear probe predicts
"the rationale uses this word" from r and, separately, from h_cls, on the same random splits;
F1 over repeated runs is compared with a paired t-test.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from relkd.eval.stats import mean_std, paired_ttest

DEFAULT_STOPWORDS = frozenset(ENGLISH_STOP_WORDS)
EXCLUDED = -1  # probe target of a pair whose own query/title contains the keyword
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")  # letters in any script; "doesn't" stays one word


def words(text: str | None, min_len: int = 1) -> set[str]:
    """The distinct lower-cased words of a text (letters only; digits and punctuation split words)."""
    if not isinstance(text, str):
        return set()
    return {w for w in _WORD.findall(text.lower()) if len(w) >= min_len}


def _check_aligned(rationales, queries, titles) -> None:
    if not len(rationales) == len(queries) == len(titles):
        raise ValueError(f"rationales, queries and titles must align per pair; got lengths "
                         f"{len(rationales)}, {len(queries)}, {len(titles)}")


def probe_keywords(rationales: Sequence[str], queries: Sequence[str], titles: Sequence[str],
                   top_n: int = 15, min_count: int = 5, stopwords: Iterable[str] | None = None,
                   min_len: int = 3) -> list[dict]:
    """The `top_n` non-trivial rationale keywords, most frequent first (ties by word).

    A keyword counts for a pair when it is in the pair's rationale and in neither its query nor its
    title; its count is the number of such pairs. Words in `stopwords` (default: scikit-learn's
    English list; add the label names so the probe does not just predict the label), shorter than
    `min_len`, or counted fewer than `min_count` times are left out.
    """
    _check_aligned(rationales, queries, titles)
    stop = DEFAULT_STOPWORDS if stopwords is None else frozenset(w.lower() for w in stopwords)
    counts: Counter[str] = Counter()
    for r, q, t in zip(rationales, queries, titles):
        counts.update(words(r, min_len) - words(q) - words(t) - stop)
    ranked = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda kv: (-kv[1], kv[0]))
    return [{"keyword": w, "count": c} for w, c in ranked[:top_n]]


def probe_targets(keyword: str, rationales: Sequence[str], queries: Sequence[str],
                  titles: Sequence[str]) -> np.ndarray:
    """Per pair: 1 if the rationale uses `keyword`, 0 if not, and EXCLUDED (-1) when the pair's own
    query or title contains it (the input would give the answer away, so run_probe drops the pair)."""
    _check_aligned(rationales, queries, titles)
    kw = keyword.lower()
    out = np.zeros(len(rationales), dtype=np.int64)
    for i, (r, q, t) in enumerate(zip(rationales, queries, titles)):
        if kw in words(q) or kw in words(t):
            out[i] = EXCLUDED
        elif kw in words(r):
            out[i] = 1
    return out


def run_probe(features_r, features_cls, targets, n_runs: int = 10, seed: int = 0, test_size: float = 0.3,
              min_per_class: int = 5, max_iter: int = 1000) -> dict:
    """Linear probes (standardised features, logistic regression with balanced class weights) on r
    and on h_cls, trained and tested on the same stratified random split in each run; F1 of the
    positive class per run, mean ± std, and a paired t-test of r against h_cls (t > 0: r is better).

    A keyword with fewer than `min_per_class` positive or negative pairs cannot be split into train
    and test reliably: the result is ``status="skipped"`` with the reason, and no scores.
    """
    xr, xc = np.asarray(features_r, dtype=float), np.asarray(features_cls, dtype=float)
    y = np.asarray(targets, dtype=np.int64)
    if xr.ndim != 2 or xc.ndim != 2 or not len(xr) == len(xc) == len(y):
        raise ValueError(f"features must be (n, d) arrays with one row per target; got r {xr.shape}, "
                         f"h_cls {xc.shape}, targets {y.shape}")
    if n_runs < 2:
        raise ValueError(f"n_runs must be >= 2 for a paired t-test, got {n_runs}")
    keep = y != EXCLUDED
    xr, xc, y = xr[keep], xc[keep], y[keep]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    result = {"status": "ok", "reason": None, "n": int(len(y)), "n_pos": n_pos,
              "n_excluded": int((~keep).sum()), "n_runs": n_runs, "seed": seed,
              "f1_r": None, "f1_cls": None, "mean_r": None, "std_r": None,
              "mean_cls": None, "std_cls": None, "t": None, "p": None}
    if min(n_pos, n_neg) < min_per_class:
        result["status"] = "skipped"
        result["reason"] = (f"only {n_pos} positive and {n_neg} negative pairs; a train/test split needs "
                            f">= {min_per_class} of each (use more pairs or a more frequent keyword)")
        return result

    def probe_f1(x, train, test) -> float:
        clf = make_pipeline(StandardScaler(),
                            LogisticRegression(class_weight="balanced", max_iter=max_iter))
        clf.fit(x[train], y[train])
        return float(f1_score(y[test], clf.predict(x[test]), zero_division=0))

    f1_r, f1_cls = [], []
    idx = np.arange(len(y))
    for run in range(n_runs):
        train, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed + run)
        f1_r.append(probe_f1(xr, train, test))
        f1_cls.append(probe_f1(xc, train, test))
    (mr, sr), (mc, sc) = mean_std(f1_r), mean_std(f1_cls)
    test = paired_ttest(f1_r, f1_cls)
    result.update(f1_r=f1_r, f1_cls=f1_cls, mean_r=mr, std_r=sr, mean_cls=mc, std_cls=sc,
                  t=test["t"], p=test["p"])
    return result


def run_probes(keywords: Sequence[str], rationales: Sequence[str], queries: Sequence[str],
               titles: Sequence[str], features_r, features_cls, n_runs: int = 10, seed: int = 0,
               **probe_kwargs) -> list[dict]:
    """run_probe for each keyword (targets from probe_targets); each result names its keyword."""
    out = []
    for kw in tqdm(keywords, desc="probing keywords", unit="keyword"):
        y = probe_targets(kw, rationales, queries, titles)
        out.append({"keyword": kw, **run_probe(features_r, features_cls, y, n_runs=n_runs, seed=seed,
                                               **probe_kwargs)})
    return out


def probe_summary(results: Sequence[dict], alpha: float = 0.05) -> dict:
    """Average F1 over probed keywords on r and on h_cls, the relative improvement (paper: 0.403 vs
    0.221, +81.8%), and how many keywords show r significantly better (p < alpha and t > 0)."""
    done = [r for r in results if r["status"] == "ok"]
    mean_r = float(np.mean([r["mean_r"] for r in done])) if done else None
    mean_cls = float(np.mean([r["mean_cls"] for r in done])) if done else None
    rel = (mean_r - mean_cls) / mean_cls if done and mean_cls > 0 else None
    return {"n_keywords": len(results), "n_probed": len(done), "n_skipped": len(results) - len(done),
            "mean_f1_r": mean_r, "mean_f1_cls": mean_cls, "relative_improvement": rel,
            "n_significant": sum(1 for r in done if r["p"] < alpha and r["t"] > 0), "alpha": alpha}


def label_probe(embeddings, gold: Sequence, folds: int = 5, seed: int = 0, max_iter: int = 1000) -> dict:
    """Can e_cot carry the label? A linear probe (standardised features, logistic regression) from each
    annotated pair's rationale embedding to its gold label, scored on held-out pairs: stratified k-fold
    cross-validated predictions, beside the majority rate (what always answering the commonest class gets).

    Classes with a single pair cannot be held out and predicted at once; they are left out (named in
    ``left_out``). The folds shrink to the smallest remaining class; with fewer than two classes of two
    pairs or more the result is ``status="skipped"`` with the reason and no scores.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from relkd.eval.metrics import classification_report

    x = np.asarray(embeddings, dtype=float)
    y = np.asarray([str(g) for g in gold], dtype=object)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"embeddings must be an (n, d) array with one row per gold label; got {x.shape} "
                         f"for {len(y)} labels")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    counts = Counter(y.tolist())
    left_out = sorted(c for c, n in counts.items() if n < 2)
    keep = np.asarray([counts[v] >= 2 for v in y], dtype=bool)
    x, y = x[keep], y[keep]
    classes = sorted(set(y.tolist()))
    result = {"status": "ok", "reason": None, "n": int(len(y)), "n_classes": len(classes),
              "left_out": left_out, "folds": None, "seed": seed, "accuracy": None, "macro_f1": None,
              "majority_label": None, "majority_rate": None, "majority_macro_f1": None}
    if len(classes) < 2:
        result["status"] = "skipped"
        result["reason"] = (f"too few rows: {len(y)} pairs in {len(classes)} class(es) with >= 2 pairs each "
                            f"(counts {dict(counts)}); a probe needs two such classes (annotate more pairs)")
        return result
    majority_label = max(classes, key=lambda c: (int((y == c).sum()), -classes.index(c)))
    k = min(folds, min(int((y == c).sum()) for c in classes))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    pred = cross_val_predict(clf, x, y, cv=StratifiedKFold(n_splits=k, shuffle=True, random_state=seed))
    rep = classification_report(y.tolist(), pred.tolist(), classes)
    base = classification_report(y.tolist(), [majority_label] * len(y), classes)
    result.update(folds=k, accuracy=rep["accuracy"], macro_f1=rep["macro_f1"], majority_label=majority_label,
                  majority_rate=base["accuracy"], majority_macro_f1=base["macro_f1"])
    return result
