"""Stage `teacher_pairs`: the SFT teacher proves it learned the answer format (or the stage fails), then answers
under each perspective (pass@k; those answers must parse too) -> conflict set -> preference pairs."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.common import read_labels, read_split, setup, stage_command
from relkd.data.splits import balanced_sample
from relkd.io import read_jsonl, write_json, write_jsonl
from relkd.models import resolve
from relkd.teacher import selection
from relkd.teacher.cache import GenerationCache
from relkd.teacher.engine import make_engine
from relkd.teacher.format_check import format_check, judged_format, require_format
from relkd.teacher.judge import Asking, judge_perspectives, prompts_for
from relkd.teacher.prompts import PERSPECTIVES, UNIFIED, Shot, load_perspective, load_perspectives


def run(params_path, prepared, fewshot, sft_adapter, sft_metrics, prompts_dir, out, cache_dir, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    labels = read_labels(prepared)
    shots = [Shot(**s) for s in read_jsonl(Path(fewshot) / "shots.jsonl")]
    perspectives = load_perspectives(prompts_dir)
    unified = load_perspective(Path(prompts_dir) / f"{UNIFIED}.yaml")
    teacher = make_engine(cfg, resolve(cfg.model)).teacher(sft_adapter)
    cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")

    # SFT must have taught the answer format before its answers are used: the trained teacher answers validation
    # pairs under the unified prompt (annotate asks under it), and its answers under the perspective prompts below
    # must parse as well.
    valid = balanced_sample(read_split(prepared, "valid"), cfg.sft.check_pairs, cfg.fewshot.seed)
    check = format_check(teacher, cache, valid, {UNIFIED: unified}, shots, labels, Asking.of(cfg))
    train_metrics = json.loads(Path(sft_metrics).read_text(encoding="utf-8")).get("train", {})
    require_format(check, cfg.sft.max_unparseable, train_metrics)

    # A draw of its own (seed + 1), so the search is not only the pairs the SFT data came from.
    search = balanced_sample(read_split(prepared, "train"), cfg.pairs.n_pairs_set, cfg.fewshot.seed + 1)
    per = judge_perspectives(teacher, cache, search, perspectives, PERSPECTIVES, labels, shots,
                             Asking.of(cfg, n=cfg.pairs.k))
    records = [r for name in PERSPECTIVES for r in per[name]]
    judged = judged_format(records, labels)
    if cfg.sft.perspective_share:  # trained under the perspective prompts too: their answers must parse
        require_format(judged, cfg.sft.max_unparseable, train_metrics)
    conflicts = selection.conflict_set(records)
    pairs = selection.preference_pairs(records, cfg.sampling.seed, cfg.pairs.max_pairs_per_sample)
    # DPO trains the unified teacher: every preference pair is posed under the unified prompt.
    by_id = search.set_index("pair_id", drop=False)
    rows = by_id.loc[[p["pair_id"] for p in pairs]].reset_index(drop=True) if pairs else by_id.iloc[:0]
    prompts = prompts_for(teacher.tokenizer, unified, rows, labels)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_jsonl(Path(out) / "generations.jsonl", records)
    write_jsonl(Path(out) / "pairs.jsonl", [dict(p, prompt=q) for p, q in zip(pairs, prompts)])
    metrics = {
        "valid_format": check[UNIFIED], "format_perspectives": judged,
        "n_search_pairs": len(search), "k": cfg.pairs.k,
        "conflict_set": len(conflicts.conflict), "resolvable": len(conflicts.resolvable),
        "preference_pairs": len(pairs),
        "pairs_by_perspective": {f"{rej}->{cho}": n for (rej, cho), n in selection.pair_counts(pairs).items()},
        "accuracy_by_perspective": selection.accuracy_by_perspective(records),
        f"pass@{cfg.pairs.k}": {p: selection.pass_at_k(records, p, cfg.pairs.k) for p in PERSPECTIVES},
        "oracle_accuracy": selection.oracle_accuracy(records),
        "unparseable_rate": selection.unparseable_rate([dict(r, label=r["parsed_label"]) for r in records]),
    }
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.prepared, a.fewshot, a.sft, a.sft_metrics, a.prompts, a.out, a.cache, a.metrics)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"),
                     ("fewshot", "teacher_fewshot output (shots)"), ("sft", "SFT adapter folder"),
                     ("sft-metrics", "teacher_sft metrics JSON (its loss, quoted when the format check fails)"),
                     ("prompts", "prompt files"), ("out", "output folder"),
                     ("cache", "generation cache folder (persisted)"), ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
