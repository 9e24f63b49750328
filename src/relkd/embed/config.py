"""Typed section of params.yaml `embed` (the rationale encoder of relkd.embed)."""
from __future__ import annotations

from pydantic import Field

from relkd.section import Section

class EmbedConfig(Section):
    """The frozen sentence encoder that turns each teacher rationale into e_cot."""

    model: str = Field("pypi:all-MiniLM-L6-v2", description="the frozen sentence encoder (a relkd.models name or hub id)")
    max_length: int = Field(256, ge=8, description="rationale tokens encoded")
    batch_size: int = Field(32, ge=1, description="rationales per encoder batch")
    normalize: bool = Field(True, description="L2-normalise the vectors (BGE-M3's dense vectors are)")
