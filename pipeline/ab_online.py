"""Stage `ab_online`: the nightly batch replayed as live traffic through the A/B router of a server this stage
starts and stops, outcomes simulated from the batch's gold labels (and labelled so), and the online analysis:
sample ratio first, outcome rates per arm with unit-level intervals, guardrails, verdict -> reports/ab/online.md."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.common import setup, stage_command
from relkd.io import write_json, write_parquet, write_text
from relkd.serving.online_report import analyse, simulate_outcomes, traffic

STATS_FILE = "server_stats.json"


def run(params_path, batch, repo, export_json, out, report_dir, metrics_path) -> dict:
    params = setup(params_path)
    online, t = params.online, params.triton
    from relkd.serving.replay import replay_file
    from relkd.serving.server import triton
    from relkd.serving.server_stats import snapshot

    out = Path(out)
    exported = json.loads(Path(export_json).read_text(encoding="utf-8"))
    if "challenger" not in exported:  # right after a promotion: no experiment runs, nothing to analyse
        out.mkdir(parents=True, exist_ok=True)  # the stage's output, empty of traffic
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(report_dir) / "online.md", "# Online A/B\n\nNo challenger is served (the registry has only a "
                   "champion, e.g. right after `relkd promote`): the router serves every unit with the champion and "
                   "no experiment runs until `register` names a challenger.\n")
        metrics = {"verdict": "keep", "arms": 1}
        write_json(Path(report_dir) / "online.json", metrics)
        write_json(metrics_path, metrics)
        return metrics
    from relkd.serving.inputs import read_table

    rows = traffic(read_table(batch), online.passes, online.users, online.seed)
    write_parquet(out / "traffic.parquet", rows)
    with triton(repo, timeout=t.start_timeout, log_path=out / "tritonserver.log", exposures=out / "exposures") as s:
        url = s.grpc_url if params.score.protocol == "grpc" else s.http_url
        replay = replay_file(out / "traffic.parquet", out / "replay", url, online, params.score)
        stats = snapshot(s.http_url, s.metrics_url, t.model_name)
        memory = s.peak_rss_mb()
    write_json(out / STATS_FILE, stats)
    from relkd.serving.exposures import read_folder

    outcomes = simulate_outcomes(read_folder(out / "exposures")[0], rows, online.outcome_noise, online.seed)
    write_parquet(out / "outcomes.parquet", outcomes)
    labelled = int((rows["gold_label"].str.len() > 0).sum())
    note = (f"Outcomes are SIMULATED: a judgement of 1 when the served label is the catalogue's gold label, flipped "
            f"with probability {online.outcome_noise} (online.outcome_noise); only the {labelled} of {len(rows)} "
            f"requests whose row has a gold label get one. Traffic: the nightly batch x {online.passes}, each row "
            f"from one of {online.users} simulated users. Real outcomes (clicks, add-to-cart, human judgements) "
            "join the same way: `relkd ab online --outcomes FILE`.")
    replay["server_peak_mb"] = memory["total_mb"]
    _, metrics = analyse(params, out / "exposures", out / "outcomes.parquet", out / STATS_FILE, report_dir, note,
                         replay, inputs=[batch, export_json])
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.batch, a.repo, a.export, a.out, a.report, a.metrics)


main = stage_command(__doc__, _main, ("batch", "the nightly batch file"), ("repo", "Triton model repository"),
                     ("export", "export report JSON (the served versions)"),
                     ("out", "folder for the traffic, exposures, replay journal, outcomes, server statistics"),
                     ("report", "report folder (online.md, online.json)"), ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
