"""Typed sections of params.yaml `data`: where the pairs come from (the embedded catalogue, ESCI files, any table),
the split by query and the validation gate's thresholds."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from relkd.section import Section

# The query languages the embedded catalogue writes (its vocabulary per language: relkd.data.catalogue.LANGUAGES).
CATALOGUE_LANGUAGES = ("en", "es", "fr", "pt")

class CatalogueConfig(Section):
    """The embedded, generated e-commerce catalogue (labels by construction)."""

    n_queries: int = Field(200, ge=1, description="distinct shopper queries")
    pairs_per_query: int = Field(4, ge=1, le=12, description="judged titles per query")
    languages: dict[str, float] = Field(
        default_factory=lambda: {"en": 0.6, "es": 0.2, "fr": 0.2},
        description="query language mix (weights, normalised); en, es, fr, pt",
    )
    hard_case_rate: float = Field(
        0.35, ge=0, le=1,
        description="share of pairs built as deliberately hard cases (functional substitutes, "
        "accessories that share the product's name, model numbers one digit apart)",
    )

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(CATALOGUE_LANGUAGES))
        if unknown:
            raise ValueError(f"unknown language(s) {unknown}; choose from {sorted(CATALOGUE_LANGUAGES)}")
        if not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {v}")
        return v


class EsciConfig(Section):
    """The Amazon Shopping Queries (ESCI) files in their official layout."""

    examples: str | None = Field(None, description="path of shopping_queries_dataset_examples.parquet")
    products: str | None = Field(None, description="path of shopping_queries_dataset_products.parquet")
    locales: list[str] = Field(default_factory=lambda: ["us"], description="product_locale values kept")
    version: Literal["small", "large"] = Field("small", description="small_version or large_version subset")


class TableConfig(Section):
    """Any CSV/Parquet file with a column mapping and a label mapping."""

    path: str | None = Field(None, description="CSV (optionally .gz) or Parquet file")
    columns: dict[str, str] = Field(
        default_factory=lambda: {"query": "query", "title": "title", "label": "label"},
        description="canonical name -> column in the file; query, title, label required; "
        "pair_id, query_id, locale optional",
    )
    labels: dict[str, str] | None = Field(None, description="raw label -> class (categorical labels)")
    thresholds: list[tuple[float, str]] | None = Field(
        None,
        description="graded scores -> classes: [[min_score, class], ...]; a score takes the class of "
        "the highest min_score it reaches",
    )

    @model_validator(mode="after")
    def _mapping(self) -> "TableConfig":
        missing = {"query", "title", "label"} - set(self.columns)
        if missing:
            raise ValueError(f"columns must map {sorted(missing)} too")
        if self.labels and self.thresholds:
            raise ValueError("give either labels (categorical) or thresholds (graded), not both")
        return self


class SplitConfig(Section):
    """The split by query (case- and whitespace-folded, seeded): every pair of a query lands in one split."""

    valid: float = Field(0.15, gt=0, lt=1, description="share of queries in the validation split")
    test: float = Field(0.2, gt=0, lt=1, description="share of queries in the test split")
    seed: int = Field(13, description="seed of the split by query")

    @model_validator(mode="after")
    def _room_for_train(self) -> "SplitConfig":
        if self.valid + self.test >= 0.9:
            raise ValueError(f"valid + test = {self.valid + self.test} leaves too little for train")
        return self


class ValidationConfig(Section):
    """Thresholds of the validation gate (great-expectations)."""

    max_query_chars: int = Field(200, ge=1, description="a longer query is rejected (with the reason)")
    max_title_chars: int = Field(500, ge=1, description="a longer title is rejected (with the reason)")
    max_reject_rate: float = Field(
        0.2, ge=0, le=1, description="stop the stage when more than this share of rows is rejected"
    )
    min_rows_per_split: int = Field(1, ge=1, description="the gate fails a split with fewer rows")


class DataConfig(Section):
    """Where the query-title pairs come from, how they are split, and the validation gate."""

    source: Literal["catalogue", "esci", "table"] = Field(
        "catalogue", description="where the pairs come from: the embedded generated catalogue, the ESCI files, or "
        "any table (data.table)")
    seed: int = Field(13, description="seed of the catalogue generator")
    catalogue: CatalogueConfig = CatalogueConfig()
    esci: EsciConfig = EsciConfig()
    table: TableConfig = TableConfig()
    split: SplitConfig = SplitConfig()
    validation: ValidationConfig = ValidationConfig()

    @model_validator(mode="after")
    def _source_has_paths(self) -> "DataConfig":
        if self.source == "esci" and not (self.esci.examples and self.esci.products):
            raise ValueError("source 'esci' needs esci.examples and esci.products paths")
        if self.source == "table" and not self.table.path:
            raise ValueError("source 'table' needs table.path")
        return self
