"""Loads the configured data source as one canonical frame and its ordered label set."""
from __future__ import annotations

import pandas as pd

from relkd.data.config import DataConfig


def load_dataset(cfg: DataConfig) -> tuple[pd.DataFrame, tuple[str, ...]]:
    if cfg.source == "catalogue":
        from relkd.data.catalogue import LABELS, generate_catalogue

        return generate_catalogue(cfg.catalogue, cfg.seed), tuple(LABELS)
    if cfg.source == "esci":
        from relkd.data.esci import LABELS, load_esci

        return load_esci(cfg.esci.examples, cfg.esci.products, cfg.esci.locales, cfg.esci.version), LABELS
    from relkd.data.table import label_set, load_table

    t = cfg.table
    df = load_table(t.path, t.columns, t.labels, t.thresholds)
    labels = label_set(t.labels, t.thresholds)
    if labels is None:  # categorical labels used as they are: the set is what the file holds
        labels = tuple(sorted(df["label"].dropna().astype(str).unique()))
    return df, labels
