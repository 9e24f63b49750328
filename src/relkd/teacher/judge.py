"""A teacher judges pairs under one prompt: k cached rationales each, parsed strictly, labels scored.

Every sample becomes one record (a plain dict, one JSONL line in the stages' outputs):
``pair_id, perspective, sample, text, rationale, parsed_label, error, probs, scored_label, label, gold``.
``parsed_label`` is what the answer's ``Label:`` line says (None when unparseable, never guessed);
``probs`` is the teacher's distribution over the label set after its own rationale (log-likelihood
of each label string, softmaxed) and ``scored_label`` its argmax, both None when the judge was asked not to
score (``scored=False``: teacher.label_scores off with label_decision 'parse'); ``label`` is whichever of the
two ``label_decision`` picks, and is what the selection functions and metrics read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from relkd.teacher.asking import Asking
from relkd.teacher.cache import GenerationCache, cached_generate
from relkd.teacher.engine import label_distribution
from relkd.teacher.parsing import LABEL_KEY, REASONING_KEY, normalise, parse
from relkd.teacher.prompts import UNIFIED, Perspective, answer_text, render, render_messages


def prompts_for(tokenizer, perspective: Perspective, pairs: pd.DataFrame, labels: Sequence[str],
                shots=()) -> list[str]:
    return [render(tokenizer, render_messages(perspective, q, t, labels, shots))
            for q, t in zip(pairs["query"], pairs["title"])]


def score_prefix(prompt: str, rationale: str) -> str:
    """The text after which label strings are scored: the prompt, the teacher's own rationale, then
    ``Label:`` with no trailing space (the label is scored as ``" " + label``)."""
    head = f"{REASONING_KEY} {rationale}\n" if rationale else ""
    return f"{prompt}{head}{LABEL_KEY}"


def _score_key(model_id: str, prefix: str, labels: Sequence[str]) -> str:
    payload = json.dumps({"score": model_id, "prefix": prefix, "labels": list(labels)}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def cached_scores(teacher, cache: GenerationCache, prefixes: Sequence[str], labels: Sequence[str],
                  batch_size: int, progress: bool = True) -> np.ndarray:
    """``teacher.score_labels`` for the prefixes the cache lacks, a batch at a time (resumable)."""
    keys = [_score_key(teacher.cache_id, p, labels) for p in prefixes]
    todo = list({k: p for k, p in zip(keys, prefixes) if k not in cache}.items())
    with tqdm(total=len(todo), desc="scoring labels", unit="answer", disable=not progress or not todo) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            scores = teacher.score_labels([p for _, p in batch], labels)
            cache.put_many([(k, [json.dumps(s.tolist())], {"kind": "label_scores"}) for (k, _), s in zip(batch, scores)])
            bar.update(len(batch))
    return np.array([json.loads(cache.get(k)[0]) for k in keys]).reshape(len(prefixes), len(labels))


def judge(teacher, cache: GenerationCache, pairs: pd.DataFrame, prompts: Sequence[str], perspective: str,
          labels: Sequence[str], asking: Asking) -> list[dict]:
    """``asking.n`` samples per pair under the given rendered prompts; one record per sample. With
    ``asking.scored`` false no label is scored: probs and scored_label are None."""
    if len(prompts) != len(pairs):
        raise ValueError(f"{len(prompts)} prompts for {len(pairs)} pairs")
    decision = asking.decision
    if decision == "score" and not asking.scored:
        raise ValueError("label_decision 'score' decides by the label scores: judge needs scored=True")
    texts = cached_generate(teacher, cache, prompts, asking, labels=labels)
    parsed = [[parse(t, labels) for t in row] for row in texts]
    probs = None
    if asking.scored:
        prefixes = [score_prefix(p, a.rationale) for p, row in zip(prompts, parsed) for a in row]
        probs = label_distribution(cached_scores(teacher, cache, prefixes, labels, asking.batch_size))
    records, i = [], 0
    for (_, pair), row_texts, row_parsed in zip(pairs.iterrows(), texts, parsed):
        for s, (text, a) in enumerate(zip(row_texts, row_parsed)):
            p = None if probs is None else probs[i]
            i += 1
            best = None if p is None else labels[int(np.argmax(p))]
            records.append({
                "pair_id": pair["pair_id"], "perspective": perspective, "sample": s, "text": text,
                "rationale": a.rationale, "parsed_label": a.label, "error": a.error,
                "probs": None if p is None else [round(float(x), 6) for x in p], "scored_label": best,
                "label": a.label if decision == "parse" else best, "gold": pair["label"],
            })
    return records


def majority(records: list[dict], labels: Sequence[str]) -> list[dict]:
    """One vote per perspective (its first sample) per pair: the few-shot MPCoT row, the three perspectives of
    the untrained model combined without training.

    Decided like every other row of the teacher table: ``parsed_label`` is the vote of the parsed labels
    (ties to the highest summed probability when the records were scored, else to the label set's order),
    None when no perspective parsed (then the pair is unparseable and counts as wrong, never rescued by the
    label scores); ``scored_label`` is the vote of the scored labels (None unscored); ``label`` is the one
    ``records``' own ``label`` fields were decided by.
    """
    by_pair: dict[str, list[dict]] = {}
    for r in records:
        if r["sample"] == 0:
            by_pair.setdefault(r["pair_id"], []).append(r)
    out = []
    for pair_id, rs in by_pair.items():
        unscored = any(r["probs"] is None for r in rs)
        mass = np.zeros(len(labels)) if unscored else np.sum([np.asarray(r["probs"]) for r in rs], axis=0)

        def vote(field: str) -> str | None:
            votes = {lab: 0 for lab in labels}
            for r in rs:
                if r[field] is not None:
                    votes[r[field]] += 1
            if not any(votes.values()):
                return None
            return max(labels, key=lambda lab: (votes[lab], mass[labels.index(lab)]))

        parsed, scored, decided = vote("parsed_label"), vote("scored_label"), vote("label")
        out.append({"pair_id": pair_id, "perspective": "mpcot_vote", "sample": 0, "label": decided,
                    "gold": rs[0]["gold"], "rationale": "", "parsed_label": parsed,
                    "error": None if parsed is not None else "no perspective parsed",
                    "probs": None if unscored else (mass / max(len(rs), 1)).round(6).tolist(),
                    "scored_label": scored})
    return out


# The hinted answer is started for the model ("Reasoning: The query"), so what it writes is about the pair;
# a model as small as the embedded one otherwise answers "The correct label is: X." and nothing else.
HINT_START = f"{REASONING_KEY} The query"
_ECHO = ("the answer", "the label", "correct label", "label is")
_MIN_HINT_WORDS = 5
# A training target must be an answer the trained teacher can write within teacher.sampling.max_new_tokens:
# a 35-word rationale of product codes is about 70 tokens, then the label line.
MAX_HINT_WORDS = 35
_SENTENCE_END = (".", "!", "?")


def hinted_prompts(tokenizer, perspective: Perspective, pairs: pd.DataFrame, labels: Sequence[str]) -> list[str]:
    """Label-hinted prompts ("the answer is X; give the reasoning that leads to it"), the answer started with
    ``HINT_START``: STaR-style rationalisation, for a teacher too weak to reason its way to the label."""
    out = []
    for q, t, y in zip(pairs["query"], pairs["title"], pairs["label"]):
        messages = render_messages(perspective, q, t, labels)
        messages[-1]["content"] += f"\nThe answer is {y}. Give the reasoning that leads to it."
        out.append(render(tokenizer, messages) + HINT_START)
    return out


def _repetitive(sentence: str) -> bool:
    """A degenerate loop of a small model: one word three times running ("Zen Zen Zen"), or a long sentence
    made of few distinct words."""
    words = normalise(sentence).split()
    if any(a == b == c for a, b, c in zip(words, words[1:], words[2:])):
        return True
    return len(words) >= 10 and len(set(words)) < 0.5 * len(words)


def clean_hinted(completion: str, labels: Sequence[str]) -> tuple[str, str | None]:
    """The rationale of a hinted answer (``HINT_START`` + completion), or ``("", reason)`` when it must not be
    used. A rationale gives reasons from the pair and never names a class (a hinted rationale that says
    the label would make its embedding an embedding of the label name), and it is an answer the trained
    teacher can write within its token cap. So: sentences that name a class or say "the answer/label
    is" are dropped, and so are loops ("Zen Zen Zen") and a last sentence cut off by the cap (no
    closing ".", "!" or "?"); whole sentences are kept up to ``MAX_HINT_WORDS`` words; what is left must
    have at least 5 words. Reasons: "names the label", "unfinished", "repetitive", "too long", "too short"."""
    head = HINT_START[len(REASONING_KEY):].strip()
    first = (head + completion).split("\n", 1)[0]
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(first.split())) if s]
    classes = [normalise(lab) for lab in labels]
    kept, why, n_words = [], None, 0
    for sentence in sentences:
        norm = normalise(sentence)
        if any(re.search(rf"(?<!\w){re.escape(c)}(?!\w)", norm) for c in classes) or any(e in norm for e in _ECHO):
            why = why or "names the label"
            continue
        if not sentence.endswith(_SENTENCE_END):
            why = why or "unfinished"
            continue
        if _repetitive(sentence):
            why = why or "repetitive"
            continue
        words = len(sentence.split())
        if n_words + words > MAX_HINT_WORDS:
            why = why or "too long"
            break
        kept.append(sentence)
        n_words += words
    text = " ".join(kept).strip()
    if n_words < _MIN_HINT_WORDS:
        return "", why if not kept and why else "too short"
    return text, None


def hinted_rationales(teacher, cache: GenerationCache, pairs: pd.DataFrame, perspective: Perspective,
                      labels: Sequence[str], asking: Asking) -> list[tuple[str, str | None]]:
    """One greedy label-hinted rationale per pair, as ``clean_hinted`` returns it: (rationale, None) or
    ("", why it was dropped)."""
    prompts = hinted_prompts(teacher.tokenizer, perspective, pairs, labels)
    texts = cached_generate(teacher, cache, prompts, dataclasses.replace(asking.greedy(), n=1), labels=labels)
    return [clean_hinted(row[0], labels) for row in texts]


def asked_shots(perspective: Perspective, shots) -> tuple:
    """The shots a prompt is asked with: none under the unified prompt (the trained teacher's MPCoT, annotate),
    the few-shot stage's under a perspective prompt (teacher_pairs, the single-perspective rows)."""
    return () if perspective.name == UNIFIED else tuple(shots)


def prompted_examples(tokenizer, prompts: Sequence[Perspective], pairs: pd.DataFrame, labels: Sequence[str],
                      rationales: Sequence[str], answers: Sequence[str], shots=()) -> list[dict]:
    """SFT prompt-completion examples, example i under ``prompts[i]``, each rendered as the trained teacher is
    asked later: the unified prompt without shots (teacher_eval's MPCoT row, annotate), a perspective prompt
    with the few-shot stage's shots (teacher_pairs, teacher_eval's single-perspective rows)."""
    if not len(prompts) == len(pairs) == len(rationales) == len(answers):
        raise ValueError(f"{len(prompts)} prompts, {len(pairs)} pairs, {len(rationales)} rationales and "
                         f"{len(answers)} answers: pass one of each per example")
    return [{"prompt": render(tokenizer, render_messages(p, q, t, labels, asked_shots(p, shots))),
             "completion": answer_text(r, y)}
            for p, q, t, r, y in zip(prompts, pairs["query"], pairs["title"], rationales, answers)]


def judge_perspectives(teacher, cache: GenerationCache, pairs: pd.DataFrame, perspectives: dict,
                       names: Sequence[str], labels: Sequence[str], shots, asking: Asking) -> dict[str, list[dict]]:
    """`judge` under each named perspective prompt (with the same shots): perspective -> records."""
    return {name: judge(teacher, cache, pairs, prompts_for(teacher.tokenizer, perspectives[name], pairs, labels, shots),
                        name, labels, asking) for name in names}
