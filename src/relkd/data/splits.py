"""Seeded train/valid/test splits by query: no query appears in two splits."""
from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "valid", "test")


def query_key(queries: pd.Series) -> pd.Series:
    """The grouping key of a query: its text, case- and whitespace-folded, so two ids that carry
    the same words still land in the same split."""
    return queries.astype(str).str.casefold().str.split().str.join(" ")


def split_by_query(df: pd.DataFrame, valid: float, test: float, seed: int) -> dict[str, pd.DataFrame]:
    keys = query_key(df["query"])
    uniq = np.array(sorted(keys.unique()))
    rng = np.random.default_rng(seed)
    order = uniq[rng.permutation(len(uniq))]
    n_test = int(round(test * len(order)))
    n_valid = int(round(valid * len(order)))
    part = {q: "test" for q in order[:n_test]}
    part.update({q: "valid" for q in order[n_test:n_test + n_valid]})
    which = keys.map(lambda q: part.get(q, "train"))
    return {s: df[which == s].reset_index(drop=True) for s in SPLITS}
