"""Stage `teacher_sft_data`: consistency filter, union of the three perspective sets, label-hinted rationales for
other training pairs, each example posed under its prompt (the SFT set; generation only, one engine). With
--perspective (stage `teacher_single_sft_data@<perspective>`): that perspective's records only, its label-hinted
rationales asked under its prompt, every example posed under it: a single-perspective teacher's SFT set."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from pipeline.common import read_labels, read_split, setup, stage_command
from relkd.io import read_jsonl, write_json, write_jsonl
from relkd.models import resolve
from relkd.teacher import selection
from relkd.teacher.cache import GenerationCache
from relkd.teacher.completions import over_length
from relkd.teacher.judge import Asking, hinted_rationales
from relkd.teacher.prompts import PERSPECTIVES, UNIFIED, Shot, load_perspective, load_perspectives
from relkd.teacher.sft_data import hint_pool, posed, prompt_names, sft_set


def run(params_path, prepared, fewshot, prompts_dir, out, cache_dir, metrics_path, perspective=None) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    labels = read_labels(prepared)
    train = read_split(prepared, "train").set_index("pair_id", drop=False)
    records = read_jsonl(Path(fewshot) / "generations.jsonl")
    if perspective is not None:  # a single-perspective teacher learns from its own perspective's answers only
        records = [r for r in records if r["perspective"] == perspective]
        if not records:
            raise SystemExit(f"teacher_sft_data: no few-shot generations of perspective {perspective!r} in {fewshot}")
    kept = selection.consistency_filter(records)
    prompts = {UNIFIED: load_perspective(Path(prompts_dir) / f"{UNIFIED}.yaml"), **load_perspectives(prompts_dir)}
    asked = prompts[perspective or UNIFIED]  # the prompt the hinted rationales are asked under
    model_path = resolve(cfg.model)
    hinted, dropped, tokenizer = {}, Counter(), None
    if cfg.sft.label_hinted_fallback:
        consistent = selection.sft_examples(kept)
        pool = hint_pool(train, {e.pair_id for e in consistent}, len(consistent), cfg.sft.max_examples,
                         cfg.sft.seed)
        if len(pool):
            from relkd.teacher.engine import make_engine

            teacher = make_engine(cfg, model_path).teacher()
            tokenizer = teacher.tokenizer
            cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")
            got = hinted_rationales(teacher, cache, pool, asked, labels, Asking.of(cfg))
            hinted = dict(zip(pool["pair_id"], got))
            dropped = Counter(why for _, why in got if why)
    examples = sft_set(records, train, hinted)
    if not examples:
        raise SystemExit("teacher_sft_data: no SFT examples (nothing consistent, and no usable label-hinted "
                         f"rationale: dropped {dict(dropped)}); enable teacher.sft.label_hinted_fallback or raise "
                         "teacher.sampling.k")
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
    shots = [Shot(**s) for s in read_jsonl(Path(fewshot) / "shots.jsonl")]
    names = prompt_names(len(examples), perspective, cfg.sft.perspective_share, cfg.sft.seed)
    data = posed(tokenizer, examples, train, prompts, labels, shots, names)
    # A pair whose prompt + answer is over teacher.sft.max_length would be cut before its label line: left out,
    # and counted (a long product title), rather than failing the whole stage.
    cut = set(over_length(tokenizer, data, cfg.sft.max_length))
    data = [d for i, d in enumerate(data) if i not in cut]
    if not data:
        raise SystemExit(f"teacher_sft_data: every SFT example is longer than teacher.sft.max_length = "
                         f"{cfg.sft.max_length} tokens; raise it or shorten prompts/{asked.name}.yaml")
    write_jsonl(out, data)
    metrics = {
        **({"perspective": perspective} if perspective else {}), "n_generations": len(records),
        "n_consistent": len(kept),
        "consistent_by_class": selection.class_balance(kept, labels), "n_examples": len(data),
        "n_label_hinted": sum(d["source"] == "label_hinted" for d in data), "n_too_long": len(cut),
        "hinted_dropped": dict(dropped),
        "examples_by_class": {lab: sum(d["label"] == lab for d in data) for lab in labels},
        "examples_by_prompt": dict(Counter(d["prompt_name"] for d in data)),
    }
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.prepared, a.fewshot, a.prompts, a.out, a.cache, a.metrics, a.perspective)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"),
                     ("fewshot", "teacher_fewshot output folder"), ("prompts", "prompt files"),
                     ("out", "SFT examples JSONL"), ("cache", "generation cache (label-hinted rationales)"),
                     ("metrics", "metrics JSON"),
                     options=[click.Option(["--perspective"], type=click.Choice(PERSPECTIVES), default=None,
                                           help="build a single-perspective teacher's SFT set (default: MPCoT's)")])

if __name__ == "__main__":
    main()
