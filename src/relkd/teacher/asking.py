"""How a teacher is asked: samples per prompt, decoding, seed, batch size, and how its label is decided."""
from __future__ import annotations

from dataclasses import dataclass, replace

from relkd.teacher.config import SamplingConfig, TeacherConfig


@dataclass(frozen=True)
class Asking:
    """How a teacher is asked: ``n`` samples per prompt decoded with ``sampling`` from ``seed``, in batches of
    ``batch_size`` prompts; ``decision`` ('parse' or 'score') picks each record's label; ``scored`` says whether
    the labels' likelihoods are scored too (TeacherConfig.scores_labels)."""

    n: int
    sampling: SamplingConfig
    seed: int
    decision: str
    batch_size: int
    scored: bool = True

    @classmethod
    def of(cls, cfg: TeacherConfig, n: int = 1, greedy: bool = False, batch_size: int | None = None) -> "Asking":
        """The teacher section's way of asking: its sampling (greedy on request), seed, decision and scoring."""
        sampling = cfg.sampling.model_copy(update={"temperature": 0.0}) if greedy else cfg.sampling
        return cls(n, sampling, cfg.sampling.seed, cfg.label_decision, batch_size or cfg.batch_size,
                   cfg.scores_labels)

    def greedy(self) -> "Asking":
        return replace(self, sampling=self.sampling.model_copy(update={"temperature": 0.0}))
