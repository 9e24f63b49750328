"""MLflow tracking for relkd: where runs are stored (`store`) and the run every stage opens (`runs`)."""
from relkd.tracking.runs import (
    content_md5,
    dir_md5,
    file_md5,
    flatten,
    git_tags,
    input_tags,
    log_metrics,
    param_strings,
    stage_run,
)
from relkd.tracking.store import artifact_root, configure, experiment_id, is_embedded, tracking_uri

__all__ = [
    "artifact_root",
    "configure",
    "content_md5",
    "dir_md5",
    "experiment_id",
    "file_md5",
    "flatten",
    "git_tags",
    "input_tags",
    "is_embedded",
    "log_metrics",
    "param_strings",
    "stage_run",
    "tracking_uri",
]
