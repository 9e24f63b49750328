"""Stage `teacher_eval`: the teacher table on test pairs. Few-shot / SFT / SFT+DPO teachers, MPCoT and single
perspectives; with teacher.single, the teachers trained on one perspective (SFT, + its own DPO, + MPCoT's DPO, the
size-matched DPO); with teacher.progressive, the ProgressiveCoT teachers; with teacher.eval.oracle_k, the
multi-perspective oracle against the single-perspective pass@k control. One engine serves every adapter."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.common import read_labels, read_split, setup, stage_command
from relkd.data.splits import balanced_sample
from relkd.eval.metrics import classification_report
from relkd.eval.stats import bootstrap_diff_ci
from relkd.eval.tables import (
    MPCOT,
    MPCOT_DPO,
    SINGLE,
    SIZE_MATCHED,
    TEACHER_COLUMNS,
    TRAINED_SINGLE,
    ablation_table,
    teacher_table,
    to_markdown,
)
from relkd.io import read_jsonl, write_json, write_jsonl, write_text
from relkd.models import resolve
from relkd.teacher import selection
from relkd.teacher.cache import GenerationCache
from relkd.teacher.engine import make_engine
from relkd.teacher.judge import Asking, judge, judge_perspectives, majority, prompts_for
from relkd.teacher.parsing import error_kind
from relkd.teacher.prompts import PERSPECTIVES, UNIFIED, Shot, load_perspective, load_perspectives

DELTA_COLUMNS = ["ΔACC (95% CI)", "ΔF1 (95% CI)"]


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
            "parse_errors": dict(Counter(error_kind(r["error"]) for r in first if r["error"])),
            "preds": [r["label"] for r in first]}


def evaluate(cfg, teacher, stage: str, trained: bool, test, labels, shots, perspectives, unified,
             cache) -> tuple[list, list]:
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


def other_teachers(cfg, single: Path, progressive: Path) -> list[tuple[str, str, str | None, Path]]:
    """(kind, stage, perspective, adapter) of the teachers beyond MPCoT's: the single-perspective ones (asked under
    their own prompt) and the ProgressiveCoT ones (asked under the unified prompt)."""
    out = []
    for p in cfg.single.perspectives:
        out += [(TRAINED_SINGLE, "SFT", p, single / p / "sft"),
                (TRAINED_SINGLE, "SFT+DPO", p, single / p / "dpo_aligned"),
                (TRAINED_SINGLE, MPCOT_DPO, p, single / p / "dpo_mpcot")]
        if p in cfg.single.size_matched:
            out.append((SIZE_MATCHED, "SFT+DPO", p, single / p / "dpo_size_matched"))
    return out + [(name, "SFT", None, progressive / name) for name in cfg.progressive]


def oracle_block(cfg, engine, test, labels, shots, perspectives, cache) -> tuple[dict, list]:
    """The paper's oracle comparison on the test pairs: the untrained teacher, few-shot, teacher.eval.oracle_k samples
    per perspective at teacher.sampling; the oracle's and the single pass's Δ vs pass@k with paired intervals."""
    k = cfg.eval.oracle_k
    per = judge_perspectives(engine.teacher(), cache, test, perspectives, PERSPECTIVES, labels, shots,
                             Asking.of(cfg, n=k))
    records = [dict(r, stage="oracle") for name in PERSPECTIVES for r in per[name]]
    out = selection.oracle_comparison(records, k)
    hits, truth = out.pop("hits"), [True] * out["n"]
    for name in ("oracle", "single_pass"):
        ci = bootstrap_diff_ci(truth, hits[f"pass@{k}"], hits[name], "accuracy", [True, False], n_boot=1000, seed=0)
        out[f"{name}_minus_pass@{k}"] = {"diff": ci["diff"], "ci": [ci["low"], ci["high"]]}
    out.pop("pair_ids")
    return out, records


def oracle_text(o: dict) -> str:
    k, ci = o["k"], o[f"oracle_minus_pass@{o['k']}"]
    return (f"\n## Oracle vs pass@{k} vs single pass (section 3.2; the paper: 77.52 / 72.59 / 64.61 on AliExpress)\n\n"
            f"The untrained teacher, few-shot, {k} samples per test pair and perspective (teacher.sampling): "
            f"multi-perspective oracle (right when any perspective's first sample is) **{100 * o['oracle']:.2f}**, "
            f"single-perspective pass@{k} of {o['control_perspective']} (the perspective whose first sample is right "
            f"most often; any of its first {k} samples) **{100 * o[f'pass@{k}']:.2f}**, its single pass "
            f"**{100 * o['single_pass']:.2f}**; oracle - pass@{k} {100 * ci['diff']:+.2f} [95% CI "
            f"{100 * ci['ci'][0]:+.2f}, {100 * ci['ci'][1]:+.2f}] on {o['n']} pairs.\n")


def run(params_path, prepared, fewshot, sft, dpo, final, single, progressive, prompts_dir, out, cache_dir,
        metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    labels = read_labels(prepared)
    test = balanced_sample(read_split(prepared, "test"), cfg.eval.n_test_pairs, cfg.fewshot.seed)
    gold = list(test["label"])
    shots = [Shot(**s) for s in read_jsonl(Path(fewshot) / "shots.jsonl")]
    perspectives = load_perspectives(prompts_dir)
    unified = load_perspective(Path(prompts_dir) / f"{UNIFIED}.yaml")
    cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")
    rows, records = [], []
    stages = [("few-shot", None), ("SFT", sft), ("SFT+DPO", dpo)]
    if cfg.grpo.enabled:  # TaoSR1's RL stage on top (teacher_grpo); its rows join the table
        stages.append(("SFT+DPO+GRPO", final))
    engine = make_engine(cfg, resolve(cfg.model))  # one engine; each adapter is a teacher it serves
    for stage, adapter in stages:
        r, g = evaluate(cfg, engine.teacher(adapter), stage, adapter is not None, test, labels, shots, perspectives,
                        unified, cache)
        rows += r
        records += g
    asking = Asking.of(cfg, greedy=cfg.eval.greedy)
    for kind, stage, p, adapter in other_teachers(cfg, Path(single), Path(progressive)):
        teacher = engine.teacher(adapter)
        prompt, name = (perspectives[p], p) if p else (unified, UNIFIED)
        got = judge(teacher, cache, test, prompts_for(teacher.tokenizer, prompt, test, labels, shots if p else ()),
                    name, labels, asking)
        rows.append(row(got, labels, stage, kind, p))
        records += [dict(r, stage=stage, teacher=kind) for r in got]
    table = teacher_table(rows, gold=gold, labels=labels)
    ablation = ablation_table(rows, gold, labels) if cfg.single.perspectives else []
    oracle = None
    if cfg.eval.oracle_k:
        oracle, got = oracle_block(cfg, engine, test, labels, shots, perspectives, cache)
        records += got
    Path(out).mkdir(parents=True, exist_ok=True)
    write_jsonl(Path(out) / "generations.jsonl", records)
    columns = ["model", *TEACHER_COLUMNS[1:], *DELTA_COLUMNS, "what"]
    write_text(Path(out) / "teacher_table.md",
               f"# Teacher on {len(test)} test pairs ({cfg.model})\n\n"
               + to_markdown(table, columns) + "\n"
               "Δ: difference from MPCoT (SFT+DPO) on the same test pairs, 95% paired bootstrap interval over the "
               "pairs; `what`: what the row's teacher was trained on and how it is asked.\n\n"
               + ("## Single-perspective SFT + MPCoT DPO (Table 3)\n\nΔ vs that perspective's SFT teacher.\n\n"
                  + to_markdown(ablation, ["model", *TEACHER_COLUMNS[1:], *DELTA_COLUMNS, "what"]) + "\n"
                  if ablation else "")
               + (oracle_text(oracle) if oracle else "") + "\n"
               "All rows (accuracy_parsed: label from the answer's Label line; accuracy_scored: highest "
               "label likelihood after the rationale, empty with teacher.label_scores off; `label_decision` picks "
               "which one ACC uses):\n\n"
               + to_markdown(rows, ["stage", "teacher", "perspective", "accuracy", "macro_f1",
                                    "unparseable_rate", "accuracy_parsed", "accuracy_scored"]) + "\n")
    write_json(Path(out) / "rows.json", rows)
    metrics = {"n_test_pairs": len(test),
               "table": {r["model"]: {k: r[k] for k in ("accuracy", "macro_f1", "unparseable_rate", "delta_accuracy",
                                                          "delta_macro_f1") if k in r} for r in table},
               "single_perspective": {f"{r['stage']}/{r['perspective']}": {
                   k: r[k] for k in ("accuracy", "macro_f1", "unparseable_rate", "accuracy_parsed", "accuracy_scored",
                                     "parse_errors")}
                   for r in rows if r["teacher"] == SINGLE}}
    if ablation:
        metrics["ablation"] = {r["model"]: {k: r[k] for k in ("accuracy", "macro_f1", "delta_accuracy",
                                                               "delta_macro_f1") if k in r} for r in ablation}
    if oracle:
        metrics["oracle"] = oracle
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.prepared, a.fewshot, a.sft, a.dpo, a.final, a.single, a.progressive, a.prompts, a.out, a.cache,
        a.metrics)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"),
                     ("fewshot", "teacher_fewshot output (shots)"), ("sft", "SFT adapter"), ("dpo", "DPO adapter"),
                     ("final", "final teacher adapter (GRPO when enabled, else the DPO one)"),
                     ("single", "folder of the single-perspective teachers (<perspective>/sft, dpo_aligned, ...; read "
                                "for teacher.single)"),
                     ("progressive", "folder of the ProgressiveCoT teachers (read for teacher.progressive)"),
                     ("prompts", "prompt files"), ("out", "report folder"),
                     ("cache", "generation cache folder (persisted)"), ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
