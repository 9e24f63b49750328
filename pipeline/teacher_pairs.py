"""Stage `teacher_pairs`: the SFT teacher under each perspective (pass@k) -> conflict set -> preference pairs."""
from __future__ import annotations

from pathlib import Path

from pipeline.common import read_labels, read_split, setup, stage_command
from relkd.data.splits import balanced_sample
from relkd.io import read_jsonl, write_json, write_jsonl
from relkd.models import resolve
from relkd.teacher import selection
from relkd.teacher.cache import GenerationCache
from relkd.teacher.generation import make_backend, model_id
from relkd.teacher.judge import judge_perspectives, prompts_for
from relkd.teacher.prompts import PERSPECTIVES, UNIFIED, Shot, load_perspective, load_perspectives


def run(params_path, prepared, fewshot, sft_adapter, prompts_dir, out, cache_dir, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    labels = read_labels(prepared)
    train = read_split(prepared, "train")
    # A draw of its own (seed + 1), so the search is not only the pairs the SFT data came from.
    search = balanced_sample(train, cfg.pairs.n_pairs_set, cfg.fewshot.seed + 1)
    shots = [Shot(**s) for s in read_jsonl(Path(fewshot) / "shots.jsonl")]
    perspectives = load_perspectives(prompts_dir)
    model_path = resolve(cfg.model)
    backend = make_backend(cfg, model_path, sft_adapter)
    mid = model_id(model_path, sft_adapter)
    cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")
    per = judge_perspectives(backend, cache, mid, search, perspectives, PERSPECTIVES, labels, shots,
                             cfg.pairs.k, cfg.sampling, cfg.sampling.seed, cfg.label_decision, cfg.batch_size,
                             cfg.scores_labels)
    records = [r for name in PERSPECTIVES for r in per[name]]
    conflicts = selection.conflict_set(records)
    pairs = selection.preference_pairs(records, cfg.sampling.seed, cfg.pairs.max_pairs_per_sample)
    # DPO trains the unified teacher: every preference pair is posed under the unified prompt.
    unified = load_perspective(Path(prompts_dir) / f"{UNIFIED}.yaml")
    by_id = search.set_index("pair_id", drop=False)
    rows = by_id.loc[[p["pair_id"] for p in pairs]].reset_index(drop=True) if pairs else by_id.iloc[:0]
    prompts = prompts_for(backend.tokenizer, unified, rows, labels)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_jsonl(Path(out) / "generations.jsonl", records)
    write_jsonl(Path(out) / "pairs.jsonl", [dict(p, prompt=q) for p, q in zip(pairs, prompts)])
    metrics = {
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
    run(a.params, a.prepared, a.fewshot, a.sft, a.prompts, a.out, a.cache, a.metrics)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"),
                     ("fewshot", "teacher_fewshot output (shots)"), ("sft", "SFT adapter folder"),
                     ("prompts", "prompt files"), ("out", "output folder"),
                     ("cache", "generation cache folder (persisted)"), ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
