"""Loader for the Amazon Shopping Queries (ESCI) dataset in its official file layout."""
from __future__ import annotations

import pandas as pd

from relkd.data.schema import DataError, canonical, require_columns

# Official single-letter labels and the class names the project's prompts and reports use.
ESCI_LABELS = {"E": "exact", "S": "substitute", "C": "complement", "I": "irrelevant"}
LABELS = tuple(ESCI_LABELS.values())

EXAMPLE_COLUMNS = ("example_id", "query", "query_id", "product_id", "product_locale", "esci_label",
                   "small_version", "large_version")
PRODUCT_COLUMNS = ("product_id", "product_locale", "product_title")


def _read(path: str) -> pd.DataFrame:
    if str(path).endswith((".jsonl", ".json")):
        return pd.read_json(path, lines=str(path).endswith(".jsonl"))
    return pd.read_parquet(path)


def join_esci(examples: pd.DataFrame, products: pd.DataFrame, locales, version: str) -> pd.DataFrame:
    """Join examples to products on (product_locale, product_id), keep `locales` and the version subset.

    The raw letter label stays in `esci_label`; `label` holds the class name. Examples whose product
    is missing from the products table keep an empty title, so the screening step rejects them with
    a reason instead of silently dropping them.
    """
    require_columns(examples, EXAMPLE_COLUMNS, "ESCI examples")
    require_columns(products, PRODUCT_COLUMNS, "ESCI products")
    flag = f"{version}_version"
    ex = examples[examples["product_locale"].isin(list(locales)) & (examples[flag] == 1)]
    if ex.empty:
        found = sorted(examples["product_locale"].unique())
        raise DataError(f"ESCI: no examples for locales {list(locales)} in the {version} version; "
                        f"locales present: {found}. Set data.esci.locales / data.esci.version.")
    keep = [c for c in ("product_id", "product_locale", "product_title", "product_brand", "product_color")
            if c in products.columns]
    merged = ex.merge(products[keep].drop_duplicates(["product_locale", "product_id"]),
                      on=["product_locale", "product_id"], how="left", validate="many_to_one")
    out = pd.DataFrame({
        "pair_id": "esci-" + merged["example_id"].astype(str),
        "query_id": merged["product_locale"] + "-" + merged["query_id"].astype(str),
        "query": merged["query"],
        "title": merged["product_title"].fillna(""),
        "label": merged["esci_label"].map(ESCI_LABELS).fillna(merged["esci_label"]),
        "locale": merged["product_locale"],
        "product_id": merged["product_id"],
        "esci_label": merged["esci_label"],
    })
    return canonical(out, "ESCI")


def load_esci(examples_path: str, products_path: str, locales=("us",), version: str = "small") -> pd.DataFrame:
    """Read the examples parquet and products parquet (or the products JSONL of the sample app)."""
    products = _read(products_path)
    if "fields" in products.columns:  # the public sample app's document layout: {"fields": {...}}
        fields = pd.json_normalize(products["fields"])
        products = pd.DataFrame({
            "product_id": fields["id"], "product_locale": fields["locale"], "product_title": fields["title"],
            "product_brand": fields.get("brand"), "product_color": fields.get("color"),
        })
    return join_esci(_read(examples_path), products, locales, version)
