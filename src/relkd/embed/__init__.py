"""Embed teacher rationales once with a frozen sentence encoder: the e_cot targets of LRKD's guidance loss.

The paper encodes each chain of thought with BGE-M3 (1024-d, max 1024 tokens); the embedded default
is all-MiniLM-L6-v2 (384-d), the only sentence encoder that installs from PyPI here. Store
:func:`encoder_info` next to the vectors: the student's extractor width (d_out) must equal ``dim``.
"""
from __future__ import annotations

import numpy as np


def _load(model_name: str, max_length: int, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    from relkd.models import resolve

    model = SentenceTransformer(resolve(model_name), device=device)
    model.eval()
    model.max_seq_length = int(max_length)
    return model


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def encode_rationales(texts, model_name: str = "pypi:all-MiniLM-L6-v2", max_length: int = 256,
                      batch_size: int = 32, normalize: bool = True) -> np.ndarray:
    """One float32 vector per rationale, in order; (len(texts), dim). ``normalize`` L2-normalises each
    vector (BGE-M3's dense vectors are used normalised)."""
    texts = [str(t) for t in texts]
    model = _load(model_name, max_length, _device())
    if not texts:
        return np.zeros((0, _dim(model)), dtype=np.float32)
    vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True,
                           normalize_embeddings=normalize)
    return np.asarray(vectors, dtype=np.float32)


def _dim(model) -> int:
    dim = model.get_embedding_dimension()
    if dim is None:
        raise ValueError("the sentence encoder does not report its embedding width; use a model with a "
                         "pooling layer (a sentence-transformers folder)")
    return int(dim)


def encoder_info(model_name: str = "pypi:all-MiniLM-L6-v2", max_length: int = 256) -> dict:
    """What to store beside the vectors: encoder name, max_length and width."""
    model = _load(model_name, max_length, "cpu")
    return {"name": model_name, "max_length": int(model.max_seq_length), "dim": _dim(model)}


def separator(model_name: str, max_length: int = 256) -> str:
    """The encoder's separator token with a space either side (' [SEP] ' for BERT-family encoders, ' </s> ' for
    XLM-R ones such as BGE-M3): what LRKD-Combined joins the single-perspective rationales with by default."""
    token = getattr(_load(model_name, max_length, "cpu").tokenizer, "sep_token", None)
    if not token:
        raise ValueError(f"encoder {model_name!r} has no separator token; set student.combined_separator")
    return f" {token} "


def combined_rationales(per_teacher, sep: str) -> dict[str, str]:
    """LRKD-Combined's texts (paper appendix D.2): for every pair each teacher annotated, the teachers' rationales
    in the given order joined by `sep`. `per_teacher` is a sequence of {pair_id: rationale}, one per teacher."""
    if len(per_teacher) < 2:
        raise ValueError(f"combining needs at least 2 teachers' rationales, got {len(per_teacher)}")
    shared = set(per_teacher[0]).intersection(*per_teacher[1:])
    return {pid: sep.join(" ".join(str(t[pid]).split()) for t in per_teacher)
            for pid in per_teacher[0] if pid in shared}

