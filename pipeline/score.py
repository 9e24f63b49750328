"""Stage `score`: start Triton on the model repository, score the nightly batch with the champion and the
challenger version through tritonclient, check drift against the training data, stop the server."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from pipeline.common import read_split, setup, stage_command
from relkd.io import write_json, write_text


def reference_profile(prepared: str, tier_share: list[float]) -> dict:
    from relkd.serving.drift import profile

    ref = profile(read_split(prepared, "train"))
    ref["tier"] = {str(t): float(s) / max(sum(tier_share), 1) for t, s in enumerate(tier_share)}
    return ref


def run(params_path, batch, repo, export_json, prepared, out, metrics_path) -> dict:
    params = setup(params_path)
    cfg, t = params.score, params.triton
    from relkd.serving.client import score_file
    from relkd.serving.inputs import read_table
    from relkd.serving.drift import drift_check, profile
    from relkd.serving.server import triton

    exported = json.loads(Path(export_json).read_text(encoding="utf-8"))
    summary, warnings = {}, {}
    Path(out).mkdir(parents=True, exist_ok=True)
    with triton(repo, timeout=t.start_timeout, log_path=Path(out) / "tritonserver.log") as server:
        url = f"127.0.0.1:{server.grpc_port if cfg.protocol == 'grpc' else server.http_port}"
        for role, e in exported.items():
            t0 = time.perf_counter()
            summary[role] = score_file(batch, Path(out) / role, url, cfg, t.model_name, e["version"])
            seconds = time.perf_counter() - t0
            write_json(Path(out) / role / "cost.json", {
                "pairs": summary[role]["scored"], "seconds": seconds,
                "seconds_per_1000_pairs": 1000 * seconds / max(summary[role]["scored"], 1),
                "shards_reused": summary[role]["shards_reused"]})
        memory = server.peak_rss_mb()
    rows = read_table(batch)
    for role, e in exported.items():
        scores = pd.read_parquet(Path(out) / role / "scores.parquet")
        scored_rows = rows.iloc[scores["row"].to_numpy()].assign(tier=scores["tier"].to_numpy())
        warnings[role] = drift_check(reference_profile(prepared, e["valid_tier_share"]), profile(scored_rows),
                                     cfg.drift)
    lines = [f"# Nightly scoring: {len(rows)} rows", ""]
    for role, s in summary.items():
        lines += [f"## {role} (version {exported[role]['version']}, {exported[role]['variant']})",
                  f"- scored {s['scored']}, rejected {s['rejected']} (rejects: {role}/rejects.jsonl)"]
        lines += [f"- drift WARNING: {w['message']}" for w in warnings[role]] or ["- drift: none beyond thresholds"]
        lines.append("")
    lines.append(f"Server peak memory: {memory['total_mb']:.0f} MB (tritonserver {memory['server_mb'] or 0:.0f} MB "
                 f"+ python-backend stubs {', '.join(f'{m:.0f}' for m in memory['stubs_mb'])} MB)")
    write_text(Path(out) / "score_report.md", "\n".join(lines))
    metrics = {role: {"rows": s["rows"], "scored": s["scored"], "rejected": s["rejected"],
                      "drift_warnings": len(warnings[role])} for role, s in summary.items()}
    metrics["server_peak_rss_mb"] = {"server": memory["server_mb"], "total": memory["total_mb"]}
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.batch, a.repo, a.export, a.prepared, a.out, a.metrics)


main = stage_command(__doc__, _main, ("batch", "batch file (parquet/CSV/JSONL)"),
                     ("repo", "Triton model repository"), ("export", "export report JSON (versions)"),
                     ("prepared", "prepared data (drift reference)"), ("out", "scores folder"),
                     ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
