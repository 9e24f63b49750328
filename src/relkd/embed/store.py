"""The embed stage's output on disk: rationales.npy (one e_cot per rationale, in pair order) and meta.json (the
encoder's name, max length and width, and the pair ids in row order)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from relkd.io import atomic_path, write_json


def write_embeddings(folder, vectors: np.ndarray, meta: dict) -> None:
    """Write `vectors` and `meta` (with ``pair_ids``, one per row) into `folder`, each file atomically."""
    if len(meta.get("pair_ids", ())) != len(vectors):
        raise ValueError(f"meta.pair_ids has {len(meta.get('pair_ids', ()))} ids for {len(vectors)} vectors")
    Path(folder).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(folder) / "rationales.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, vectors)
    write_json(Path(folder) / "meta.json", meta)


def read_embeddings(folder) -> tuple[np.ndarray, dict]:
    """(vectors, meta) as :func:`write_embeddings` wrote them."""
    meta = json.loads((Path(folder) / "meta.json").read_text(encoding="utf-8"))
    return np.load(Path(folder) / "rationales.npy"), meta
