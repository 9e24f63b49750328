"""MLflow runs side by side: the params that differ between them and their latest metrics, as a text table."""
from __future__ import annotations

import math
from collections.abc import Sequence
from fnmatch import fnmatchcase

import mlflow

BASE_COLUMNS = ("run", "variant", "seed", "stage")
# Run-level metrics worth a column by default; per-class and per-step losses stay out unless asked for.
DEFAULT_METRICS = ("*accuracy", "*macro_f1")
_SHOWN_AS_BASE = {"variant", "seed"}  # params the training stage logs that already have a base column


def _quoted(value: str, what: str) -> str:
    if "'" in value:
        raise ValueError(f"{what} {value!r} contains a quote; MLflow filters cannot match it")
    return f"'{value}'"


def _experiment_ids(client: mlflow.MlflowClient, experiment) -> list[str]:
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments()]
    names = [experiment] if isinstance(experiment, str) else list(experiment)
    ids = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = sorted(e.name for e in client.search_experiments())
            raise ValueError(f"no MLflow experiment named {name!r}; experiments: {known}")
        ids.append(exp.experiment_id)
    return ids


def runs_table(experiment: str | Sequence[str] | None = None, stage: str | None = None, variant: str | None = None,
               max_results: int = 200, metrics: Sequence[str] = DEFAULT_METRICS):
    """The selected runs, newest first, as (rows, param_columns, metric_columns).

    `experiment`: a name or names (None: every experiment); `stage` and `variant` match the tags
    ``relkd.stage`` and ``relkd.variant``. Each row is a dict with ``run_id`` and the columns
    ``run`` (run name), ``variant``, ``seed`` (tag ``relkd.seed``, else param ``seed``), ``stage``,
    then the params whose values differ between the selected runs (a param missing from some runs
    differs), then each metric matching a glob in `metrics` at its latest logged value.
    """
    client = mlflow.MlflowClient()
    filters = []
    if stage is not None:
        filters.append(f'tags."relkd.stage" = {_quoted(stage, "stage")}')
    if variant is not None:
        filters.append(f'tags."relkd.variant" = {_quoted(variant, "variant")}')
    runs = client.search_runs(_experiment_ids(client, experiment), " and ".join(filters),
                              max_results=max_results, order_by=["attributes.start_time DESC"])

    param_keys = sorted({k for r in runs for k in r.data.params} - _SHOWN_AS_BASE)
    param_columns = [k for k in param_keys if len({r.data.params.get(k) for r in runs}) > 1]
    metric_columns = sorted({k for r in runs for k in r.data.metrics
                             if any(fnmatchcase(k, pattern) for pattern in metrics)})
    rows = []
    for r in runs:
        tags, params = r.data.tags, r.data.params
        row = {"run_id": r.info.run_id, "run": r.info.run_name,
               "variant": tags.get("relkd.variant", params.get("variant")),
               "seed": tags.get("relkd.seed", params.get("seed")), "stage": tags.get("relkd.stage")}
        row.update({k: params.get(k) for k in param_columns})
        row.update({k: r.data.metrics.get(k) for k in metric_columns})
        rows.append(row)
    return rows, param_columns, metric_columns


def _cell(value, max_width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.4f}"
    else:
        text = str(value)
    return text if len(text) <= max_width else text[: max_width - 3] + "..."


def format_table(rows: Sequence[dict], columns: Sequence[str], max_width: int = 40) -> str:
    """Plain-text table: a header, a rule, one line per row; numbers right-aligned, floats to 4
    decimals, missing values as '-', cells longer than `max_width` cut with '...'."""
    cells = [[_cell(row.get(c), max_width) for c in columns] for row in rows]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) and
               any(row.get(c) is not None for row in rows) for c in columns]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def line(values) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(list(columns)), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    return "\n".join(out)
