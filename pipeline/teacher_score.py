"""`relkd teacher-score`: the final teacher scores a batch directly (TaoSR1's deployment), tiered by cumulative
probability; the output is an A/B arm (id, label, tier, probs) plus the measured cost per 1000 pairs."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from pipeline.common import read_labels, setup, stage_command
from relkd.io import write_json, write_jsonl, write_parquet
from relkd.models import resolve

# Room after the prompt for "Reasoning: " + the rationale (max_new_tokens) + "\nLabel:", so the label
# scoring prefix still fits max_prompt_tokens.
_ANSWER_FRAME_TOKENS = 16


def _ids(df: pd.DataFrame) -> list[str]:
    if "id" not in df.columns:
        return [str(i) for i in range(len(df))]
    return [str(i) if v is None or (isinstance(v, float) and v != v) else str(v)
            for i, v in enumerate(df["id"].tolist())]


def run(params_path, batch, prepared, teacher_adapter, prompts_dir, out, cache_dir) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    from relkd.serving.inputs import read_table
    from relkd.serving.triton_model import text_problem
    from relkd.teacher.cache import GenerationCache, generation_key
    from relkd.teacher.engine import make_engine
    from relkd.teacher.judge import Asking, judge, prompts_for
    from relkd.teacher.prompts import UNIFIED, load_perspective
    from relkd.teacher.tiers import cumulative_tiers, top_score

    labels = read_labels(prepared)
    df = read_table(batch)
    missing = [c for c in ("query", "title") if c not in df.columns]
    if missing:
        raise ValueError(f"{batch} has no column {missing} (columns: {list(df.columns)}); teacher scoring needs "
                         "'query' and 'title' (and optionally 'id')")
    ids = _ids(df)
    if len(set(ids)) != len(ids):
        raise ValueError(f"{batch} repeats ids (e.g. {pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]!r}); "
                         "an A/B arm needs one row per id")
    rejects, ok = [], []
    for row, (i, q, t) in enumerate(zip(ids, df["query"].tolist(), df["title"].tolist())):
        problems = [f"{name} {p}" for name, p in (("query", text_problem(q)[1]), ("title", text_problem(t)[1])) if p]
        if problems:
            rejects.append({"row": row, "id": i, "reason": "; ".join(problems)})
        else:
            ok.append(row)
    gold = df["label"].tolist() if "label" in df.columns else [None] * len(df)
    pairs = pd.DataFrame({"pair_id": [ids[r] for r in ok], "query": [str(df["query"].iloc[r]) for r in ok],
                          "title": [str(df["title"].iloc[r]) for r in ok], "label": [gold[r] for r in ok]},
                         dtype=object)

    model_path = resolve(cfg.model)
    start = time.perf_counter()
    teacher = make_engine(cfg, model_path).teacher(teacher_adapter)
    load_s = time.perf_counter() - start
    unified = load_perspective(Path(prompts_dir) / f"{UNIFIED}.yaml")
    prompts = prompts_for(teacher.tokenizer, unified, pairs, labels)
    limit = cfg.max_prompt_tokens - cfg.sampling.max_new_tokens - _ANSWER_FRAME_TOKENS
    lengths = [len(x) for x in teacher.tokenizer(prompts)["input_ids"]] if prompts else []
    long_rows = {k for k, n in enumerate(lengths) if n > limit}
    for k in sorted(long_rows):
        rejects.append({"row": ok[k], "id": ids[ok[k]], "reason": (
            f"prompt has {lengths[k]} tokens, over {limit} (teacher.max_prompt_tokens {cfg.max_prompt_tokens} less "
            f"the answer budget); shorten the text or raise teacher.max_prompt_tokens")})
    keep = [k for k in range(len(ok)) if k not in long_rows]
    pairs, prompts = pairs.iloc[keep].reset_index(drop=True), [prompts[k] for k in keep]
    rows = [ok[k] for k in keep]

    # One rationale per pair (the greedy one); the tiers are cumulative label probabilities, so labels are scored.
    asking = dataclasses.replace(Asking.of(cfg, greedy=True), scored=True)
    cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")
    hits = sum(generation_key(teacher.cache_id, p, 1, asking.sampling, asking.seed, labels) in cache
               for p in prompts)
    start = time.perf_counter()
    records = judge(teacher, cache, pairs, prompts, UNIFIED, labels, asking) if len(pairs) else []
    seconds = time.perf_counter() - start

    probs = [r["probs"] for r in records]
    tiers = cumulative_tiers(probs, labels, cfg.tiers.order, cfg.tiers.thresholds) if records else []
    score = top_score(probs, labels, cfg.tiers.order) if records else []
    scores = pd.DataFrame({
        "row": rows, "id": [r["pair_id"] for r in records],
        # The teacher's decision (label_decision); an unparseable answer takes the label distribution's argmax,
        # which every row has, and says so in label_source.
        "label": [r["label"] if r["label"] is not None else r["scored_label"] for r in records],
        "label_source": ["scored" if r["label"] is None or cfg.label_decision == "score" else "parsed"
                         for r in records],
        "parsed_label": [r["parsed_label"] for r in records],
        "tier": pd.array(tiers, dtype="int64"), "probs": probs, "score": pd.array(score, dtype="float64"),
        "rationale": [r["rationale"] for r in records],
    })
    Path(out).mkdir(parents=True, exist_ok=True)
    write_parquet(Path(out) / "scores.parquet", scores)
    write_jsonl(Path(out) / "rejects.jsonl", sorted(rejects, key=lambda r: r["row"]))
    n = len(records)
    cost = {"pairs": n, "seconds": seconds, "seconds_per_1000_pairs": 1000 * seconds / n if n else None,
            "rationales_per_s": n / seconds if n and seconds > 0 else None, "cache_hits": hits}
    write_json(Path(out) / "cost.json", cost)
    summary = {"rows": len(df), "scored": n, "rejected": len(rejects), "load_seconds": load_s,
               "unparseable_rate": sum(r["parsed_label"] is None for r in records) / n if n else None,
               "tier_share": [float((scores["tier"] == t).mean()) if n else 0.0 for t in range(5)]}
    write_json(Path(out) / "summary.json", summary)
    return {"cost": cost, **summary}


def _main(a) -> None:
    run(a.params, a.batch, a.prepared, a.teacher, a.prompts, a.out, a.cache)


main = stage_command(__doc__, _main, ("batch", "batch file (parquet/CSV/JSONL with query, title, optional id)"),
                     ("prepared", "prepared data folder (labels.json)"), ("teacher", "final teacher adapter"),
                     ("prompts", "prompt files"), ("out", "output folder"),
                     ("cache", "generation cache folder (persisted)"))

if __name__ == "__main__":
    main()
