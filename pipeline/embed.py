"""Stage `embed`: the frozen sentence encoder embeds every teacher rationale once (e_cot), and a linear probe
says whether e_cot carries the gold label of its pair (before any student trains on it)."""
from __future__ import annotations

from pipeline.common import setup, stage_command
from relkd.embed.store import write_embeddings
from relkd.embed.targets import embed_records
from relkd.io import read_jsonl, write_json


def run(params_path: str, rationales: str, out: str, metrics_path: str) -> dict:
    params = setup(params_path)
    vectors, meta, metrics = embed_records(read_jsonl(rationales), params.embed, params.peers.e_cot_probe)
    write_embeddings(out, vectors, meta)
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.rationales, a.out, a.metrics)


main = stage_command(__doc__, _main, ("rationales", "annotate output (JSONL)"), ("out", "embeddings folder"),
                     ("metrics", "metrics JSON (the e_cot label probe)"))

if __name__ == "__main__":
    main()
