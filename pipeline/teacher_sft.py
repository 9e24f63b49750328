"""Stage `teacher_sft`: consistency filter, union of the three perspective sets, unified prompt, LoRA SFT."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from transformers import AutoTokenizer

from pipeline.common import read_labels, read_split, setup, stage_args
from relkd.io import read_jsonl, write_json, write_jsonl
from relkd.models import resolve
from relkd.teacher import selection
from relkd.teacher.cache import GenerationCache
from relkd.teacher.generation import make_backend, model_id
from relkd.teacher.judge import hinted_prompts, judge, unified_examples
from relkd.teacher.prompts import UNIFIED, load_perspective
from relkd.tracking import log_metrics, stage_run


def hinted(cfg, model_path, cache_dir, pairs: pd.DataFrame, labels, unified) -> list[dict]:
    """Label-hinted rationales for `pairs` from the untrained teacher (label = gold by construction)."""
    backend = make_backend(cfg, model_path)
    prompts = hinted_prompts(backend.tokenizer, unified, pairs, labels)
    cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")
    records = judge(backend, cache, model_id(model_path), pairs, prompts, "label_hinted", labels, 1,
                    cfg.sampling, cfg.sampling.seed, "parse", cfg.batch_size)
    return [dict(r, label=r["gold"]) for r in records if r["rationale"]]


def run(params_path, prepared, fewshot, prompts_dir, out, data_out, cache_dir, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    labels = read_labels(prepared)
    train = read_split(prepared, "train").set_index("pair_id", drop=False)
    records = read_jsonl(Path(fewshot) / "generations.jsonl")
    kept = selection.consistency_filter(records)
    balance = selection.class_balance(kept, labels)
    examples = [{"pair_id": e.pair_id, "rationale": e.rationale, "label": e.label, "source": "consistent"}
                for e in selection.sft_examples(kept)]
    unified = load_perspective(Path(prompts_dir) / f"{UNIFIED}.yaml")
    model_path = resolve(cfg.model)
    n_hinted = 0
    if cfg.sft.label_hinted_fallback:
        short = [lab for lab in labels if balance.get(lab, 0) < cfg.sft.min_kept_per_class]
        seed_ids = {r["pair_id"] for r in records}
        pool = train[train["pair_id"].isin(seed_ids) & train["label"].isin(short)]
        if len(pool):
            extra = hinted(cfg, model_path, cache_dir, pool.reset_index(drop=True), labels, unified)
            examples += [{"pair_id": r["pair_id"], "rationale": r["rationale"], "label": r["label"],
                          "source": "label_hinted"} for r in extra]
            n_hinted = len(extra)
    if not examples:
        raise SystemExit("teacher_sft: no SFT examples (nothing consistent and the fallback is off); "
                         "enable teacher.sft.label_hinted_fallback or raise teacher.sampling.k")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pairs = train.loc[[e["pair_id"] for e in examples]].reset_index(drop=True)
    sft_data = unified_examples(tokenizer, unified, pairs, labels, [e["rationale"] for e in examples],
                                [e["label"] for e in examples])
    write_jsonl(data_out, [dict(e, **d) for e, d in zip(examples, sft_data)])

    from relkd.teacher.training import MetricsCallback, sft

    with stage_run("teacher_sft", {"teacher": cfg.model_dump(include={"model", "sft", "label_decision"})},
                   inputs=[fewshot, prompts_dir], experiment=params.tracking.experiment):
        train_metrics = sft(model_path, sft_data, out, cfg.sft, callbacks=[MetricsCallback(log_metrics)])
        metrics = {
            "n_generations": len(records), "n_consistent": len(kept),
            "consistent_by_class": balance, "n_examples": len(examples), "n_label_hinted": n_hinted,
            "examples_by_class": {lab: sum(e["label"] == lab for e in examples) for lab in labels},
            "train": train_metrics,
        }
        log_metrics({k: v for k, v in metrics.items() if k != "consistent_by_class"})
        import mlflow

        mlflow.log_artifacts(out, artifact_path="adapter")
    write_json(metrics_path, metrics)
    return metrics


def main(argv=None) -> None:
    ap = stage_args(__doc__, ("prepared", "prepared data folder"), ("fewshot", "teacher_fewshot output folder"),
                    ("prompts", "prompt files"), ("out", "adapter folder"), ("data-out", "SFT examples JSONL"),
                    ("cache", "generation cache (label-hinted fallback)"), ("metrics", "metrics JSON"))
    a = ap.parse_args(argv)
    run(a.params, a.prepared, a.fewshot, a.prompts, a.out, a.data_out, a.cache, a.metrics)


if __name__ == "__main__":
    main()
