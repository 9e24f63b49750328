"""Stage `embed`: the frozen sentence encoder embeds every teacher rationale once (e_cot), and a linear probe
says whether e_cot carries the gold label of its pair (before any student trains on it)."""
from __future__ import annotations

from pipeline.common import setup, stage_command
from relkd.embed import encode_rationales, encoder_info
from relkd.embed.store import write_embeddings
from relkd.eval.probing import label_probe
from relkd.io import read_jsonl, write_json


def run(params_path: str, rationales: str, out: str, metrics_path: str) -> dict:
    params = setup(params_path)
    cfg = params.embed
    records = read_jsonl(rationales)
    vectors = encode_rationales([r["rationale"] for r in records], cfg.model, cfg.max_length, cfg.batch_size,
                                cfg.normalize)
    # The encoder's identity travels with the vectors: the student's extractor width must match `dim`.
    meta = {**encoder_info(cfg.model, cfg.max_length), "normalize": cfg.normalize, "n": len(records),
            "pair_ids": [r["pair_id"] for r in records]}
    write_embeddings(out, vectors, meta)
    probe = params.peers.e_cot_probe
    metrics = {"n": len(records), "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0,
               "e_cot_probe": label_probe(vectors, [r["gold"] for r in records], probe.folds, probe.seed)}
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.rationales, a.out, a.metrics)


main = stage_command(__doc__, _main, ("rationales", "annotate output (JSONL)"), ("out", "embeddings folder"),
                     ("metrics", "metrics JSON (the e_cot label probe)"))

if __name__ == "__main__":
    main()
