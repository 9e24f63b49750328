"""Stage `annotate`: the final teacher writes one rationale (and label) for every student training pair. With
--perspective (stage `annotate_single@<perspective>`): a single-perspective teacher, asked under its own prompt with
the few-shot shots (--fewshot), as it was trained. With `teacher.annotate.source: oracle` (a control) the embedded
catalogue's construction writes them instead."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.common import read_labels, read_split, setup, stage_command
from relkd.eval.metrics import classification_report
from relkd.io import read_jsonl, write_json, write_jsonl
from relkd.models import resolve
from relkd.teacher.cache import GenerationCache, shard
from relkd.teacher.engine import make_engine
from relkd.teacher.judge import Asking, hinted_rationales, judge, prompts_for
from relkd.teacher.oracle import oracle_records
from relkd.teacher.prompts import PERSPECTIVES, UNIFIED, Shot, load_perspective


def run(params_path, prepared, teacher_adapter, prompts_dir, out, cache_dir, metrics_path, perspective=None,
        fewshot=None) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    labels = read_labels(prepared)
    # The students' training rows in their natural class distribution: a cap takes a seeded random sample,
    # not a class-balanced one (the students are tested on the natural distribution).
    train = read_split(prepared, "train")
    if cfg.annotate.max_pairs is not None and cfg.annotate.max_pairs < len(train):
        train = train.sample(n=cfg.annotate.max_pairs, random_state=cfg.fewshot.seed).reset_index(drop=True)
    # N workers each take their shard (same cache folder, one file per worker); the merge is the folder.
    mine = set(shard(list(train["pair_id"]), cfg.shards.num_shards, cfg.shards.shard_index))
    train = train[train["pair_id"].isin(mine)].reset_index(drop=True)
    records = oracle_records(train, cfg.sampling.seed) if cfg.annotate.source == "oracle" else \
        teacher_records(cfg, train, labels, teacher_adapter, prompts_dir, cache_dir, perspective, fewshot)
    write_jsonl(out, records)
    gold = [r["gold"] for r in records]
    rep = classification_report(gold, [r["label"] for r in records], labels)
    metrics = {"source": cfg.annotate.source, "n_pairs": len(records), "teacher_accuracy_on_train": rep["accuracy"],
               "teacher_macro_f1_on_train": rep["macro_f1"],
               "unparseable_rate": classification_report(gold, [r["parsed_label"] for r in records],
                                                         labels)["unparseable_rate"],
               "empty_rationale_rate": sum(not r["rationale"] for r in records) / max(len(records), 1),
               "mean_rationale_words": sum(len(r["rationale"].split()) for r in records) / max(len(records), 1)}
    write_json(metrics_path, metrics)
    return metrics


def teacher_records(cfg, train, labels, teacher_adapter, prompts_dir, cache_dir, perspective, fewshot) -> list[dict]:
    """The final teacher's greedy answer under the unified prompt for every pair (label-hinted rationales with
    `annotate.hint: gold`)."""
    model_path = resolve(cfg.model)
    teacher = make_engine(cfg, model_path).teacher(teacher_adapter)
    prompt = load_perspective(Path(prompts_dir) / f"{perspective or UNIFIED}.yaml")
    shots = ()
    if perspective is not None:
        if fewshot is None:
            raise SystemExit("annotate --perspective asks the teacher as it was trained, with the few-shot shots: "
                             "pass --fewshot (the teacher_fewshot output folder)")
        shots = [Shot(**s) for s in read_jsonl(Path(fewshot) / "shots.jsonl")]
    asking = Asking.of(cfg, greedy=True, batch_size=cfg.annotate.batch_size)  # one rationale per pair: the greedy one
    cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")
    records = judge(teacher, cache, train, prompts_for(teacher.tokenizer, prompt, train, labels, shots), prompt.name,
                    labels, asking)
    if cfg.annotate.hint == "gold":
        # The rationale is a label-hinted one (which never names a class); the teacher's own answer, label and
        # distribution stay in the record, so the metrics below still measure the teacher.
        hinted = hinted_rationales(teacher, cache, train, prompt, labels, asking)
        records = [dict(r, rationale=text, hint_dropped=why) for r, (text, why) in zip(records, hinted)]
    return records


def _main(a) -> None:
    run(a.params, a.prepared, a.teacher, a.prompts, a.out, a.cache, a.metrics, a.perspective, a.fewshot)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"),
                     ("teacher", "final teacher adapter (DPO)"), ("prompts", "prompt files"),
                     ("out", "rationales JSONL"), ("cache", "generation cache folder (persisted)"),
                     ("metrics", "metrics JSON"),
                     options=[click.Option(["--perspective"], type=click.Choice(PERSPECTIVES), default=None,
                                           help="a single-perspective teacher: ask under this perspective's prompt"),
                              click.Option(["--fewshot"], default=None,
                                           help="teacher_fewshot output folder (its shots; with --perspective)")])

if __name__ == "__main__":
    main()
