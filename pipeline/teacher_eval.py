"""Stage `teacher_eval`: few-shot / SFT / SFT+DPO teachers on test pairs, MPCoT and single perspectives."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.common import read_labels, read_split, setup, stage_command
from relkd.data.splits import balanced_sample
from relkd.eval.metrics import classification_report
from relkd.eval.tables import MPCOT, SINGLE, TEACHER_COLUMNS, teacher_table, to_markdown
from relkd.io import read_jsonl, write_json, write_jsonl, write_text
from relkd.models import resolve
from relkd.teacher.cache import GenerationCache
from relkd.teacher.engine import make_engine
from relkd.teacher.judge import Asking, judge, judge_perspectives, majority, prompts_for
from relkd.teacher.parsing import error_kind
from relkd.teacher.prompts import PERSPECTIVES, UNIFIED, Shot, load_perspective, load_perspectives


def row(records: list[dict], labels, stage: str, teacher: str, perspective: str | None) -> dict:
    first = [r for r in records if r["sample"] == 0]
    gold = [r["gold"] for r in first]
    rep = classification_report(gold, [r["label"] for r in first], labels)
    parsed = classification_report(gold, [r["parsed_label"] for r in first], labels)
    scored = (classification_report(gold, [r["scored_label"] for r in first], labels)["accuracy"]
              if all(r["scored_label"] is not None for r in first) else None)  # None: teacher.label_scores off
    return {"stage": stage, "teacher": teacher, "perspective": perspective, "n": rep["n"],
            "accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"],
            "unparseable_rate": parsed["unparseable_rate"],
            "accuracy_parsed": parsed["accuracy"], "accuracy_scored": scored,
            "parse_errors": dict(Counter(error_kind(r["error"]) for r in first if r["error"]))}


def evaluate(cfg, teacher, stage: str, trained: bool, test, labels, shots, perspectives, unified,
             cache_dir) -> tuple[list, list]:
    cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")
    asking = Asking.of(cfg, greedy=cfg.eval.greedy)
    records, rows = [], []
    if not trained or cfg.eval.single_after_training:
        per = judge_perspectives(teacher, cache, test, perspectives, PERSPECTIVES, labels, shots, asking)
        records = [dict(r, stage=stage) for name in PERSPECTIVES for r in per[name]]
        rows = [row(per[name], labels, stage, SINGLE, name) for name in PERSPECTIVES]
    if not trained:
        # The untrained model has no unified training: its MPCoT is the three perspectives' vote.
        mp = majority(records, labels)
    else:
        mp = judge(teacher, cache, test, prompts_for(teacher.tokenizer, unified, test, labels), UNIFIED, labels,
                   asking)
    records += [dict(r, stage=stage) for r in mp]
    rows.append(row(mp, labels, stage, MPCOT, None))
    return rows, records


def run(params_path, prepared, fewshot, sft, dpo, final, prompts_dir, out, cache_dir, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    labels = read_labels(prepared)
    test = balanced_sample(read_split(prepared, "test"), cfg.eval.n_test_pairs, cfg.fewshot.seed)
    shots = [Shot(**s) for s in read_jsonl(Path(fewshot) / "shots.jsonl")]
    perspectives = load_perspectives(prompts_dir)
    unified = load_perspective(Path(prompts_dir) / f"{UNIFIED}.yaml")
    rows, records = [], []
    stages = [("few-shot", None), ("SFT", sft), ("SFT+DPO", dpo)]
    if cfg.grpo.enabled:  # TaoSR1's RL stage on top (teacher_grpo); its rows join the table
        stages.append(("SFT+DPO+GRPO", final))
    engine = make_engine(cfg, resolve(cfg.model))  # one engine; each adapter is a teacher it serves
    for stage, adapter in stages:
        r, g = evaluate(cfg, engine.teacher(adapter), stage, adapter is not None, test, labels, shots, perspectives,
                        unified, cache_dir)
        rows += r
        records += g
    table = teacher_table(rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_jsonl(Path(out) / "generations.jsonl", records)
    write_text(Path(out) / "teacher_table.md",
               f"# Teacher on {len(test)} test pairs ({cfg.model})\n\n"
               + to_markdown(table, ["model", "perspective", *TEACHER_COLUMNS[1:]]) + "\n\n"
               "All rows (accuracy_parsed: label from the answer's Label line; accuracy_scored: highest "
               "label likelihood after the rationale, empty with teacher.label_scores off; `label_decision` picks "
               "which one ACC uses):\n\n"
               + to_markdown(rows, ["stage", "teacher", "perspective", "accuracy", "macro_f1",
                                    "unparseable_rate", "accuracy_parsed", "accuracy_scored"]) + "\n")
    write_json(Path(out) / "rows.json", rows)
    metrics = {"n_test_pairs": len(test),
               "table": {r["model"]: {k: r[k] for k in ("accuracy", "macro_f1", "unparseable_rate")} for r in table},
               "single_perspective": {f"{r['stage']}/{r['perspective']}": {
                   k: r[k] for k in ("accuracy", "macro_f1", "unparseable_rate", "accuracy_parsed", "accuracy_scored",
                                     "parse_errors")}
                   for r in rows if r["perspective"]}}
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.prepared, a.fewshot, a.sft, a.dpo, a.final, a.prompts, a.out, a.cache, a.metrics)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"),
                     ("fewshot", "teacher_fewshot output (shots)"), ("sft", "SFT adapter"), ("dpo", "DPO adapter"),
                     ("final", "final teacher adapter (GRPO when enabled, else the DPO one)"),
                     ("prompts", "prompt files"), ("out", "report folder"),
                     ("cache", "generation cache folder (persisted)"), ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
