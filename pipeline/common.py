"""What every stage module shares: reading params.yaml and the standard stage arguments."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import logging

from relkd.config import Params, load_params


def stage_args(description: str, *paths: tuple[str, str]) -> argparse.ArgumentParser:
    """An argument parser with --params plus one required option per (name, help) path.

    Paths come from dvc.yaml's cmd, the one place that also declares them as deps and outs."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, help_ in paths:
        ap.add_argument(f"--{name}", required=True, help=help_)
    return ap


def setup(params_path: str) -> Params:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return load_params(params_path)


def read_split(prepared: str, name: str):
    import pandas as pd

    return pd.read_parquet(Path(prepared) / f"{name}.parquet")


def read_labels(prepared: str) -> tuple[str, ...]:
    """The ordered label set travels with the prepared dataset (one place per fact)."""
    return tuple(json.loads((Path(prepared) / "labels.json").read_text(encoding="utf-8"))["labels"])

