"""Typed sections of the evaluation: the peer rows every quality table carries (majority, lexical models,
sentence-transformers' CrossEncoder), the embed stage's e_cot label probe, and the keyword probes (paper Fig. 4)."""
from __future__ import annotations

from pydantic import Field

from relkd.section import Section


class CrossEncoderPeerConfig(Section):
    """sentence-transformers' CrossEncoder trained by its own CrossEncoderTrainer with its CrossEntropyLoss.

    It shares the students' backbone, input length and training rows (student.backbone,
    student.max_length, the train split); the recipe below is its own, not the students'."""

    epochs: int = Field(3, ge=1, description="passes over the train split")
    batch_size: int = Field(32, ge=1, description="pairs per step")
    lr: float = Field(5.0e-5, gt=0, description="peak learning rate (CrossEncoderTrainingArguments' default)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="linear warm-up share of the steps "
                                "(sentence-transformers' training examples)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (the trainer's default)")


class LexicalPeerConfig(Section):
    """Lexical features of (query, title): token overlap, TF-IDF cosine, BM25, number matches, lengths."""

    C: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic regression (scikit-learn's default)")
    max_iter: int = Field(5000, ge=100, description="solver iterations of the logistic regression")


class EcotProbeConfig(Section):
    """The embed stage's linear probe from e_cot to the gold label (can the guidance target carry the label?)."""

    folds: int = Field(5, ge=2, description="stratified folds (fewer when the smallest class has fewer rows)")
    seed: int = Field(13, description="seed of the folds")


class PeersConfig(Section):
    """The rows every student table carries, trained on the students' rows (the train split)."""

    cross_encoder: CrossEncoderPeerConfig = CrossEncoderPeerConfig()
    lexical: LexicalPeerConfig = LexicalPeerConfig()
    e_cot_probe: EcotProbeConfig = EcotProbeConfig()


class ProbeConfig(Section):
    """Linear probes for rationale keywords on r versus h_cls (paper Fig. 4)."""

    variant: str = Field("lrkd_gat", description="student variant whose r is probed")
    top_n: int = Field(10, ge=1, description="keywords probed (frequent in rationales, absent from the pair)")
    min_count: int = Field(5, ge=1, description="pairs a keyword must occur in")
    n_runs: int = Field(10, ge=2, description="random splits per keyword")
    seed: int = Field(13, description="seed of the splits")
