"""Calibration for serving: temperature scaling, the relevance score and tier thresholds (ECE: relkd.eval.metrics).

The student outputs class probabilities; a relevance score (probabilities weighted per label) maps to
discrete tiers 0 (irrelevant) .. 4 (exact) by cut points fitted on the validation split so that each
tier's "score >= cut" set reaches a target precision for the relevant class. A score's tier is the
number of cut points it reaches (``score >= cut``), as the served model computes it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from relkd.serving.triton_model import N_TIERS

TEMPERATURE_BOUNDS = (0.01, 100.0)  # far outside what a trained classifier needs; keeps the search finite


def _rows_and_labels(rows, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(rows, dtype=np.float64)
    t = np.asarray(y)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"{what} must be a non-empty (n, classes) array, got shape {z.shape}")
    if t.shape != (len(z),) or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"y must hold one integer class index per row ({len(z)}), got dtype {t.dtype} and "
                         f"shape {t.shape}; map label names to their index in the label set first")
    if t.min() < 0 or t.max() >= z.shape[1]:
        raise ValueError(f"y holds class indices outside 0..{z.shape[1] - 1} (min {t.min()}, max {t.max()})")
    return z, t


def fit_temperature(logits, y) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on (validation) labels `y`.

    Searched over log T (bounded to 0.01..100), where the NLL is smooth and unimodal in practice.
    Dividing by T keeps every argmax, so accuracy is unchanged; only confidence moves.
    """
    z, t = _rows_and_labels(logits, y, "logits")
    rows = np.arange(len(t))

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[rows, t].mean())

    lo, hi = np.log(TEMPERATURE_BOUNDS)
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def calibrated_probs(logits, temperature: float) -> np.ndarray:
    """softmax(logits / temperature), as the served model computes its probabilities."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature), axis=1)


def relevance_score(probs, weights: Sequence[float]) -> np.ndarray:
    """probs @ weights: the expected relevance under the class probabilities.

    `weights` has one value per label in label order (e.g. 1.0 for the exact / strongly relevant
    class and 0.0 for the rest, or graded values); the caller chooses them from the dataset's labels.
    """
    p = np.asarray(probs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if p.ndim != 2 or w.shape != (p.shape[1],):
        raise ValueError(f"need probs (n, C) and one weight per class; got probs {p.shape}, weights {w.shape}")
    return p @ w


def fit_tier_thresholds(scores, is_relevant, target_precisions: Sequence[float] = (0.3, 0.5, 0.7, 0.9)) -> dict:
    """Cut points c1 < c2 < ... on the relevance score, one per target precision (tier 1 upwards).

    Cut t is the smallest observed score above c_{t-1} at which precision(score >= c_t), the share of
    relevant items among those at or above the cut, reaches target t: the tier keeps as much coverage
    as its target allows. When no such score exists the cut falls back to the score above c_{t-1}
    with the highest precision (the lowest one among ties) and ``met`` is False for it; when no
    score lies above c_{t-1}, the cut is placed just above it (an empty tier, precision None).

    Returns {thresholds, targets, precision, coverage (share of all items at or above each cut),
    met, tier_counts (items per tier 0..len(targets)), n, n_relevant}.
    """
    s = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(is_relevant, dtype=bool)
    targets = [float(x) for x in target_precisions]
    if s.ndim != 1 or s.shape != rel.shape or len(s) == 0:
        raise ValueError(f"need one score and one relevance flag per item; got {s.shape} and {rel.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or inf; score the items with relevance_score first")
    if not targets or any(not 0 < x <= 1 for x in targets) or any(b < a for a, b in zip(targets, targets[1:])):
        raise ValueError(f"target_precisions must be non-decreasing values in (0, 1], got {targets}")

    order = np.argsort(s, kind="stable")
    values, first = np.unique(s[order], return_index=True)
    rel_at_or_above = np.cumsum(rel[order][::-1])[::-1]  # relevant items from each sorted position up
    n_ge = len(s) - first
    precision = rel_at_or_above[first] / n_ge

    cuts, achieved, coverage, met = [], [], [], []
    below = -np.inf
    for target in targets:
        allowed = values > below
        if not allowed.any():
            cut = float(np.nextafter(below, np.inf))
            cuts.append(cut)
            achieved.append(None)
            coverage.append(0.0)
            met.append(False)
            below = cut
            continue
        reaching = allowed & (precision >= target - 1e-12)  # 1e-12: 7/10 must reach a target of 0.7
        if reaching.any():
            k = int(np.argmax(reaching))
        else:
            best = np.where(allowed, precision, -1.0)
            k = int(np.argmax(best))  # argmax takes the first (lowest) score among ties
        cuts.append(float(values[k]))
        achieved.append(float(precision[k]))
        coverage.append(float(n_ge[k] / len(s)))
        met.append(bool(precision[k] >= target - 1e-12))
        below = values[k]
    tiers = assign_tiers(s, cuts)
    return {"thresholds": cuts, "targets": targets, "precision": achieved, "coverage": coverage, "met": met,
            "tier_counts": np.bincount(tiers, minlength=len(cuts) + 1).tolist(),
            "n": int(len(s)), "n_relevant": int(rel.sum())}


def assign_tiers(scores, thresholds: Sequence[float]) -> np.ndarray:
    """Tier of each score: how many cut points it reaches (score >= cut), 0..len(thresholds)."""
    cuts = np.asarray(thresholds, dtype=np.float64)
    if cuts.ndim != 1 or len(cuts) == 0 or np.any(np.diff(cuts) <= 0):
        raise ValueError(f"thresholds must be strictly increasing cut points, got {list(thresholds)}")
    return np.searchsorted(cuts, np.asarray(scores, dtype=np.float64), side="right").astype(np.int64)


def fit_serving(logits, y, labels: Sequence[str], relevance_weights: dict[str, float],
                relevant_labels: Sequence[str], target_precisions: Sequence[float]) -> dict:
    """Everything a served version needs from the validation split, fitted on the logits of the graph that
    will be served: the temperature, the per-label relevance weights (in `labels` order), the tier cut points
    (each tier's "score >= cut" set reaching a target precision for the relevant labels), with the
    calibrated probabilities, ECE before and after, and the tier shares on validation."""
    from relkd.eval.metrics import expected_calibration_error

    y = np.asarray(y)
    temperature = fit_temperature(logits, y)
    probs = calibrated_probs(logits, temperature)
    weights = [float(relevance_weights.get(lab, 0.0)) for lab in labels]
    score = relevance_score(probs, weights)
    tiers = fit_tier_thresholds(score, np.isin(np.asarray(labels)[y], list(relevant_labels)), target_precisions)
    return {"temperature": float(temperature), "probs": probs, "relevance_weights": weights,
            "tier_thresholds": [float(t) for t in tiers["thresholds"]], "tier_precision_met": tiers.get("met"),
            "ece_before": expected_calibration_error(calibrated_probs(logits, 1.0), y),
            "ece_after": expected_calibration_error(probs, y),
            "valid_tier_share": np.bincount(assign_tiers(score, tiers["thresholds"]), minlength=N_TIERS).tolist()}
