"""What the students learn from, aligned with the training split: each pair's rationale and its e_cot (the
frozen encoder's embedding), and which of them guide (``student.train_rows``, ``student.rationale_rows``)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def training_frame(train, records: Sequence[dict], vectors: np.ndarray, pair_ids: Sequence[str], rows: str = "all"):
    """(train, notes, emb): the training split with each pair's rationale (from the annotate `records`) and e_cot
    (row i of `vectors` belongs to ``pair_ids[i]``). ``rows="all"``: every training pair, in its natural class
    distribution; a pair the teacher did not annotate has rationale None and a NaN e_cot (no guidance target).
    ``rows="annotated"``: only the annotated pairs."""
    if rows not in ("all", "annotated"):
        raise ValueError(f"student.train_rows must be 'all' or 'annotated', got {rows!r}")
    notes = {r["pair_id"]: r["rationale"] for r in records}
    row_of = {pid: i for i, pid in enumerate(pair_ids)}
    if rows == "annotated":
        train = train[train["pair_id"].isin(notes) & train["pair_id"].isin(row_of)].reset_index(drop=True)
    missing = np.full(vectors.shape[1], np.nan, dtype=np.float32)
    emb = np.stack([vectors[row_of[p]] if p in row_of else missing for p in train["pair_id"]]) if len(train) \
        else np.zeros((0, vectors.shape[1]), np.float32)
    return train, [notes.get(p) for p in train["pair_id"]], emb


def guiding_rationales(train, notes: list, emb: np.ndarray, records: Sequence[dict], which: str = "all"):
    """The rationales (and e_cot rows) the students learn from, aligned with ``train``: all of them, or with
    ``which="agreeing"`` only those whose teacher label equals the gold label (in the annotate `records`); the
    others become None / NaN, as for a pair the teacher did not annotate."""
    if which == "all":
        return notes, emb
    if which != "agreeing":
        raise ValueError(f"student.rationale_rows must be 'all' or 'agreeing', got {which!r}")
    agree = {r["pair_id"] for r in records if r.get("label") is not None and r.get("label") == r.get("gold")}
    keep = train["pair_id"].isin(agree).to_numpy()
    emb = np.where(keep[:, None], emb, np.float32(np.nan)).astype(emb.dtype)
    return [n if k else None for n, k in zip(notes, keep)], emb
