"""TaoSR1's cumulative-probability partitioning: the teacher's label distribution as a relevance tier 0..4.

The rule. ``order`` lists the C labels from most to least relevant; ``cum[j]`` is the probability that
the item is at least as relevant as ``order[j]``: the sum of the probabilities of ``order[0..j]``.
With thresholds ``[t4, t3, t2, t1]``, tier k (4 down to 1) is reached when ``cum[j_k] >= t_k`` where
``j_k = min(4 - k, C - 2)``, and the tier is the highest one reached (0 when none is)::

    tier 4  if P(order[0])              >= t4
    tier 3  elif P(order[0..1])         >= t3
    tier 2  elif P(order[0..2])         >= t2
    tier 1  elif P(order[0..3])         >= t1
    tier 0  otherwise

The ``min(.., C - 2)`` clip keeps the least relevant class out of every cumulative sum, whose total
would always be 1: with ESCI's 4 classes (exact, substitute, complement, irrelevant) tiers 2 and 1
both read P(not irrelevant), so tier 1 is "P(not irrelevant) in [t1, t2)" and tier 0 is "mostly
irrelevant"; with 6 classes the last two classes together decide tier 0. A probability equal to a
threshold reaches it (ties within 1e-9 count, so that 0.7 + 0.1 reaches 0.8 despite floating-point
rounding). With all thresholds 0.5 the tier is the median relevance level under the distribution.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from relkd.serving.triton_model import N_TIERS  # TaoSR1 tiers use the served scale: 0 .. 4

TIE_TOL = 1e-9


def _order_index(labels: Sequence[str], order: Sequence[str] | None) -> np.ndarray:
    labels = list(labels)
    order = labels if order is None else list(order)
    if len(labels) < 2:
        raise ValueError(f"tiering needs at least 2 labels, got {labels}")
    if sorted(order) != sorted(labels) or len(set(order)) != len(order):
        raise ValueError(f"order {order} must list every label of {labels} exactly once, most relevant first; "
                         "fix teacher.tiers.order (or leave it None for the dataset's label order)")
    return np.array([labels.index(name) for name in order])


def cumulative_tiers(probs, labels: Sequence[str], order: Sequence[str] | None = None,
                     thresholds: Sequence[float] = (0.5, 0.5, 0.5, 0.5)) -> np.ndarray:
    """The tier (0..4, int64) of each row of `probs` (N, C; columns in `labels` order) by the module rule.

    `order` lists the labels from most to least relevant (None = `labels` as given); `thresholds` is
    ``[t4, t3, t2, t1]``. Rows must be probability distributions (non-negative, summing to 1).
    """
    p = np.asarray(probs, dtype=np.float64)
    idx = _order_index(labels, order)
    if p.ndim != 2 or p.shape[1] != len(idx):
        raise ValueError(f"probs must be (N, {len(idx)}) with one column per label {list(labels)}, got {p.shape}")
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (4,) or not np.all((t >= 0) & (t <= 1)):
        raise ValueError(f"thresholds must be 4 values in [0, 1] ([t4, t3, t2, t1]), got {list(thresholds)}")
    if len(p) and (not np.isfinite(p).all() or (p < 0).any() or np.abs(p.sum(axis=1) - 1).max() > 1e-4):
        bad = int(np.argmax(~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (np.abs(p.sum(axis=1) - 1) > 1e-4)))
        raise ValueError(f"row {bad} of probs is not a distribution ({p[bad].tolist()}); pass softmaxed "
                         "probabilities (relkd.teacher.engine.label_distribution)")
    cum = np.cumsum(p[:, idx], axis=1)
    tiers = np.zeros(len(p), dtype=np.int64)
    # From tier 1 up: a higher tier reached overwrites a lower one, so each row ends at its highest tier.
    for k in range(1, N_TIERS):
        j = min(N_TIERS - 1 - k, len(idx) - 2)
        tiers[cum[:, j] >= t[N_TIERS - 1 - k] - TIE_TOL] = k
    return tiers


def top_score(probs, labels: Sequence[str], order: Sequence[str] | None = None) -> np.ndarray:
    """P(the most relevant label in `order`) per row: the score a tiered ranking sorts by."""
    p = np.asarray(probs, dtype=np.float64)
    return p[:, _order_index(labels, order)[0]]
