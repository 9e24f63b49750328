"""Loader for any CSV/Parquet file of judged pairs, through a column mapping and a label mapping."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from relkd.data.schema import DataError, canonical, require_columns


def read_table(path: str | Path) -> pd.DataFrame:
    """Read CSV (plain or .gz) or Parquet. Bad UTF-8 bytes survive as lone surrogates, so the
    screening step can reject exactly those rows instead of the whole file failing to decode."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} not found; set data.table.path")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    # dtype=object: pandas' default string dtype (Arrow) cannot hold the surrogates.
    return pd.read_csv(path, dtype=object, keep_default_na=False, encoding="utf-8",
                       encoding_errors="surrogateescape")


def graded_to_class(scores: pd.Series, thresholds) -> pd.Series:
    """Map graded scores to classes: each score takes the class of the highest min_score it reaches.

    A score below every threshold, or not a number, maps to NA (rejected later with its value)."""
    ordered = sorted(thresholds, key=lambda t: t[0], reverse=True)
    values = pd.to_numeric(scores, errors="coerce")
    out = pd.Series(pd.NA, index=scores.index, dtype="object")
    for min_score, cls in reversed(ordered):  # ascending, so higher thresholds overwrite
        out[values >= min_score] = cls
    return out


def label_set(labels: dict | None, thresholds) -> tuple[str, ...] | None:
    """The classes a mapping can produce, in the order given (None: take them from the data)."""
    if thresholds:
        return tuple(dict.fromkeys(c for _, c in sorted(thresholds, key=lambda t: t[0], reverse=True)))
    if labels:
        return tuple(dict.fromkeys(labels.values()))
    return None


def map_table(raw: pd.DataFrame, columns: dict[str, str], labels=None, thresholds=None) -> pd.DataFrame:
    """Rename mapped columns to canonical names and map raw labels to classes.

    The raw label is kept in `raw_label`; a raw label the mapping does not know becomes NA in
    `label`, and screening rejects the row naming that value.
    """
    require_columns(raw, list(columns.values()), "table")
    df = pd.DataFrame({canon: raw[col] for canon, col in columns.items()})
    df["raw_label"] = df["label"].astype(str)
    if thresholds:
        df["label"] = graded_to_class(df["label"], thresholds)
    elif labels:
        df["label"] = df["raw_label"].map({str(k): v for k, v in labels.items()})
    for c in ("query", "title"):  # object dtype keeps undecodable bytes (surrogates) for screening
        df[c] = pd.Series(["" if pd.isna(v) else str(v) for v in df[c]], index=df.index, dtype=object)
    return canonical(df, "table")


def load_table(path, columns: dict[str, str], labels=None, thresholds=None) -> pd.DataFrame:
    if not columns:
        raise DataError("data.table.columns is empty; map at least query, title and label")
    return map_table(read_table(path), columns, labels, thresholds)
