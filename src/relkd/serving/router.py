"""Writes the A/B router into the Triton model repository, beside the student it routes to.

``repo_dir/<router_name>/config.pbtxt`` (the student's inputs plus optional UNIT_ID and EXPERIMENT; the
student's outputs plus ARM and VERSION) and ``repo_dir/<router_name>/1/`` with model.py (router_model),
router.json (what it routes: model, experiment, shares, versions, exposure folder), and the modules it runs in
the server's environment (assignment, exposures, and triton_model for the student's rule on input text).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from relkd.io import write_text
from relkd.serving import assignment, exposures, router_model, triton_model
from relkd.serving.config import AbConfig, OnlineConfig, TritonConfig
from relkd.serving.repository import _swap_in

ROUTER_VERSION = 1  # the router has one version; what it routes to is in router.json


def router_info(model_name: str, versions: dict[str, int], ab: AbConfig, online: OnlineConfig) -> dict:
    """router.json: `versions` maps role (champion, challenger) to the served version. Without a challenger no
    experiment runs: every unit is served by the champion and marked unassigned."""
    versions = {role: int(v) for role, v in versions.items()}
    shares = {"champion": ab.champion_share, "challenger": ab.challenger_share} if "challenger" in versions else {}
    info = {"model": model_name, "experiment": ab.salt, "shares": shares, "versions": versions,
            "exposures": online.exposures, "rotate_bytes": int(online.rotate_mb * (1 << 20)), "fsync": online.fsync}
    router_model.check_router_info(info)
    return info


def config_text(router_name: str, triton: TritonConfig, instance_count: int) -> str:
    """The router's config.pbtxt: batches of at most the student's size (they go to the student whole)."""
    def tensor(name, dtype, dims, optional=False):
        return (f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ]'
                f'{" optional: true" if optional else ""} }}')

    inputs = [tensor("QUERY", "TYPE_STRING", [1]), tensor("TITLE", "TYPE_STRING", [1]),
              tensor(router_model.UNIT_INPUT, "TYPE_STRING", [1], optional=True),
              tensor(router_model.EXPERIMENT_INPUT, "TYPE_STRING", [1], optional=True)]
    specs = {**triton_model.OUTPUT_SPECS, **router_model.ROUTER_OUTPUTS}
    outputs = [tensor(name, dtype, dims) for name, (dtype, dims) in specs.items()]
    return "\n".join([
        "# Written by relkd.serving.router.config_text: the online A/B router (python backend, BLS).",
        f'name: "{router_name}"',
        'backend: "python"',
        f"max_batch_size: {int(triton.max_batch_size)}",
        "input [", ",\n".join(inputs), "]",
        "output [", ",\n".join(outputs), "]",
        # No waiting for a batch to fill: the router takes what queued while it was busy (its batches go whole to
        # the student, whose own batcher does the waiting); a delay here would add to every request's latency.
        "dynamic_batching {",
        "  max_queue_delay_microseconds: 0",
        "}",
        f"instance_group [ {{ count: {int(instance_count)} kind: KIND_CPU }} ]",
        "",
    ])


def write_router(repo_dir, versions: dict[str, int], ab: AbConfig, online: OnlineConfig,
                 triton: TritonConfig) -> Path:
    """Write the router for the student ``triton.model_name`` serving `versions` ({role: version}); returns its
    folder. The version folder is built aside and renamed in, as the student's are."""
    info = router_info(triton.model_name, versions, ab, online)
    model_dir = Path(repo_dir) / online.router_name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".router-", suffix=".tmp", dir=model_dir))
    try:
        shutil.copyfile(router_model.__file__, tmp / "model.py")
        for module in (assignment, exposures, triton_model):
            shutil.copyfile(module.__file__, tmp / Path(module.__file__).name)
        (tmp / router_model.ROUTER_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n",
                                                    encoding="utf-8")
        _swap_in(tmp, model_dir / str(ROUTER_VERSION))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_text(model_dir / "config.pbtxt", config_text(online.router_name, triton, online.router_instances))
    return model_dir
