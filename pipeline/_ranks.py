"""The stages that train under `accelerate launch`: which process is rank 0, which alone tracks and writes."""
from __future__ import annotations

import contextlib
import os


def on_main_process() -> bool:
    """True in the process that tracks and writes a stage's outputs (rank 0 of `accelerate launch` / torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


def main_process_run(stage: str, params: dict, **kwargs):
    """The stage's MLflow run (relkd.tracking.stage_run) on the main process; nothing on the other ranks."""
    from relkd.tracking import stage_run

    return stage_run(stage, params, **kwargs) if on_main_process() else contextlib.nullcontext()
