"""Stage `prepare`: load the configured source, screen rows, split by query, run the validation gate."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.common import setup, stage_command
from relkd.data.schema import DataError
from relkd.data.sources import load_dataset
from relkd.data.splits import split_by_query
from relkd.data.validate import check_reject_rate, gate, screen
from relkd.io import write_json, write_parquet, write_text
from relkd.tracking import log_metrics, stage_run


def _distribution(series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts().sort_index().items()}


def run(params_path: str, out: str, metrics_path: str) -> dict:
    params = setup(params_path)
    cfg = params.data
    out_dir = Path(out)
    frame, labels = load_dataset(cfg)
    kept, rejects = screen(frame, labels)
    splits = split_by_query(kept, cfg.split.valid, cfg.split.test, cfg.split.seed)
    report = gate(splits, labels, cfg.validation)

    # Rejects and the report are written even when the gate stops the stage: they say what to fix.
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "rejects.jsonl", rejects.to_json(orient="records", lines=True, force_ascii=False)
               if len(rejects) else "")
    write_text(out_dir / "validation.md", report.text() + "\n")
    if not report.success:
        raise DataError(report.text() + f"\n(report: {out_dir / 'validation.md'})")
    check_reject_rate(len(frame), len(rejects), cfg.validation.max_reject_rate)

    for name, df in splits.items():
        write_parquet(out_dir / f"{name}.parquet", df)
    write_json(out_dir / "labels.json", {"labels": list(labels), "source": cfg.source})
    metrics = {
        "rows_in": len(frame),
        "rows_rejected": len(rejects),
        "rejects_by_reason": _distribution(rejects["reason"].str.replace(r"'.*'", "'…'", regex=True))
        if len(rejects) else {},
        "rows": {s: len(d) for s, d in splits.items()},
        "queries": {s: int(d["query_id"].nunique()) for s, d in splits.items()},
        "labels": {s: _distribution(d["label"]) for s, d in splits.items()},
        "locales": _distribution(kept["locale"]),
    }
    write_json(metrics_path, metrics)
    with stage_run("prepare", params.data.model_dump(), experiment=params.tracking.experiment):
        log_metrics({k: v for k, v in metrics.items() if k in ("rows_in", "rows_rejected", "rows")})
    return metrics


def _main(a) -> None:
    try:
        m = run(a.params, a.out, a.metrics)
    except DataError as err:
        sys.exit(f"prepare: {err}")
    print(json.dumps({"rows": m["rows"], "rejected": m["rows_rejected"]}))


main = stage_command(__doc__, _main, ("out", "folder for {train,valid,test}.parquet, labels.json, rejects, report"),
                     ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
