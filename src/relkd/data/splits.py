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


def balanced_sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """Up to n rows, seeded, taking labels in turn so every class is represented as evenly as the data
    allows (seed sets, conflict search sets and teacher test subsets are small at the embedded scale)."""
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    pools = {lab: list(rng.permutation(idx)) for lab, idx in
             sorted(df.groupby("label").indices.items(), key=lambda kv: str(kv[0]))}
    picked: list[int] = []
    while len(picked) < n:
        for lab in list(pools):
            if pools[lab] and len(picked) < n:
                picked.append(pools[lab].pop())
    return df.iloc[sorted(picked)].reset_index(drop=True)
