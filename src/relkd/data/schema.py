"""The canonical pair table every loader returns and every stage reads."""
from __future__ import annotations

import pandas as pd

# One row = one judged (query, title) pair. `label` is a class name; the ordered label set travels
# with the prepared dataset (labels.json), never as a constant in stage code.
COLUMNS = ("pair_id", "query_id", "query", "title", "label", "locale")
REQUIRED = ("query", "title", "label")


class DataError(ValueError):
    """Input data that cannot be used as it is; the message names the value and the fix."""


def require_columns(df: pd.DataFrame, columns, where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; found {list(df.columns)}. "
            "Map them with data.table.columns in params.yaml (canonical name -> your column)."
        )


def canonical(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Fill the optional canonical columns and order them first; extra columns are kept after."""
    require_columns(df, REQUIRED, where)
    df = df.copy()
    if "locale" not in df:
        df["locale"] = "und"
    if "query_id" not in df:
        # Without ids, a query is its exact text: splits group on it.
        df["query_id"] = pd.factorize(df["query"])[0].astype(str)
    if "pair_id" not in df:
        df["pair_id"] = [f"p{i}" for i in range(len(df))]
    for c in ("pair_id", "query_id", "locale"):
        df[c] = df[c].astype(str)
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + extra].reset_index(drop=True)
