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
