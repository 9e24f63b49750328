"""Train a tiny student on an easy fixed task; run it plainly or under torchrun (tests/test_student_trainer.py).

Usage: python tests/ddp_worker.py RESULT.json
       torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py RESULT.json
The main process writes {distributed_type, num_processes, history} to RESULT.json; every rank writes
the checksum of its final weights to RESULT.json.rankN.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd

from relkd.student.config import StudentConfig, VariantConfig
from relkd.student.trainer import train_student

LABELS = ("match", "mismatch")
NOUNS = ["shoe", "lamp", "phone", "chair", "watch", "bottle", "jacket", "guitar"]
OTHER = ["kettle", "blender", "toaster", "heater"]
ADJS = ["red", "small", "new", "black", "cheap", "wooden"]


def dataset(n: int, offset: int) -> pd.DataFrame:
    """Relevant titles repeat the query's noun; irrelevant ones name a kitchen appliance instead."""
    rows = []
    for i in range(offset, offset + n):
        noun, adj = NOUNS[i % len(NOUNS)], ADJS[(i // 2) % len(ADJS)]
        y = i % 2
        title = f"{adj} {noun} for sale" if y == 0 else f"{adj} {OTHER[(i // 2) % len(OTHER)]} for sale"
        rows.append({"query": f"{adj} {noun}", "title": title, "label": LABELS[y]})
    return pd.DataFrame(rows)


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    train, valid = dataset(64, 0), dataset(16, 1000)
    emb = np.random.default_rng(0).normal(size=(len(train), 32)).astype(np.float32)
    # The same global batch (8) for any number of processes, so runs take the same number of steps.
    cfg = StudentConfig(backbone="tiny:bert", max_length=24, epochs=4, batch_size=8 // world, lr=1e-3,
                        warmup_ratio=0.0)
    student, _, history = train_student(train, valid, LABELS, emb, None, VariantConfig(extractor="gat"), cfg,
                                        seed=7)
    # After DDP every rank must hold the same weights (gradients were all-reduced each step).
    checksum = float(sum(p.double().abs().sum() for p in student.parameters()))
    rank = int(os.environ.get("RANK", "0"))
    with open(f"{out}.rank{rank}", "w") as fh:
        json.dump({"checksum": checksum}, fh)
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"distributed_type": history[-1]["distributed_type"],
                       "num_processes": history[-1]["num_processes"], "history": history}, fh)


if __name__ == "__main__":
    main(sys.argv[1])
