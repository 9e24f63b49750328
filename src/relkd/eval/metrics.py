"""Classification metrics (accuracy, macro-F1, per-class scores, confusion matrix), overall and per group."""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

UNPARSEABLE = -1  # code of a prediction that is not in the label set (None, or text the parser rejected)


def encode(values: Sequence, labels: Sequence[Hashable], *, what: str, allow_unparseable: bool) -> np.ndarray:
    """Map label values to their index in `labels`. A value outside the label set becomes UNPARSEABLE
    when `allow_unparseable` (predictions: never guessed, always wrong); otherwise it is an error (gold)."""
    index = {lab: i for i, lab in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError(f"label set {list(labels)} has duplicates; pass each class once")
    codes = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        try:
            code = index.get(v, UNPARSEABLE)
        except TypeError:  # unhashable junk from a parser is simply not a label
            code = UNPARSEABLE
        if code == UNPARSEABLE and not allow_unparseable:
            raise ValueError(f"{what}[{i}] = {v!r} is not in the label set {list(labels)}; "
                             "fix the data or pass the dataset's label set")
        codes[i] = code
    return codes


def check_lengths(**arrays) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"lengths differ: {lengths}; pass one value per example to each")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("no examples to score (empty input)")
    return n


def macro_f1_from_codes(t: np.ndarray, p: np.ndarray, n_classes: int) -> float:
    """Macro-F1 over all `n_classes` from encoded labels; equals sklearn's f1_score(average="macro",
    zero_division=0) and is fast enough to call in a bootstrap loop."""
    tp = np.bincount(t[p == t], minlength=n_classes)
    true_count = np.bincount(t, minlength=n_classes)
    pred_count = np.bincount(p[p >= 0], minlength=n_classes)
    denom = true_count + pred_count  # = 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros(n_classes), where=denom > 0)
    return float(f1.mean())


def macro_f1(y_true: Sequence, y_pred: Sequence, labels: Sequence[Hashable]) -> float:
    """Macro-F1 over every class of `labels`; a prediction outside them (None, unparseable) counts as wrong."""
    check_lengths(y_true=y_true, y_pred=y_pred)
    t = encode(y_true, labels, what="y_true", allow_unparseable=False)
    return macro_f1_from_codes(t, encode(y_pred, labels, what="y_pred", allow_unparseable=True), len(labels))


def classification_report(y_true: Sequence, y_pred: Sequence, labels: Sequence[Hashable]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    A prediction outside `labels` (None, unparseable text) counts as wrong: it is a false negative
    for its gold class and a false positive for no class. The confusion matrix is C x C in label
    order (rows = gold, columns = predicted); unparseable predictions are counted per gold class in
    ``per_class[label]["unparseable"]`` so each row plus that count sums to the class's support.
    """
    n = check_lengths(y_true=y_true, y_pred=y_pred)
    labels = list(labels)
    t = encode(y_true, labels, what="y_true", allow_unparseable=False)
    p = encode(y_pred, labels, what="y_pred", allow_unparseable=True)
    ids = list(range(len(labels)))
    prec, rec, f1, support = precision_recall_fscore_support(t, p, labels=ids, zero_division=0)
    cm = confusion_matrix(t, p, labels=ids)
    unparseable = np.bincount(t[p == UNPARSEABLE], minlength=len(labels))
    per_class = {
        lab: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
              "support": int(support[i]), "unparseable": int(unparseable[i])}
        for i, lab in enumerate(labels)
    }
    n_unparseable = int((p == UNPARSEABLE).sum())
    return {
        "n": n,
        "accuracy": float(accuracy_score(t, p)),
        "macro_f1": macro_f1_from_codes(t, p, len(labels)),
        "n_unparseable": n_unparseable,
        "unparseable_rate": n_unparseable / n,
        "labels": labels,
        "per_class": per_class,
        "confusion": cm.astype(int).tolist(),
    }


def per_group(y_true: Sequence, y_pred: Sequence, groups: Sequence[Hashable],
              labels: Sequence[Hashable]) -> dict:
    """classification_report for each group (e.g. per locale), keyed by group in sorted order.
    Every group is scored over the full label set, so macro-F1 stays comparable across groups."""
    check_lengths(y_true=y_true, y_pred=y_pred, groups=groups)
    g = np.asarray([str(v) for v in groups], dtype=object)
    yt, yp = list(y_true), list(y_pred)
    out = {}
    for key in sorted(set(g)):
        idx = np.flatnonzero(g == key)
        out[key] = classification_report([yt[i] for i in idx], [yp[i] for i in idx], labels)
    return out


# --------------------------------------------------------------------------------------- calibration
ECE_BINS = 15  # one binning for every ECE the project reports (metrics/export.json and the reliability plots)


def reliability_rows(probs, y_true: Sequence, n_bins: int = ECE_BINS,
                     labels: Sequence[Hashable] | None = None) -> list[dict]:
    """Reliability-diagram data: equal-width bins of top-class confidence, each with its count,
    mean confidence and accuracy (None for an empty bin). Counts sum to the number of examples.

    `probs` is (n, C) class probabilities; `y_true` holds class indices, or label values when
    `labels` (the ordered label set matching the columns of `probs`) is given.
    """
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[0] != len(y_true):
        raise ValueError(f"probs must be (n, C) with n = len(y_true) = {len(y_true)}, got shape {p.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if labels is not None:
        index = {lab: i for i, lab in enumerate(labels)}
        missing = [v for v in y_true if v not in index]
        if missing:
            raise ValueError(f"y_true value {missing[0]!r} is not in the label set {list(labels)}")
        t = np.array([index[v] for v in y_true], dtype=int)
    else:
        t = np.asarray(y_true, dtype=int)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == t
    # confidence 1.0 belongs in the last bin, not a bin of its own
    bins = np.clip(np.floor(conf * n_bins).astype(int), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = bins == b
        k = int(sel.sum())
        rows.append({"bin": b, "low": b / n_bins, "high": (b + 1) / n_bins, "count": k,
                     "confidence": float(conf[sel].mean()) if k else None,
                     "accuracy": float(correct[sel].mean()) if k else None})
    return rows


def calibration_error(rows: Sequence[Mapping]) -> float:
    """Expected calibration error from reliability_rows: count-weighted |accuracy - confidence|."""
    n = sum(r["count"] for r in rows)
    if n == 0:
        raise ValueError("reliability rows hold no examples")
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]) / n)


def expected_calibration_error(probs, y_true: Sequence, n_bins: int = ECE_BINS,
                               labels: Sequence[Hashable] | None = None) -> float:
    """Top-label ECE: |accuracy - confidence| per equal-width confidence bin, weighted by the bin's share; the
    same bins as the reliability diagram (reliability_rows), so a plot's ECE is the reported one."""
    return calibration_error(reliability_rows(probs, y_true, n_bins, labels))
