"""Teacher SFT on a tiny Llama, run plainly, under torchrun, or killed and rerun (tests/test_teacher_training.py).

Usage: python tests/teacher_train_worker.py OUT [--grad-accum N] [--save-steps N] [--checkpoints DIR] [--sleep S]
Writes the adapter to OUT/adapter and the metrics (rank 0) to OUT/metrics.json. --sleep waits S seconds after every
optimiser step, so a test can kill the run between two checkpoints.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import TrainerCallback

from relkd.models import resolve
from relkd.teacher.config import SFTSection
from relkd.teacher.trainers import sft

HEADS = ["You judge relevance. Read the query and the title, think, then answer.\n",
         "A shopper's view: will this product serve the query's purpose? Think, then answer.\n"]
LABELS = ["exact", "substitute", "irrelevant"]
EXAMPLES = [{"prompt": f"{HEADS[i % 2]}Query: item {i}\nTitle: product {i} in blue\n",
             "completion": f"The title names item {i}. Label: {LABELS[i % 3]}", "group": f"p{i % 2}"}
            for i in range(16)]


class Sleep(TrainerCallback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--save-steps", type=int, default=None)
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--sleep", type=float, default=0.0)
    a = ap.parse_args()
    cfg = SFTSection(batch_size=a.batch_size, grad_accum=a.grad_accum, epochs=2, lr=5e-3, dropout=a.dropout,
                     warmup_ratio=0.25, logging_steps=1, save_steps=a.save_steps, seed=3)
    metrics = sft(resolve("tiny:llama"), EXAMPLES, os.path.join(a.out, "adapter"), cfg, checkpoints=a.checkpoints,
                  callbacks=[Sleep(a.sleep)] if a.sleep else [])
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(a.out, "metrics.json"), "w") as fh:
            json.dump(metrics, fh)


if __name__ == "__main__":
    sys.exit(main())
