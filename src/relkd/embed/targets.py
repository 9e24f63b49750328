"""The embed stages' computation: the guidance targets (e_cot) of a set of annotate records, what is stored beside
them, and whether they carry the label."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from relkd.embed import encode_rationales, encoder_info
from relkd.embed.config import EmbedConfig
from relkd.eval.config import EcotProbeConfig


def embed_records(records: Sequence[dict], cfg: EmbedConfig, probe: EcotProbeConfig) -> tuple[np.ndarray, dict, dict]:
    """What the embed stages compute from annotate records ({pair_id, rationale, gold, ...}): e_cot for every
    rationale, the meta stored beside the vectors (the encoder's identity: the student's extractor width must match
    its ``dim``; the pair ids in row order) and the metrics: a linear probe from e_cot to the gold label, which says
    whether the guidance target carries the label at all before any student trains on it."""
    from relkd.eval.probing import label_probe

    vectors = encode_rationales([r["rationale"] for r in records], cfg.model, cfg.max_length, cfg.batch_size,
                                cfg.normalize)
    meta = {**encoder_info(cfg.model, cfg.max_length), "normalize": cfg.normalize, "n": len(records),
            "pair_ids": [r["pair_id"] for r in records]}
    metrics = {"n": len(records), "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0,
               "e_cot_probe": label_probe(vectors, [r["gold"] for r in records], probe.folds, probe.seed)}
    return vectors, meta, metrics
