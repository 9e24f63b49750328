"""Stage `teacher_single_pairs@<perspective>`: a single-perspective SFT teacher proves it learned the answer format,
answers the conflict search set under its own prompt (pass@k) -> perspective-aligned preference pairs; MPCoT's pairs
posed under its prompt (Table 3's "+ MPCoT DPO"); for a teacher.single.size_matched perspective, exactly as many
aligned pairs as MPCoT's, the search widened until there are (Table 6 / D.1). Generation only, one engine."""
from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.common import read_labels, read_split, setup, stage_command
from relkd.data.splits import balanced_sample
from relkd.io import read_jsonl, write_json, write_jsonl
from relkd.models import resolve
from relkd.teacher import selection
from relkd.teacher.cache import GenerationCache
from relkd.teacher.engine import make_engine
from relkd.teacher.format_check import judged_format, require_format
from relkd.teacher.judge import Asking, judge, prompts_for
from relkd.teacher.prompts import PERSPECTIVES, Shot, load_perspectives


def run(params_path, perspective, prepared, fewshot, sft_adapter, sft_metrics, mpcot_pairs, prompts_dir, out,
        cache_dir, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    labels = read_labels(prepared)
    shots = [Shot(**s) for s in read_jsonl(Path(fewshot) / "shots.jsonl")]
    prompt = load_perspectives(prompts_dir)[perspective]
    teacher = make_engine(cfg, resolve(cfg.model)).teacher(sft_adapter)
    cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")

    train = read_split(prepared, "train")
    by_id = train.set_index("pair_id", drop=False)

    def posed(pairs: list[dict]) -> list[dict]:
        """The pairs under this teacher's own prompt (with the few-shot shots, as it is asked)."""
        rows = by_id.loc[[p["pair_id"] for p in pairs]].reset_index(drop=True) if pairs else by_id.iloc[:0]
        asked = prompts_for(teacher.tokenizer, prompt, rows, labels, shots)
        return [dict(p, prompt=q, group=perspective) for p, q in zip(pairs, asked)]

    def ask(pairs):
        return judge(teacher, cache, pairs, prompts_for(teacher.tokenizer, prompt, pairs, labels, shots), perspective,
                     labels, Asking.of(cfg, n=cfg.pairs.k))

    # The search set MPCoT's conflicts were found on (teacher_pairs' draw), answered under this perspective.
    search = balanced_sample(train, cfg.pairs.n_pairs_set, cfg.fewshot.seed + 1)
    records = ask(search)
    # SFT must have taught the answer format: its answers under its own prompt parse, or the stage fails.
    check = judged_format(records, labels)
    require_format(check, cfg.sft.max_unparseable,
                   json.loads(Path(sft_metrics).read_text(encoding="utf-8")).get("train", {}))
    sets = {"aligned": selection.aligned_pairs(records, cfg.sampling.seed, cfg.pairs.max_pairs_per_sample),
            "mpcot": read_jsonl(Path(mpcot_pairs) / "pairs.jsonl")}
    metrics = {"perspective": perspective, "format": check[perspective], "n_search_pairs": len(search),
               "k": cfg.pairs.k, "accuracy": selection.accuracy_by_perspective(records)[perspective],
               f"pass@{cfg.pairs.k}": selection.pass_at_k(records, perspective, cfg.pairs.k)}
    if perspective in cfg.single.size_matched:
        try:
            sets["size_matched"], wide, n = selection.widened_pairs(
                ask, train, cfg.pairs.n_pairs_set, len(sets["mpcot"]), cfg.fewshot.seed + 1, cfg.sampling.seed,
                cfg.pairs.max_pairs_per_sample)
        except ValueError as err:
            raise SystemExit(f"teacher_single_pairs: the size-matched set of {perspective}: {err}") from None
        metrics["size_matched"] = {"target": len(sets["mpcot"]), "n": len(sets["size_matched"]),
                                   "n_search_pairs": n}
        records = wide  # holds the first search set's records too
    Path(out).mkdir(parents=True, exist_ok=True)
    write_jsonl(Path(out) / "generations.jsonl", records)
    for name, pairs in sets.items():
        write_jsonl(Path(out) / name / "pairs.jsonl", posed(pairs))
        metrics[f"{name}_pairs"] = len(pairs)
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.perspective, a.prepared, a.fewshot, a.sft, a.sft_metrics, a.mpcot_pairs, a.prompts, a.out,
        a.cache, a.metrics)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"),
                     ("fewshot", "teacher_fewshot output (shots)"), ("sft", "the single-perspective SFT adapter"),
                     ("sft-metrics", "its teacher_sft metrics JSON (quoted when the format check fails)"),
                     ("mpcot-pairs", "teacher_pairs output folder (MPCoT's preference pairs)"),
                     ("prompts", "prompt files"), ("out", "output folder (aligned/, mpcot/, size_matched/)"),
                     ("cache", "generation cache folder (persisted)"), ("metrics", "metrics JSON"),
                     options=[click.Option(["--perspective"], type=click.Choice(PERSPECTIVES), required=True,
                                           help="the teacher's perspective")])

if __name__ == "__main__":
    main()
