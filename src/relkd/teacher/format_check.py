"""Did SFT teach the answer format? The trained teacher's answers under each prompt it will be asked under parse.

The unified prompt is checked on validation pairs (greedy) before anything is built on the teacher; a perspective
prompt on the teacher's own answers where they are first used (the judge's samples in teacher_pairs), so no answer
is generated only to be checked.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd

from relkd.eval.metrics import classification_report
from relkd.teacher.asking import Asking
from relkd.teacher.cache import GenerationCache, cached_generate
from relkd.teacher.judge import asked_shots, prompts_for
from relkd.teacher.parsing import parse


def format_report(texts: Sequence[str], gold: Sequence[str], labels: Sequence[str],
                  got: Sequence[str | None] | None = None) -> dict:
    """How many of one prompt's answers parse (`got`: their parsed labels, parsed from `texts` when None) and how
    many of those labels are right (parsed, not scored: the check is about the answer format)."""
    got = [parse(t, labels).label for t in texts] if got is None else list(got)
    rep = classification_report(list(gold), got, labels)
    failed = next((t for t, g in zip(texts, got) if g is None), "")
    return {"n": len(texts), "unparseable_rate": rep["unparseable_rate"], "accuracy": rep["accuracy"],
            "macro_f1": rep["macro_f1"], "example": texts[0] if texts else "", "failed_example": failed}


def format_check(teacher, cache: GenerationCache, pairs: pd.DataFrame, prompts: dict, shots,
                 labels: Sequence[str], asking: Asking) -> dict:
    """The teacher answers `pairs` (greedy) under each prompt in ``prompts`` (name -> Perspective; the few-shot
    shots under the perspective prompts, as teacher_pairs asks): per prompt, :func:`format_report`."""
    greedy = dataclasses.replace(asking.greedy(), n=1)
    out = {}
    for name, prompt in prompts.items():
        asked = prompts_for(teacher.tokenizer, prompt, pairs, labels, asked_shots(prompt, shots))
        texts = [row[0] for row in cached_generate(teacher, cache, asked, greedy, labels=labels)]
        out[name] = format_report(texts, pairs["label"], labels)
    return out


def judged_format(records: Sequence[dict], labels: Sequence[str]) -> dict:
    """:func:`format_report` per perspective of a judge's records (every sample counts)."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["perspective"], []).append(r)
    return {name: format_report([r["text"] for r in rs], [r["gold"] for r in rs], labels,
                                [r["parsed_label"] for r in rs]) for name, rs in by.items()}


def require_format(check: dict, max_unparseable: float, train_metrics: dict) -> None:
    """Fail loudly, naming the worst prompt and one of its answers, when more than `max_unparseable` of the
    answers under any prompt have no parseable label: the answer format was not learned."""
    over = {k: v for k, v in check.items() if v["unparseable_rate"] > max_unparseable}
    if not over:
        return
    name, worst = max(over.items(), key=lambda kv: kv[1]["unparseable_rate"])
    raise SystemExit(
        f"after SFT, {100 * worst['unparseable_rate']:.0f}% of the teacher's {worst['n']} answers under the {name} "
        f"prompt have no parseable label (limit teacher.sft.max_unparseable = {max_unparseable}; over it: "
        f"{sorted(over)}): the answer format was not learned (SFT loss "
        f"{train_metrics.get('first_loss')} -> {train_metrics.get('last_loss')} over {train_metrics.get('steps')} "
        f"steps). Raise teacher.sft.epochs or teacher.sft.lr, give it more examples, or (a perspective prompt) "
        f"raise teacher.sft.perspective_share. One answer: {worst['failed_example'][:160]!r}")
