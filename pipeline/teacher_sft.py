"""Stage `teacher_sft`: consistency filter, union of the three perspective sets, unified prompt, LoRA SFT."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
from transformers import AutoTokenizer

from pipeline.common import read_labels, read_split, setup, stage_command
from relkd.data.splits import balanced_sample
from relkd.eval.metrics import classification_report
from relkd.io import read_jsonl, write_json, write_jsonl
from relkd.models import resolve
from relkd.teacher import selection
from relkd.teacher.cache import GenerationCache, cached_generate
from relkd.teacher.generation import make_backend, model_id
from relkd.teacher.judge import asked_shots, hinted_rationales, prompted_examples, prompts_for
from relkd.teacher.parsing import parse
from relkd.teacher.prompts import UNIFIED, Shot, load_perspective, load_perspectives, sft_prompt_names
from relkd.tracking import log_metrics, stage_run


def sft_set(records, train: pd.DataFrame, hinted: dict) -> list[dict]:
    """The SFT examples: every consistent (pair, rationale) of the few-shot generations, then the usable
    label-hinted rationale of each pair in ``hinted`` (pair_id -> (rationale, why dropped))."""
    examples = [{"pair_id": e.pair_id, "rationale": e.rationale, "label": e.label, "source": "consistent"}
                for e in selection.sft_examples(selection.consistency_filter(records))]
    return examples + [{"pair_id": pid, "rationale": text, "label": train.loc[pid, "label"],
                        "source": "label_hinted"} for pid, (text, _) in hinted.items() if text]


def hint_pool(train: pd.DataFrame, have: set, n_consistent: int, cap: int | None, seed: int) -> pd.DataFrame:
    """The training pairs that get a label-hinted rationale: those without a consistent one, a seeded random
    sample of them when ``cap`` (teacher.sft.max_examples) leaves room for fewer."""
    pool = train[~train["pair_id"].isin(have)]
    if cap is not None:
        pool = pool.sample(n=min(len(pool), max(0, cap - n_consistent)), random_state=seed)
    return pool.reset_index(drop=True)


def format_check(cfg, model_path, adapter, valid: pd.DataFrame, labels, prompts: dict, shots, cache_dir) -> dict:
    """The trained teacher answers `cfg.sft.check_pairs` validation pairs (greedy) under each prompt in
    ``prompts`` (name -> Perspective; shots for the perspective prompts, as teacher_pairs asks): per prompt,
    how many answers parse and how many of their labels are right (parsed, not scored: the check is about the
    answer format)."""
    backend = make_backend(cfg, model_path, adapter)
    pairs = balanced_sample(valid, cfg.sft.check_pairs, cfg.fewshot.seed)
    cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")
    greedy = cfg.sampling.model_copy(update={"temperature": 0.0})
    out = {}
    for name, prompt in prompts.items():
        texts = [row[0] for row in cached_generate(
            backend, cache, prompts_for(backend.tokenizer, prompt, pairs, labels, asked_shots(prompt, shots)), 1,
            greedy, cfg.sampling.seed, model_id(model_path, adapter), cfg.batch_size, labels=labels)]
        got = [parse(t, labels).label for t in texts]
        rep = classification_report(list(pairs["label"]), got, labels)
        failed = next((t for t, g in zip(texts, got) if g is None), "")
        out[name] = {"n": len(texts), "unparseable_rate": rep["unparseable_rate"], "accuracy": rep["accuracy"],
                     "macro_f1": rep["macro_f1"], "example": texts[0] if texts else "", "failed_example": failed}
    return out


def run(params_path, prepared, fewshot, prompts_dir, out, data_out, cache_dir, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    labels = read_labels(prepared)
    train = read_split(prepared, "train").set_index("pair_id", drop=False)
    records = read_jsonl(Path(fewshot) / "generations.jsonl")
    kept = selection.consistency_filter(records)
    unified = load_perspective(Path(prompts_dir) / f"{UNIFIED}.yaml")
    model_path = resolve(cfg.model)
    hinted, dropped = {}, {}
    if cfg.sft.label_hinted_fallback:
        consistent = selection.sft_examples(kept)
        pool = hint_pool(train, {e.pair_id for e in consistent}, len(consistent), cfg.sft.max_examples,
                         cfg.sft.seed)
        if len(pool):
            backend = make_backend(cfg, model_path)
            cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")
            got = hinted_rationales(backend, cache, model_id(model_path), pool, unified, labels, cfg.sampling,
                                    cfg.sampling.seed, cfg.batch_size)
            hinted = dict(zip(pool["pair_id"], got))
            dropped = Counter(why for _, why in got if why)
            del backend
    examples = sft_set(records, train, hinted)
    if not examples:
        raise SystemExit("teacher_sft: no SFT examples (nothing consistent, and no usable label-hinted rationale: "
                         f"dropped {dict(dropped)}); enable teacher.sft.label_hinted_fallback or raise "
                         "teacher.sampling.k")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pairs = train.loc[[e["pair_id"] for e in examples]].reset_index(drop=True)
    prompts = {UNIFIED: unified, **(load_perspectives(prompts_dir) if cfg.sft.perspective_share else {})}
    shots = [Shot(**s) for s in read_jsonl(Path(fewshot) / "shots.jsonl")]
    names = sft_prompt_names(len(examples), cfg.sft.perspective_share, cfg.sft.seed)
    examples = [dict(e, prompt_name=n) for e, n in zip(examples, names)]
    sft_data = prompted_examples(tokenizer, [prompts[n] for n in names], pairs, labels,
                                 [e["rationale"] for e in examples], [e["label"] for e in examples], shots)
    # A pair whose prompt + answer is over teacher.sft.max_length would be cut before its label line: left out,
    # and counted (a long product title), rather than failing the whole stage.
    from relkd.teacher.training import over_length, sft

    cut = set(over_length(tokenizer, sft_data, cfg.sft.max_length))
    too_long = len(cut)
    examples = [e for i, e in enumerate(examples) if i not in cut]
    sft_data = [d for i, d in enumerate(sft_data) if i not in cut]
    if not examples:
        raise SystemExit(f"teacher_sft: every SFT example is longer than teacher.sft.max_length = "
                         f"{cfg.sft.max_length} tokens; raise it or shorten prompts/{UNIFIED}.yaml")
    write_jsonl(data_out, [dict(e, **d) for e, d in zip(examples, sft_data)])

    with stage_run("teacher_sft", {"teacher": cfg.model_dump(include={"model", "sft"})},
                   inputs=[fewshot, prompts_dir], experiment=params.tracking.experiment):
        # A batch holds the examples of one prompt, whose shared instructions then run once (training.sft).
        train_metrics = sft(model_path, [dict(d, group=e["prompt_name"]) for e, d in zip(examples, sft_data)], out,
                            cfg.sft, log=log_metrics)
        check = format_check(cfg, model_path, out, read_split(prepared, "valid"), labels, prompts, shots, cache_dir)
        metrics = {
            "n_generations": len(records), "n_consistent": len(kept),
            "consistent_by_class": selection.class_balance(kept, labels), "n_examples": len(examples),
            "n_label_hinted": sum(e["source"] == "label_hinted" for e in examples),
            "n_too_long": too_long,
            "hinted_dropped": dict(dropped),
            "examples_by_class": {lab: sum(e["label"] == lab for e in examples) for lab in labels},
            "examples_by_prompt": dict(Counter(e["prompt_name"] for e in examples)),
            "train": train_metrics, "valid_format": check[UNIFIED],
            "valid_format_perspectives": {k: v for k, v in check.items() if k != UNIFIED},
        }
        log_metrics({k: v for k, v in metrics.items() if k not in ("consistent_by_class", "hinted_dropped")})
        import mlflow

        mlflow.log_artifacts(out, artifact_path="adapter")
    write_json(metrics_path, metrics)
    over = {k: v for k, v in check.items() if v["unparseable_rate"] > cfg.sft.max_unparseable}
    if over:
        name, worst = max(over.items(), key=lambda kv: kv[1]["unparseable_rate"])
        raise SystemExit(
            f"teacher_sft: after SFT, {100 * worst['unparseable_rate']:.0f}% of the answers under the {name} prompt "
            f"on {worst['n']} validation pairs have no parseable label (limit teacher.sft.max_unparseable = "
            f"{cfg.sft.max_unparseable}; over it: {sorted(over)}): the answer format was not learned (loss "
            f"{train_metrics.get('first_loss')} -> {train_metrics.get('last_loss')} over {train_metrics.get('steps')} "
            f"steps). Raise teacher.sft.epochs or teacher.sft.lr, give it more examples, or (a perspective prompt) "
            f"raise teacher.sft.perspective_share. One answer: {worst['failed_example'][:160]!r}")
    return metrics


def _main(a) -> None:
    run(a.params, a.prepared, a.fewshot, a.prompts, a.out, a.data_out, a.cache, a.metrics)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"),
                     ("fewshot", "teacher_fewshot output folder"), ("prompts", "prompt files"),
                     ("out", "adapter folder"), ("data-out", "SFT examples JSONL"),
                     ("cache", "generation cache (label-hinted fallback)"), ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
