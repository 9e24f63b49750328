"""Selecting from the teacher's generations: consistency filter, SFT data, conflict set, preference pairs, metrics.

A record is one generation: a mapping or an object with ``pair_id``, ``perspective``, ``sample`` (index
of the attempt; the lowest index is the greedy or first sample), ``rationale``, ``label`` (the parsed
label, None when unparseable), ``gold``, and optionally ``text`` (the raw output). ``Generation`` is
such an object. A sample is *correct* when its label equals the gold label; an unparseable sample is
wrong. Every function is pure and deterministic (random choices take a seed).
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from relkd.eval.metrics import macro_f1
from relkd.teacher.prompts import answer_text


@dataclass(frozen=True)
class Generation:
    """One parsed generation of one perspective for one pair."""

    pair_id: str
    perspective: str
    sample: int
    rationale: str
    label: str | None
    gold: str
    text: str | None = None


class SFTExample(NamedTuple):
    """One SFT target for the unified prompt: the pair (by id), a rationale and its (gold) label."""

    pair_id: str
    rationale: str
    label: str


class Conflicts(NamedTuple):
    """The conflict set (pairs with a failing perspective), the part of it that has a correct rationale
    to choose, and which perspectives fail on each conflicting pair."""

    conflict: frozenset
    resolvable: frozenset
    failing: dict


def _get(record: Any, field: str, default: Any = ...) -> Any:
    if isinstance(record, dict):
        if field in record:
            return record[field]
    elif hasattr(record, field):
        return getattr(record, field)
    if default is ...:
        raise KeyError(f"record {record!r} has no field {field!r}; a record needs pair_id, perspective, "
                       "sample, rationale, label, gold")
    return default


def is_correct(record: Any) -> bool:
    label = _get(record, "label")
    return label is not None and label == _get(record, "gold")


def _rationale(record: Any) -> str:
    return " ".join((_get(record, "rationale") or "").split())


def _grouped(records: Iterable[Any]) -> dict[str, dict[str, list[Any]]]:
    """pair_id -> perspective -> records sorted by sample index; checks one gold label per pair."""
    groups: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    gold: dict[str, str] = {}
    for rec in records:
        pid = _get(rec, "pair_id")
        g = _get(rec, "gold")
        if gold.setdefault(pid, g) != g:
            raise ValueError(f"pair {pid!r} has two gold labels, {gold[pid]!r} and {g!r}; "
                             "the generations come from different datasets")
        groups[pid][_get(rec, "perspective")].append(rec)
    if not groups:
        raise ValueError("no records")
    for by_perspective in groups.values():
        for recs in by_perspective.values():
            recs.sort(key=lambda r: _get(r, "sample"))
    return groups


# ----------------------------------------------------------------------------- SFT data (paper 3.2.1)
def consistency_filter(records: Iterable[Any]) -> list[Any]:
    """The records whose label equals the gold label (paper eq. 1: D_user, D_struct, D_rule together)."""
    return [rec for rec in records if is_correct(rec)]


def sft_examples(kept: Iterable[Any]) -> list[SFTExample]:
    """The union of the kept records as unified-prompt SFT targets (paper eq. 2), in input order.

    A (pair, rationale) repeated by several samples or perspectives is one example. Empty rationales
    are dropped: a target without reasoning would teach the unified prompt to skip thinking.
    """
    seen: set[tuple[str, str]] = set()
    out = []
    for rec in kept:
        if not is_correct(rec):
            raise ValueError(f"record {rec!r} is not label-consistent; pass consistency_filter's output")
        key = (_get(rec, "pair_id"), _rationale(rec))
        if key[1] and key not in seen:
            seen.add(key)
            out.append(SFTExample(key[0], key[1], _get(rec, "label")))
    return out


def class_balance(kept: Iterable[Any], labels: Sequence[str]) -> dict[str, int]:
    """Kept records (or SFT examples) per class, every class listed: a small teacher's consistent samples
    can be as lopsided as its guesses, and the caller logs this to see it."""
    counts = Counter(_get(rec, "label") for rec in kept)
    unknown = sorted(set(counts) - set(labels), key=str)
    if unknown:
        raise ValueError(f"labels {unknown} are not in the label set {tuple(labels)}")
    return {label: counts.get(label, 0) for label in labels}


# ------------------------------------------------------------------ conflict set and DPO (paper 3.2.2)
def conflict_set(records: Iterable[Any]) -> Conflicts:
    """Pairs on which at least one perspective fails, i.e. has no correct sample among its k attempts.

    ``resolvable`` is the part of the conflict set where some perspective has a correct sample with a
    non-empty rationale, the only pairs a preference pair can be built for. Perspectives with no records
    for a pair are not judged on it.
    """
    conflict, resolvable, failing = set(), set(), {}
    for pid, by_perspective in _grouped(records).items():
        fails = tuple(sorted(p for p, recs in by_perspective.items() if not any(map(is_correct, recs))))
        if fails:
            conflict.add(pid)
            failing[pid] = fails
            if any(is_correct(r) and _rationale(r) for recs in by_perspective.values() for r in recs):
                resolvable.add(pid)
    return Conflicts(frozenset(conflict), frozenset(resolvable), failing)


def _completion(record: Any) -> str:
    """A parseable answer in the canonical format (chosen and rejected then differ in content, not in
    layout); an unparseable one as the model wrote it, since its form is what is wrong with it."""
    if _get(record, "label") is not None:
        return answer_text(_rationale(record), _get(record, "label"))
    return _get(record, "text", None) or _rationale(record)


def preference_pairs(records: Iterable[Any], seed: int, max_per_pair: int) -> list[dict]:
    """Cross-perspective preference pairs for the resolvable part of the conflict set.

    For a pair, each failing perspective offers its wrong samples (wrong label or unparseable) as
    rejected answers; chosen answers are the correct samples with a rationale from any perspective.
    Candidates (rejected, chosen) with identical texts are counted once; up to ``max_per_pair`` are
    drawn per pair, taking the failing perspectives in turn so each gets its share. The draw for a pair
    depends only on ``seed`` and that pair's records. Output order: pair_id, then draw order.
    """
    if max_per_pair < 1:
        raise ValueError(f"max_per_pair must be >= 1, got {max_per_pair}")
    records = list(records)
    groups, conflicts = _grouped(records), conflict_set(records)
    out = []
    for pid in sorted(conflicts.resolvable):
        by_perspective = groups[pid]
        chosen = [r for p in sorted(by_perspective) for r in by_perspective[p] if is_correct(r) and _rationale(r)]
        out += _drawn(pid, [by_perspective[p] for p in conflicts.failing[pid]], chosen, seed, max_per_pair)
    return out


def aligned_pairs(records: Iterable[Any], seed: int, max_per_pair: int) -> list[dict]:
    """Perspective-aligned preference pairs, the DPO data of a single-perspective teacher: for a pair on which the
    k samples of one perspective disagree (some right, some wrong), rejected = a wrong sample and chosen = a right
    one with a rationale, both of that same perspective. Drawn as :func:`preference_pairs` draws (seeded per pair,
    identical texts once, up to ``max_per_pair``); records of several perspectives give each its own pairs."""
    if max_per_pair < 1:
        raise ValueError(f"max_per_pair must be >= 1, got {max_per_pair}")
    out = []
    for pid, by_perspective in sorted(_grouped(records).items()):
        for p, recs in sorted(by_perspective.items()):
            chosen = [r for r in recs if is_correct(r) and _rationale(r)]
            wrong = [r for r in recs if not is_correct(r)]
            if chosen and wrong:
                out += _drawn(pid, [wrong], chosen, f"{seed}:{p}", max_per_pair)
    return out


def _drawn(pid: str, rejected_groups: Sequence[Sequence[Any]], chosen: Sequence[Any], seed, max_per_pair: int) -> list:
    """Up to `max_per_pair` (rejected, chosen) pairs for one pair: each group of rejected samples against every
    chosen one, identical texts once, shuffled (seeded by `seed` and the pair), the groups taken in turn."""
    rng = random.Random(f"{seed}:{pid}")
    queues = []
    for group in rejected_groups:
        seen, cands = set(), []
        for rej in group:
            for cho in chosen:
                key = (_completion(rej), _completion(cho))
                if key not in seen:
                    seen.add(key)
                    cands.append((rej, cho, key))
        rng.shuffle(cands)
        queues.append(cands)
    drawn = []
    while len(drawn) < max_per_pair and any(queues):
        for queue in queues:
            if queue and len(drawn) < max_per_pair:
                drawn.append(queue.pop(0))
    return [{
        "pair_id": pid,
        "prompt_perspective": _get(rej, "perspective"),
        "chosen": chosen_text,
        "rejected": rejected,
        "chosen_perspective": _get(cho, "perspective"),
        "rejected_perspective": _get(rej, "perspective"),
        "chosen_label": _get(cho, "label"),
        "rejected_label": _get(rej, "label"),
        "chosen_sample": _get(cho, "sample"),
        "rejected_sample": _get(rej, "sample"),
    } for rej, cho, (rejected, chosen_text) in drawn]


def widened_pairs(ask, pool, n_start: int, target: int, draw_seed: int, seed: int,
                  max_per_pair: int) -> tuple[list[dict], list, int]:
    """Exactly `target` perspective-aligned pairs (:func:`aligned_pairs`, then :func:`size_matched`), the conflict
    search widened until there are enough: `ask(pairs frame) -> records` judges a class-balanced draw of `pool`
    (relkd.data.splits.balanced_sample, `draw_seed`) of `n_start` pairs, then twice as many (a draw that holds the
    smaller one: with a generation cache only the new pairs cost), up to all of `pool`. Returns (pairs, the last
    draw's records, its size)."""
    from relkd.data.splits import balanced_sample

    n = min(n_start, len(pool))
    while True:
        records = ask(balanced_sample(pool, n, draw_seed))
        pairs = aligned_pairs(records, seed, max_per_pair)
        if len(pairs) >= target or n >= len(pool):
            return size_matched(pairs, target, seed), records, n
        n = min(len(pool), 2 * n)


def size_matched(pairs: Sequence[dict], target: int, seed: int) -> list[dict]:
    """Exactly `target` of `pairs` (a seeded draw, in their order): the size-matched single-perspective DPO set,
    as many pairs as MPCoT's. Fewer than `target` pairs is an error naming the shortfall."""
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    if len(pairs) < target:
        raise ValueError(f"{len(pairs)} preference pairs, fewer than the {target} to match: search more pairs "
                         "(a larger training split) or sample more per pair (teacher.pairs.k)")
    keep = set(random.Random(seed).sample(range(len(pairs)), target))
    return [p for i, p in enumerate(pairs) if i in keep]


def pair_counts(pairs: Iterable[dict]) -> dict[tuple[str, str], int]:
    """Preference pairs per (rejected perspective -> chosen perspective), sorted by key."""
    counts = Counter((p["rejected_perspective"], p["chosen_perspective"]) for p in pairs)
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------------------- metrics
def _first(records: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """pair_id -> perspective -> its first (lowest-index) sample."""
    return {pid: {p: recs[0] for p, recs in by_p.items()} for pid, by_p in _grouped(records).items()}


def accuracy_by_perspective(records: Iterable[Any]) -> dict[str, float]:
    """Accuracy of each perspective's first sample over the pairs it was run on."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for by_p in _first(records).values():
        for p, rec in by_p.items():
            hits[p].append(is_correct(rec))
    return {p: sum(h) / len(h) for p, h in sorted(hits.items())}


def oracle_accuracy(records: Iterable[Any]) -> float:
    """Multi-perspective oracle: a pair counts as correct if any perspective's first sample is
    (paper 3.2: 77.52% on AliExpress, against 64.61% for the best single pass)."""
    first = _first(records)
    return sum(any(map(is_correct, by_p.values())) for by_p in first.values()) / len(first)


def pass_at_k(records: Iterable[Any], perspective: str, k: int) -> float:
    """Single-perspective pass@k: a pair counts as correct if any of the perspective's first k samples is
    (the paper's control for the oracle at k=3: 72.59%)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    groups = _grouped(records)
    runs = {pid: by_p[perspective] for pid, by_p in groups.items() if perspective in by_p}
    if not runs:
        raise ValueError(f"no records of perspective {perspective!r}; have "
                         f"{sorted({p for by_p in groups.values() for p in by_p})}")
    short = {pid: len(recs) for pid, recs in runs.items() if len(recs) < k}
    if short:
        pid, n = next(iter(sorted(short.items())))
        raise ValueError(f"pass@{k} needs {k} samples per pair, but {len(short)} pair(s) of {perspective!r} "
                         f"have fewer (e.g. {pid!r}: {n}); generate more samples or lower k")
    return sum(any(map(is_correct, recs[:k])) for recs in runs.values()) / len(runs)


def oracle_comparison(records: Iterable[Any], k: int) -> dict:
    """The paper's check that perspective diversity, not more attempts, makes the oracle (section 3.2): the
    multi-perspective oracle (a pair is right when any perspective's first sample is) against the single-perspective
    pass@k control (the perspective whose first sample is right most often; a pair is right when any of its first
    k samples is) and that perspective's single pass. Every perspective needs k samples per pair.

    Returns ``oracle``, ``control_perspective``, ``pass@k``, ``single_pass``, ``per_perspective`` ({perspective:
    {single_pass, pass@k}}) and ``hits`` ({"oracle", "pass@k", "single_pass"}: per pair, sorted by pair id, whether
    it counts as right), for paired intervals."""
    records = list(records)
    perspectives = sorted({_get(r, "perspective") for r in records})
    per = {p: {"single_pass": pass_at_k([r for r in records if _get(r, "perspective") == p], p, 1),
               f"pass@{k}": pass_at_k(records, p, k)} for p in perspectives}
    control = max(perspectives, key=lambda p: (per[p]["single_pass"], -perspectives.index(p)))
    groups = _grouped(records)
    pids = sorted(groups)
    hits = {"oracle": [any(is_correct(recs[0]) for recs in groups[pid].values()) for pid in pids],
            f"pass@{k}": [any(map(is_correct, groups[pid][control][:k])) for pid in pids],
            "single_pass": [is_correct(groups[pid][control][0]) for pid in pids]}
    return {"oracle": sum(hits["oracle"]) / len(pids), "control_perspective": control,
            f"pass@{k}": per[control][f"pass@{k}"], "single_pass": per[control]["single_pass"], "k": k,
            "n": len(pids), "per_perspective": per, "pair_ids": pids, "hits": hits}


def unparseable_rate(records: Iterable[Any], perspective: str | None = None) -> float:
    """Share of samples (all of them, or one perspective's) with no parseable label."""
    recs = [r for r in records if perspective is None or _get(r, "perspective") == perspective]
    if not recs:
        raise ValueError(f"no records{'' if perspective is None else f' of perspective {perspective!r}'}")
    return sum(_get(r, "label") is None for r in recs) / len(recs)


def f1_by_perspective(records: Iterable[Any], labels: Sequence[str]) -> dict[str, float]:
    """Macro-F1 of each perspective's first sample."""
    cols: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for by_p in _first(records).values():
        for p, rec in by_p.items():
            cols[p][0].append(_get(rec, "gold"))
            cols[p][1].append(_get(rec, "label"))
    return {p: macro_f1(g, y, labels) for p, (g, y) in sorted(cols.items())}
