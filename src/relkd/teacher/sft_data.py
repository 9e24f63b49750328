"""The SFT set: consistent rationales of the few-shot generations, label-hinted ones for other pairs, prompted."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from relkd.teacher import selection
from relkd.teacher.judge import prompted_examples
from relkd.teacher.prompts import Perspective, sft_prompt_names


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


def posed(tokenizer, examples: list[dict], train: pd.DataFrame, prompts: dict[str, Perspective], labels: Sequence[str],
          shots, share: float, seed: int) -> list[dict]:
    """Each example posed under a prompt (a `share` of them under a perspective prompt with the few-shot shots,
    the rest under the unified one: :func:`relkd.teacher.prompts.sft_prompt_names`), as prompt-completion
    examples with their prompt's name as ``group`` (a training batch holds one group)."""
    names = sft_prompt_names(len(examples), share, seed)
    pairs = train.loc[[e["pair_id"] for e in examples]].reset_index(drop=True)
    data = prompted_examples(tokenizer, [prompts[n] for n in names], pairs, labels,
                             [e["rationale"] for e in examples], [e["label"] for e in examples], shots)
    return [dict(e, **d, prompt_name=n, group=n) for e, d, n in zip(examples, data, names)]
