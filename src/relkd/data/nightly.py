"""The embedded nightly batch: fresh catalogue pairs to score, a labelled share, and a few broken rows."""
from __future__ import annotations

import numpy as np
import pandas as pd

from relkd.data.catalogue import generate_catalogue
from relkd.data.config import CatalogueConfig


def nightly_batch(cfg: CatalogueConfig, seed: int, n_rows: int, labelled_share: float, bad_rows: int) -> pd.DataFrame:
    """`n_rows` pairs (id, query, title, locale, label) from the generator under another seed.

    Only `labelled_share` of rows keep their label (the rest are blank, as in production where a few
    judged rows ride along); `bad_rows` rows are broken on purpose (empty title, blank query, an
    over-long title) so the scoring path shows where such rows go.
    """
    per_query = cfg.pairs_per_query
    gen = generate_catalogue(cfg.model_copy(update={"n_queries": max(1, -(-n_rows // per_query))}), seed)
    df = gen.iloc[:n_rows][["pair_id", "query", "title", "locale", "label"]].rename(columns={"pair_id": "id"})
    df["id"] = [f"n{seed}-{i:06d}" for i in range(len(df))]
    rng = np.random.default_rng(seed)
    df["label"] = df["label"].where(rng.random(len(df)) < labelled_share, "")
    breakers = [("title", ""), ("query", "   "), ("title", "x" * 3000)]
    for i, row in enumerate(rng.choice(len(df), size=min(bad_rows, len(df)), replace=False)):
        col, value = breakers[i % len(breakers)]
        df.iloc[row, df.columns.get_loc(col)] = value
    return df.reset_index(drop=True)
