"""Typed section of params.yaml `probe` (the keyword probes of relkd.eval.probing, paper Fig. 4)."""
from __future__ import annotations

from pydantic import Field

from relkd.section import Section

class ProbeConfig(Section):
    """Linear probes for rationale keywords on r versus h_cls (paper Fig. 4)."""

    variant: str = Field("lrkd_gat", description="student variant whose r is probed")
    top_n: int = Field(10, ge=1, description="keywords probed (frequent in rationales, absent from the pair)")
    min_count: int = Field(5, ge=1, description="pairs a keyword must occur in")
    n_runs: int = Field(10, ge=2, description="random splits per keyword")
    seed: int = Field(13, description="seed of the splits")
