"""Did SFT teach the answer format? The trained teacher answers validation pairs under each prompt; its answers parse."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd

from relkd.eval.metrics import classification_report
from relkd.teacher.cache import GenerationCache, cached_generate
from relkd.teacher.asking import Asking
from relkd.teacher.judge import asked_shots, prompts_for
from relkd.teacher.parsing import parse


def format_check(teacher, cache: GenerationCache, pairs: pd.DataFrame, prompts: dict, shots,
                 labels: Sequence[str], asking: Asking) -> dict:
    """The teacher answers `pairs` (greedy) under each prompt in ``prompts`` (name -> Perspective; the few-shot
    shots under the perspective prompts, as teacher_pairs asks): per prompt, how many answers parse and how many
    of their labels are right (parsed, not scored: the check is about the answer format)."""
    greedy = dataclasses.replace(asking.greedy(), n=1)
    out = {}
    for name, prompt in prompts.items():
        asked = prompts_for(teacher.tokenizer, prompt, pairs, labels, asked_shots(prompt, shots))
        texts = [row[0] for row in cached_generate(teacher, cache, asked, greedy, labels=labels)]
        got = [parse(t, labels).label for t in texts]
        rep = classification_report(list(pairs["label"]), got, labels)
        failed = next((t for t, g in zip(texts, got) if g is None), "")
        out[name] = {"n": len(texts), "unparseable_rate": rep["unparseable_rate"], "accuracy": rep["accuracy"],
                     "macro_f1": rep["macro_f1"], "example": texts[0] if texts else "", "failed_example": failed}
    return out


def require_format(check: dict, max_unparseable: float, train_metrics: dict) -> None:
    """Fail loudly, naming the worst prompt and one of its answers, when more than `max_unparseable` of the
    answers under any prompt have no parseable label: the answer format was not learned."""
    over = {k: v for k, v in check.items() if v["unparseable_rate"] > max_unparseable}
    if not over:
        return
    name, worst = max(over.items(), key=lambda kv: kv[1]["unparseable_rate"])
    raise SystemExit(
        f"after SFT, {100 * worst['unparseable_rate']:.0f}% of the answers under the {name} prompt on "
        f"{worst['n']} validation pairs have no parseable label (limit teacher.sft.max_unparseable = "
        f"{max_unparseable}; over it: {sorted(over)}): the answer format was not learned (SFT loss "
        f"{train_metrics.get('first_loss')} -> {train_metrics.get('last_loss')} over {train_metrics.get('steps')} "
        f"steps). Raise teacher.sft.epochs or teacher.sft.lr, give it more examples, or (a perspective prompt) "
        f"raise teacher.sft.perspective_share. One answer: {worst['failed_example'][:160]!r}")
