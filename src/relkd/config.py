"""Typed configuration: params.yaml loaded and validated once, at the edge.

Each stage reads its own section as a typed object. Unknown keys and bad values are errors
that name the key path (for example ``data.catalogue.n_queries``) and the offending value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from relkd.section import ConfigError, Section, format_errors, read_yaml


# ----------------------------------------------------------------------------------------- data
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
        from relkd.data.catalogue import LANGUAGES

        unknown = sorted(set(v) - set(LANGUAGES))
        if unknown:
            raise ValueError(f"unknown language(s) {unknown}; choose from {sorted(LANGUAGES)}")
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
    valid: float = Field(0.15, gt=0, lt=1, description="share of queries in the validation split")
    test: float = Field(0.2, gt=0, lt=1, description="share of queries in the test split")
    seed: int = 13

    @model_validator(mode="after")
    def _room_for_train(self) -> "SplitConfig":
        if self.valid + self.test >= 0.9:
            raise ValueError(f"valid + test = {self.valid + self.test} leaves too little for train")
        return self


class ValidationConfig(Section):
    """Thresholds of the validation gate (great-expectations)."""

    max_query_chars: int = Field(200, ge=1)
    max_title_chars: int = Field(500, ge=1)
    max_reject_rate: float = Field(
        0.2, ge=0, le=1, description="stop the stage when more than this share of rows is rejected"
    )
    min_rows_per_split: int = Field(1, ge=1)


class DataConfig(Section):
    source: Literal["catalogue", "esci", "table"] = "catalogue"
    seed: int = 13
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


# ---------------------------------------------------------------------------------------- embed
class EmbedConfig(Section):
    """The frozen sentence encoder that turns each teacher rationale into e_cot."""

    model: str = Field("pypi:all-MiniLM-L6-v2", description="sentence encoder; paper: BAAI/bge-m3")
    max_length: int = Field(256, ge=8, description="rationale tokens encoded; paper: 1024")
    batch_size: int = Field(32, ge=1)
    normalize: bool = Field(True, description="L2-normalise the vectors (BGE-M3's dense vectors are)")


# ---------------------------------------------------------------------------------------- probe
class ProbeConfig(Section):
    """Linear probes for rationale keywords on r versus h_cls (paper Fig. 4)."""

    variant: str = Field("lrkd_gat", description="student variant whose r is probed")
    top_n: int = Field(10, ge=1, description="keywords probed (frequent in rationales, absent from the pair)")
    min_count: int = Field(5, ge=1, description="pairs a keyword must occur in")
    n_runs: int = Field(10, ge=2, description="random splits per keyword (paper: 10)")
    seed: int = 13


# ------------------------------------------------------------------------------------- tracking
class TrackingConfig(Section):
    experiment: str = Field("relkd", description="MLflow experiment of every stage's run")


# ----------------------------------------------------------------------------------------- root
# Component sections live beside what they configure (like trl's DPOConfig).
from relkd.eval.peers_config import PeersConfig  # noqa: E402
from relkd.serving.config import (AbConfig, ExportConfig, RegistryConfig, ScoreConfig,  # noqa: E402
                                  TritonConfig)
from relkd.student.config import StudentConfig  # noqa: E402
from relkd.teacher.config import TeacherConfig  # noqa: E402


class Params(Section):
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    embed: EmbedConfig = EmbedConfig()
    student: StudentConfig = StudentConfig()
    probe: ProbeConfig = ProbeConfig()
    peers: PeersConfig = PeersConfig()
    registry: RegistryConfig = RegistryConfig()
    export: ExportConfig = ExportConfig()
    triton: TritonConfig = TritonConfig()
    score: ScoreConfig = ScoreConfig()
    ab: AbConfig = AbConfig()
    tracking: TrackingConfig = TrackingConfig()


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping; raise ConfigError naming every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(format_errors(err, "invalid params:")) from None


def merge(base: dict, overlay: dict) -> dict:
    """Deep-merge `overlay` into a copy of `base` (mappings merge key by key; other values replace)."""
    out = dict(base)
    for k, v in (overlay or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(read_yaml(path, "params file", " (run from the repository root or pass --params)"))
