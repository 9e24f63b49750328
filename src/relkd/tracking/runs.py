"""`stage_run`: the MLflow run every pipeline stage opens, with params, git and input-hash tags."""
from __future__ import annotations

import hashlib
import json
import numbers
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import mlflow

from relkd.tracking.store import experiment_id

try:
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH
except ImportError:  # pragma: no cover - older/newer mlflow layouts
    MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH = 250, 6000

UNKNOWN = "unknown"


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; non-dict values are kept as they are."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _param_value(value) -> str:
    text = json.dumps(list(value), default=str) if isinstance(value, (list, tuple)) else str(value)
    if len(text) <= MAX_PARAM_VAL_LENGTH:
        return text
    marker = f"...[truncated, {len(text)} chars]"
    return text[: MAX_PARAM_VAL_LENGTH - len(marker)] + marker


def param_strings(params: dict) -> dict[str, str]:
    """Flattened params as MLflow stores them: strings (lists as JSON), cut to MLflow's limit."""
    return {key: _param_value(value) for key, value in flatten(params).items()}


def file_md5(path) -> str:
    """md5 of the file's bytes: what DVC 3 records as a file's `md5`."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dir_md5(path) -> str:
    """Our own directory hash (NOT DVC's ``.dir`` hash): md5 of the JSON list of
    ``[relative posix path, file md5]`` pairs of every file below `path`, sorted by path."""
    path = Path(path)
    entries = sorted(
        (p.relative_to(path).as_posix(), file_md5(p)) for p in path.rglob("*") if p.is_file()
    )
    return hashlib.md5(json.dumps(entries).encode()).hexdigest()


def content_md5(path) -> str:
    path = Path(path)
    if path.is_dir():
        return dir_md5(path)
    if path.is_file():
        return file_md5(path)
    raise FileNotFoundError(f"stage input not found: {path}")


def _git(root, *args) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_tags(root=".") -> dict[str, str]:
    """``git.commit`` (HEAD) and ``git.dirty`` (uncommitted changes, untracked non-ignored files
    included); both "unknown" outside a git repository."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"git.commit": UNKNOWN, "git.dirty": UNKNOWN}
    status = _git(root, "status", "--porcelain")
    dirty = UNKNOWN if status is None else str(bool(status)).lower()
    return {"git.commit": commit, "git.dirty": dirty}


def input_tags(inputs, root=".") -> dict[str, str]:
    """``dvc.md5.<path>`` -> content hash for each input (relative paths are taken from `root`;
    the tag names the path relative to `root` when it lies inside it)."""
    root = Path(root).resolve()
    tags = {}
    for item in inputs:
        path = Path(item)
        full = path if path.is_absolute() else root / path
        try:
            name = full.resolve().relative_to(root).as_posix()
        except ValueError:
            name = full.resolve().as_posix().lstrip("/")
        name = re.sub(r"[^/\w.\- :]", "_", name)
        tags[f"dvc.md5.{name}"[:MAX_ENTITY_KEY_LENGTH]] = content_md5(full)
    return tags


@contextmanager
def stage_run(
    stage: str,
    params: dict,
    inputs=(),
    experiment: str = "relkd",
    run_name: str | None = None,
    tags: dict | None = None,
    root=".",
):
    """Open an MLflow run for pipeline stage `stage` and yield it (the active run).

    Logs `params` (flattened to dotted keys) and tags ``relkd.stage``, ``git.commit``,
    ``git.dirty``, ``dvc.md5.<input>`` plus any `tags`. Inputs are hashed before the run opens,
    so a missing input fails without leaving an empty run. The run ends FAILED if the block raises.
    On success it logs ``wall_s`` (seconds the block ran: where a pipeline's time goes, stage by stage)
    and ``peak_rss_mb``.
    """
    import time

    all_tags = {"relkd.stage": stage, **git_tags(root), **input_tags(inputs, root)}
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    exp_id = experiment_id(experiment, root)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name or stage, tags=all_tags) as run:
        if params:
            mlflow.log_params(param_strings(params))
        start = time.perf_counter()
        yield run
        mlflow.log_metrics({"wall_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()})


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports ru_maxrss in kB)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def log_metrics(metrics: dict, step: int | None = None) -> dict[str, float]:
    """Log the numeric values of `metrics` (nested dicts flattened to dotted keys; bools as 0/1;
    strings, None and other non-numbers skipped) to the active run; returns what was logged."""
    numeric = {
        key: float(value)
        for key, value in flatten(metrics).items()
        if isinstance(value, numbers.Real)
    }
    if numeric:
        mlflow.log_metrics(numeric, step=step)
    return numeric
