"""What every stage module shares: its command line, reading params.yaml, and the files stages hand each other."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import click

from relkd.config import Params, load_params


def stage_command(description: str, call: Callable[[SimpleNamespace], None], *paths: tuple[str, str],
                  options: list[click.Option] = ()) -> click.Command:
    """The stage's click command (what `python -m pipeline.<stage>` and `relkd stage <stage>` run): --params
    plus one required option per (name, help) path, then `options`; `call` gets the parsed values as
    attributes (dashes as underscores). Paths come from dvc.yaml's cmd, the one place that also declares them
    as deps and outs."""
    params = [click.Option(["--params"], default="params.yaml", show_default=True, help="params file"),
              *(click.Option([f"--{name}"], required=True, help=help_) for name, help_ in paths), *options]
    return click.Command(None, callback=lambda **values: call(SimpleNamespace(**values)), params=params,
                         help=description, context_settings={"help_option_names": ["-h", "--help"]})


def setup(params_path: str) -> Params:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    _share_cores()
    return load_params(params_path)


def _share_cores() -> None:
    """`accelerate launch` gives every process it starts OMP_NUM_THREADS=1 unless told otherwise (right for one
    process per GPU); on a CPU host that would leave a lone training process one core, so the host's cores are
    shared among the launched processes instead."""
    if "ACCELERATE_MIXED_PRECISION" not in os.environ or os.environ.get("OMP_NUM_THREADS") != "1":
        return
    import torch

    if not torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def read_split(prepared: str, name: str):
    import pandas as pd

    return pd.read_parquet(Path(prepared) / f"{name}.parquet")


def read_labels(prepared: str) -> tuple[str, ...]:
    """The ordered label set travels with the prepared dataset (one place per fact)."""
    return tuple(json.loads((Path(prepared) / "labels.json").read_text(encoding="utf-8"))["labels"])


# ------------------------------------------------------------------ layouts shared by several stages
def seed_dir(root, seed: int) -> Path:
    """Where one training seed of a model lives: <root>/seed<N> (students and peers)."""
    return Path(root) / f"seed{seed}"


def served_seed(params: Params) -> int:
    """The seed whose student is registered, probed and served: the first of student.seeds."""
    return params.student.seeds[0]


def write_embeddings(folder, vectors, meta: dict) -> None:
    """The embed stage's output: rationales.npy (one e_cot per rationale) and meta.json (encoder, pair ids)."""
    import numpy as np

    from relkd.io import atomic_path, write_json

    Path(folder).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(folder) / "rationales.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, vectors)
    write_json(Path(folder) / "meta.json", meta)


def read_embeddings(folder):
    """(vectors, meta) as write_embeddings wrote them."""
    import numpy as np

    return np.load(Path(folder) / "rationales.npy"), json.loads((Path(folder) / "meta.json").read_text(encoding="utf-8"))


def training_frame(prepared: str, rationales: str, embeddings: str, rows: str = "all"):
    """The training split with each pair's rationale and e_cot aligned. ``rows="all"``: every training pair,
    in its natural class distribution; a pair the teacher did not annotate has rationale None and a NaN
    e_cot (no guidance target). ``rows="annotated"``: only the annotated pairs."""
    import numpy as np

    from relkd.io import read_jsonl

    train = read_split(prepared, "train")
    notes = {r["pair_id"]: r["rationale"] for r in read_jsonl(rationales)}
    vectors, meta = read_embeddings(embeddings)
    row_of = {pid: i for i, pid in enumerate(meta["pair_ids"])}
    if rows == "annotated":
        train = train[train["pair_id"].isin(notes) & train["pair_id"].isin(row_of)].reset_index(drop=True)
    missing = np.full(vectors.shape[1], np.nan, dtype=np.float32)
    emb = np.stack([vectors[row_of[p]] if p in row_of else missing for p in train["pair_id"]]) if len(train) \
        else np.zeros((0, vectors.shape[1]), np.float32)
    return train, [notes.get(p) for p in train["pair_id"]], emb, meta
