"""Significance and spread: paired bootstrap CIs, McNemar, paired t-test, seed mean ± std, agreement."""
from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from scipy.stats import binomtest, ttest_rel

from relkd.eval.metrics import check_lengths, encode, macro_f1_from_codes

METRICS = ("accuracy", "macro_f1")


def bootstrap_diff_ci(y_true: Sequence, pred_a: Sequence, pred_b: Sequence, metric: str = "accuracy",
                      labels: Sequence[Hashable] | None = None, n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> dict:
    """Paired bootstrap of metric(b) - metric(a): both systems are scored on the same resampled
    examples, so the interval reflects the difference, not each system's own noise.

    `pred_a` and `pred_b` are one prediction per example, or one such list per training seed (the same
    examples in the same order, seed i of a paired with seed i of b): then the statistic is the mean over
    seeds of the per-seed difference (the Δ a table of means over seeds shows), and every resample draws
    the seeds with replacement as well as the examples (the same examples for every drawn seed), so the
    interval covers the spread between training runs and not only the test rows: with row resampling
    alone, one lucky seed of a reaches "significance" that another set of seeds would not repeat.

    `labels` is the label set (required: macro-F1 averages over all classes, and a prediction outside
    it counts as wrong). Returns ``diff`` (on the full data), ``mean`` (over resamples), the
    percentile interval ``low``/``high`` at level 1 - alpha, and the settings used.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not supported; use one of {METRICS}")
    if labels is None:
        raise ValueError("labels is required: pass the dataset's ordered label set")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got n_boot={n_boot}, alpha={alpha}")
    per_seed = len(pred_a) > 0 and not isinstance(pred_a[0], (str, bytes)) and isinstance(pred_a[0], Sequence)
    runs_a, runs_b = (pred_a, pred_b) if per_seed else ([pred_a], [pred_b])
    if len(runs_a) != len(runs_b):
        raise ValueError(f"{len(runs_a)} seeds of pred_a but {len(runs_b)} of pred_b")
    n = 0
    for pa, pb in zip(runs_a, runs_b):
        n = check_lengths(y_true=y_true, pred_a=pa, pred_b=pb)
    c = len(labels)
    t = encode(y_true, labels, what="y_true", allow_unparseable=False)
    a = [encode(pa, labels, what="pred_a", allow_unparseable=True) for pa in runs_a]
    b = [encode(pb, labels, what="pred_b", allow_unparseable=True) for pb in runs_b]

    def one(idx, sa, sb) -> float:
        if metric == "accuracy":
            return float((sb[idx] == t[idx]).mean() - (sa[idx] == t[idx]).mean())
        return macro_f1_from_codes(t[idx], sb[idx], c) - macro_f1_from_codes(t[idx], sa[idx], c)

    k = len(a)

    def score(idx, seeds=range(k)) -> float:
        return float(np.mean([one(idx, a[s], b[s]) for s in seeds]))

    rng = np.random.default_rng(seed)
    # One seed: the rows alone (the same draws as before seeds were resampled).
    diffs = np.array([score(rng.integers(0, n, n)) if k == 1 else score(rng.integers(0, n, n), rng.integers(0, k, k))
                      for _ in range(n_boot)])
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return {"metric": metric, "diff": score(np.arange(n)), "mean": float(diffs.mean()),
            "low": float(low), "high": float(high), "n": n, "n_boot": n_boot, "alpha": alpha, "seed": seed,
            "seeds": k, "resampled": "rows" if k == 1 else "rows and seeds"}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, the usual spread over seeds; 0.0 for one value)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def mcnemar(y_true: Sequence, pred_a: Sequence, pred_b: Sequence) -> dict:
    """Exact McNemar test: a two-sided binomial test on the discordant pairs.

    ``b01`` counts examples a gets wrong and b gets right; ``b10`` the reverse (the digits are
    a's and b's correctness). With no discordant pair there is no evidence either way: p = 1.
    """
    check_lengths(y_true=y_true, pred_a=pred_a, pred_b=pred_b)
    ok_a = np.array([p == t for p, t in zip(pred_a, y_true)], dtype=bool)
    ok_b = np.array([p == t for p, t in zip(pred_b, y_true)], dtype=bool)
    b01 = int((~ok_a & ok_b).sum())
    b10 = int((ok_a & ~ok_b).sum())
    p = binomtest(b01, b01 + b10, 0.5, alternative="two-sided").pvalue if b01 + b10 else 1.0
    return {"b01": b01, "b10": b10, "p_value": float(p)}


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired t-test of a against b (scipy.stats.ttest_rel; t > 0 means a is larger). Identical
    inputs give t = 0, p = 1; a constant non-zero difference gives t = ±inf, p = 0."""
    check_lengths(a=a, b=b)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {a.size}")
    d = a - b
    if np.all(d == d[0]):  # zero spread: scipy warns and divides by zero; the limit is exact
        if d[0] == 0:
            return {"t": 0.0, "p": 1.0, "n": int(a.size)}
        return {"t": float(np.copysign(np.inf, d[0])), "p": 0.0, "n": int(a.size)}
    res = ttest_rel(a, b)
    return {"t": float(res.statistic), "p": float(res.pvalue), "n": int(a.size)}


def agreement(pred_a: Sequence, pred_b: Sequence) -> float:
    """Share of examples on which two systems predict the same label (two unparseable outputs,
    both None, agree)."""
    n = check_lengths(pred_a=pred_a, pred_b=pred_b)
    return sum(x == y for x, y in zip(pred_a, pred_b)) / n
