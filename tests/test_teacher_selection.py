"""relkd.teacher.selection on hand-made generations with hand-computed expectations."""
from __future__ import annotations

import pytest

from relkd.teacher import selection as sel

U, S, R = "user_intent", "structured_analysis", "business_rules"
REL, BRAND, CAT_, MODEL, ATTR, ACC = LABELS = (
    "strongly relevant", "brand mismatch", "category mismatch", "model mismatch", "attribute mismatch",
    "accessory mismatch")

# pair -> (gold, {perspective: [(label, rationale), ...] for samples 0, 1, 2}); label None = unparseable.
GENERATIONS = {
    # Every perspective right on its first sample: no conflict.
    "p1": (BRAND, {U: [(BRAND, "other brand"), (BRAND, "other brand"), (BRAND, "brand differs")],
                   S: [(BRAND, "brand is Bose"), (MODEL, "model"), (BRAND, "brand is Bose")],
                   R: [(BRAND, "brand rule")] * 3}),
    # User intent and business rules fail all 3 attempts; structured analysis is right (twice, same text).
    "p2": (MODEL, {U: [(BRAND, "wrong maker"), (None, "hmm no label"), (BRAND, "wrong maker")],
                   S: [(MODEL, "model R10 not R50"), (MODEL, "model R10 not R50"), (ATTR, "size")],
                   R: [(BRAND, "rule b"), (BRAND, "rule b"), (ATTR, "rule a")]}),
    # Two perspectives fail; the only correct sample has an empty rationale: in conflict, not resolvable.
    "p3": (ACC, {U: [(REL, "looks fine"), (REL, "looks fine"), (CAT_, "other thing")],
                 S: [(REL, "names match")] * 3,
                 R: [(REL, "fine"), (REL, "fine"), (ACC, "")]}),
    # Structured analysis fails (once unparseable); two other perspectives have correct rationales.
    "p4": (REL, {U: [(REL, "does the job"), (REL, "does the job"), (ATTR, "colour")],
                 S: [(ATTR, "colour differs"), (None, "I think it's fine"), (ATTR, "colour differs")],
                 R: [(ATTR, "rule attr"), (REL, "same job"), (REL, "same job")]}),
    # Structured analysis fails; user intent is right only on its third attempt.
    "p5": (CAT_, {U: [(REL, "a mat is a mat"), (REL, "a mat is a mat"), (CAT_, "bath mat is for the bathroom")],
                  S: [(ATTR, "size differs")] * 3,
                  R: [(CAT_, "bath mat not yoga mat"), (REL, "mat"), (CAT_, "bath mat not yoga mat")]}),
}


def _records(as_dicts=True):
    out = []
    for pid, (gold, by_p) in GENERATIONS.items():
        for p, samples in by_p.items():
            for i, (label, rationale) in enumerate(samples):
                text = rationale if label is None else f"Reasoning: {rationale}\nLabel: {label}"
                rec = sel.Generation(pid, p, i, rationale, label, gold, text)
                out.append(rec.__dict__.copy() if as_dicts else rec)
    return out


@pytest.fixture(params=[True, False], ids=["dicts", "dataclasses"])
def records(request):
    return _records(request.param)


def test_consistency_filter_and_sft_union(records):
    kept = sel.consistency_filter(records)
    assert len(kept) == 18 and all(sel.is_correct(r) for r in kept)
    assert sel.class_balance(kept, LABELS) == {REL: 4, BRAND: 8, CAT_: 3, MODEL: 2, ATTR: 0, ACC: 1}
    examples = sel.sft_examples(kept)
    # Duplicates (same pair, same rationale) collapse across samples and perspectives; "" is dropped.
    assert examples == [
        ("p1", "other brand", BRAND), ("p1", "brand differs", BRAND), ("p1", "brand is Bose", BRAND),
        ("p1", "brand rule", BRAND), ("p2", "model R10 not R50", MODEL), ("p4", "does the job", REL),
        ("p4", "same job", REL), ("p5", "bath mat is for the bathroom", CAT_),
        ("p5", "bath mat not yoga mat", CAT_)]
    assert sel.class_balance(examples, LABELS) == {REL: 2, BRAND: 4, CAT_: 2, MODEL: 1, ATTR: 0, ACC: 0}
    with pytest.raises(ValueError, match="not label-consistent"):
        sel.sft_examples(records)


def test_conflict_set(records):
    c = sel.conflict_set(records)
    assert c.conflict == {"p2", "p3", "p4", "p5"}
    assert c.resolvable == {"p2", "p4", "p5"}
    assert c.failing == {"p2": (R, U), "p3": (S, U), "p4": (S,), "p5": (S,)}


def test_preference_pairs_all_candidates(records):
    pairs = sel.preference_pairs(records, seed=0, max_per_pair=10)
    got = sorted((p["pair_id"], p["rejected_perspective"], p["rejected"], p["chosen_perspective"], p["chosen"])
                 for p in pairs)
    wrong_maker, rule_b = "Reasoning: wrong maker\nLabel: brand mismatch", "Reasoning: rule b\nLabel: brand mismatch"
    rule_a = "Reasoning: rule a\nLabel: attribute mismatch"
    colour = "Reasoning: colour differs\nLabel: attribute mismatch"
    r10 = "Reasoning: model R10 not R50\nLabel: model mismatch"
    job, same = "Reasoning: does the job\nLabel: strongly relevant", "Reasoning: same job\nLabel: strongly relevant"
    bath_r = "Reasoning: bath mat not yoga mat\nLabel: category mismatch"
    bath_u = "Reasoning: bath mat is for the bathroom\nLabel: category mismatch"
    assert got == sorted([
        ("p2", R, rule_b, S, r10), ("p2", R, rule_a, S, r10),
        ("p2", U, wrong_maker, S, r10), ("p2", U, "hmm no label", S, r10),  # unparseable: raw text
        ("p4", S, colour, U, job), ("p4", S, colour, R, same),
        ("p4", S, "I think it's fine", U, job), ("p4", S, "I think it's fine", R, same),
        ("p5", S, "Reasoning: size differs\nLabel: attribute mismatch", R, bath_r),
        ("p5", S, "Reasoning: size differs\nLabel: attribute mismatch", U, bath_u),
    ])
    for p in pairs:
        assert p["prompt_perspective"] == p["rejected_perspective"]
        assert p["chosen_label"] == GENERATIONS[p["pair_id"]][0] != p["rejected_label"]
    assert sel.pair_counts(pairs) == {(R, S): 2, (S, R): 3, (S, U): 3, (U, S): 2}


def test_preference_pairs_capped_deterministic_and_shared_fairly(records):
    two = sel.preference_pairs(records, seed=3, max_per_pair=2)
    assert two == sel.preference_pairs(list(reversed(records)), seed=3, max_per_pair=2)
    assert [p["pair_id"] for p in two] == ["p2", "p2", "p4", "p4", "p5", "p5"]
    # p2 has two failing perspectives: each gives one rejected answer.
    assert {p["rejected_perspective"] for p in two if p["pair_id"] == "p2"} == {R, U}
    draws = {tuple((p["rejected"], p["chosen"]) for p in sel.preference_pairs(records, seed=s, max_per_pair=1))
             for s in range(10)}
    assert len(draws) > 1  # the seed matters
    assert all(len(d) == 3 for d in draws)


def test_metrics(records):
    assert sel.accuracy_by_perspective(records) == {R: 0.4, S: 0.4, U: 0.4}
    assert sel.oracle_accuracy(records) == pytest.approx(0.8)  # p3 is the only pair no perspective gets
    assert sel.pass_at_k(records, U, 1) == pytest.approx(0.4)
    assert sel.pass_at_k(records, U, 2) == pytest.approx(0.4)
    assert sel.pass_at_k(records, U, 3) == pytest.approx(0.6)  # p5 on the third attempt
    assert sel.pass_at_k(records, S, 3) == pytest.approx(0.4)
    assert sel.pass_at_k(records, R, 3) == pytest.approx(0.8)
    assert sel.unparseable_rate(records) == pytest.approx(2 / 45)
    assert sel.unparseable_rate(records, S) == pytest.approx(1 / 15)
    # First samples. user intent: gold [B, M, X, R, C] vs [B, B, R, R, R] -> F1 R 1/2, B 2/3, others 0.
    # structured: [B, M, R, A, A] -> F1 B 1, M 1, others 0.
    f1 = sel.f1_by_perspective(records, LABELS)
    assert f1[U] == pytest.approx((1 / 2 + 2 / 3) / 6) and f1[S] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="pass@4 needs 4 samples"):
        sel.pass_at_k(records, U, 4)
    with pytest.raises(ValueError, match="no records of perspective 'nope'"):
        sel.pass_at_k(records, "nope", 1)


def test_macro_f1_counts_unparseable_as_wrong():
    from relkd.eval.metrics import macro_f1

    assert macro_f1(["a", "b"], ["a", None], ("a", "b")) == pytest.approx(0.5)
    assert macro_f1(["a", "b"], ["a", "b"], ("a", "b")) == pytest.approx(1.0)


def test_inconsistent_gold_is_an_error():
    recs = [sel.Generation("p", U, 0, "r", "a", "a"), sel.Generation("p", S, 0, "r", "a", "b")]
    with pytest.raises(ValueError, match="two gold labels"):
        sel.conflict_set(recs)


def test_the_few_shot_vote_counts_a_pair_no_perspective_parsed_as_unparseable():
    """Decided like the trained rows: no parsed label, no answer (the label scores do not rescue it)."""
    from relkd.teacher.judge import majority

    labels = ["exact", "substitute", "irrelevant"]

    def rec(pid, persp, parsed, scored, gold="exact"):
        probs = [0.8, 0.1, 0.1] if scored == "exact" else [0.1, 0.8, 0.1]
        return {"pair_id": pid, "perspective": persp, "sample": 0, "parsed_label": parsed, "scored_label": scored,
                "label": parsed, "probs": probs, "gold": gold}

    records = [rec("a", p, None, "exact") for p in ("u", "s", "b")]
    records += [rec("b", "u", "substitute", "exact"), rec("b", "s", None, "exact"), rec("b", "b", None, "exact")]
    votes = {v["pair_id"]: v for v in majority(records, labels)}
    assert votes["a"]["label"] is None and votes["a"]["parsed_label"] is None
    assert votes["a"]["scored_label"] == "exact"  # the other rate is still reported
    assert votes["b"]["label"] == "substitute" and votes["b"]["scored_label"] == "exact"


def test_the_few_shot_vote_without_label_scores():
    """teacher.label_scores off: no probs, no scored label; the vote is decided by the parsed labels alone, ties to
    the label set's order."""
    from relkd.teacher.judge import majority

    labels = ["exact", "substitute", "irrelevant"]

    def rec(pid, persp, parsed):
        return {"pair_id": pid, "perspective": persp, "sample": 0, "parsed_label": parsed, "scored_label": None,
                "label": parsed, "probs": None, "gold": "exact"}

    records = [rec("a", "u", "substitute"), rec("a", "s", "exact"), rec("a", "b", None)]
    records += [rec("b", "u", "irrelevant"), rec("b", "s", "irrelevant"), rec("b", "b", "exact")]
    votes = {v["pair_id"]: v for v in majority(records, labels)}
    assert votes["a"]["label"] == "exact" and votes["a"]["probs"] is None and votes["a"]["scored_label"] is None
    assert votes["b"]["label"] == "irrelevant"


def test_judge_without_label_scores_scores_nothing():
    """scored=False never calls the scorer (the generating stages' ~30%) and leaves probs and scored_label None; a
    decision by the scores needs them."""
    import pandas as pd

    from relkd.teacher.cache import GenerationCache
    from relkd.teacher.config import SamplingConfig
    from relkd.teacher.judge import Asking, judge

    class Fake:
        cache_id = "m"

        def generate(self, prompts, n, sampling, seed, labels=()):
            return [["Reasoning: same item.\nLabel: exact"] * n for _ in prompts]

        def score_labels(self, prefixes, labels):
            raise AssertionError("scored although scored=False")

    pairs = pd.DataFrame({"pair_id": ["p1", "p2"], "query": ["q1", "q2"], "title": ["t1", "t2"],
                          "label": ["exact", "irrelevant"]})
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        args = (Fake(), GenerationCache(d), pairs, ["a", "b"], "u", ["exact", "irrelevant"])
        records = judge(*args, Asking(1, SamplingConfig(), 0, "parse", 2, scored=False))
        assert [r["label"] for r in records] == ["exact", "exact"]
        assert all(r["probs"] is None and r["scored_label"] is None for r in records)
        with pytest.raises(ValueError, match="scored=True"):
            judge(*args, Asking(1, SamplingConfig(), 0, "score", 2, scored=False))


@pytest.mark.parametrize("completion, ok", [
    (' asks for a Sony camera, but the title is a Canon EOS R10 camera body.', True),
    (' asks for a Sony camera. The correct label is: brand mismatch.', True),   # the echo is cut, the reason stays
    (' asks for a Sony camera, and the title sells a Canon one. It is a brand mismatch.', True),
    (' says "The answer is strongly relevant."', False),
    (' is', False),
])
def test_a_hinted_rationale_never_names_a_class(completion, ok):
    from relkd.teacher.judge import clean_hinted
    from relkd.teacher.parsing import normalise

    labels = ["strongly relevant", "brand mismatch", "model mismatch"]
    text, why = clean_hinted(completion, labels)
    assert bool(text) == ok and (why is None) == ok
    assert not any(lab in normalise(text) for lab in labels)
    if ok:
        assert text.startswith("The query asks for a Sony camera")


@pytest.mark.parametrize("completion, why", [
    # cut by the cap:
    (" asks for a Brewlin Zen FE-3700 blender, which is a 2024 New Brewlin Zen Zen Zen Zen", "unfinished"),
    (" asks for a Zen Zen Zen blender.", "repetitive"),
    (" asks for a Brewlin Zen FE-3700 blender in red with a glass jug of two litres, a steel blade, six speeds, a "
     "pulse button, a timer, a lid with a measuring cap, a tamper, a recipe book and a warranty of five years.",
     "too long"),
])
def test_a_hinted_rationale_is_an_answer_the_teacher_can_write(completion, why):
    """SFT targets the trained teacher copies: a loop or a sentence cut off by the token cap would teach it to
    run out of tokens before its label line (the trained teacher was 10-27% unparseable on test)."""
    from relkd.teacher.judge import MAX_HINT_WORDS, clean_hinted

    labels = ["strongly relevant", "brand mismatch", "model mismatch"]
    assert clean_hinted(completion, labels) == ("", why)
    text, reason = clean_hinted(" asks for a Brewlin blender. It sells a Brewlin blender jug." + completion, labels)
    assert reason is None and text == "The query asks for a Brewlin blender. It sells a Brewlin blender jug."
    assert len(text.split()) <= MAX_HINT_WORDS


def test_aligned_pairs_stay_within_one_perspective(records):
    pairs = sel.aligned_pairs(records, seed=0, max_per_pair=10)
    got = sorted((p["pair_id"], p["rejected_perspective"], p["rejected"], p["chosen"]) for p in pairs)
    # Only a perspective whose own samples disagree gives a pair: chosen and rejected both come from it.
    assert got == sorted([
        ("p1", S, "Reasoning: model\nLabel: model mismatch", "Reasoning: brand is Bose\nLabel: brand mismatch"),
        ("p2", S, "Reasoning: size\nLabel: attribute mismatch", "Reasoning: model R10 not R50\nLabel: model mismatch"),
        ("p4", U, "Reasoning: colour\nLabel: attribute mismatch", "Reasoning: does the job\nLabel: strongly relevant"),
        ("p4", R, "Reasoning: rule attr\nLabel: attribute mismatch", "Reasoning: same job\nLabel: strongly relevant"),
        ("p5", U, "Reasoning: a mat is a mat\nLabel: strongly relevant",
         "Reasoning: bath mat is for the bathroom\nLabel: category mismatch"),
        ("p5", R, "Reasoning: mat\nLabel: strongly relevant",
         "Reasoning: bath mat not yoga mat\nLabel: category mismatch"),
    ])  # p3: the one right sample has no rationale
    assert all(p["chosen_perspective"] == p["rejected_perspective"] == p["prompt_perspective"] for p in pairs)
    only_u = sel.aligned_pairs([r for r in records if sel._get(r, "perspective") == U], seed=0, max_per_pair=10)
    assert {p["pair_id"] for p in only_u} == {"p4", "p5"} and {p["chosen_perspective"] for p in only_u} == {U}


def test_size_matched_has_exactly_the_target_count(records):
    pairs = sel.aligned_pairs(records, seed=0, max_per_pair=10)
    four = sel.size_matched(pairs, 4, seed=1)
    assert len(four) == 4 and all(p in pairs for p in four)
    assert four == sel.size_matched(pairs, 4, seed=1) and len(sel.size_matched(pairs, 0, seed=1)) == 0
    with pytest.raises(ValueError, match="6 preference pairs, fewer than the 7"):
        sel.size_matched(pairs, 7, seed=1)


def test_the_size_matched_search_widens_until_it_has_the_target():
    import pandas as pd

    # 40 pairs; a pair gives one aligned pair when its two samples disagree (every third pair).
    pool = pd.DataFrame({"pair_id": [f"q{i:02d}" for i in range(40)], "label": ["a", "b"] * 20})
    asked = []

    def ask(frame):
        asked.append(len(frame))
        return [sel.Generation(pid, U, s, f"r{s}", gold if (s == 0 or i % 3) else "z", gold)
                for i, (pid, gold) in enumerate(zip(frame["pair_id"], frame["label"])) for s in (0, 1)]

    pairs, got, n = sel.widened_pairs(ask, pool, n_start=5, target=6, draw_seed=0, seed=0, max_per_pair=2)
    assert len(pairs) == 6 and asked == [5, 10, 20] and n == 20  # 1, 3, then 6+ pairs found
    assert {r.pair_id for r in got} >= {p["pair_id"] for p in pairs}
    with pytest.raises(ValueError, match="fewer than the 30"):
        sel.widened_pairs(ask, pool, n_start=5, target=30, draw_seed=0, seed=0, max_per_pair=2)


def test_oracle_comparison_follows_the_paper(records):
    out = sel.oracle_comparison(records, 3)
    # Every perspective's first sample is right on 2 of 5 pairs; the tie goes to the first name (business_rules).
    assert out["control_perspective"] == R and out["single_pass"] == pytest.approx(0.4)
    assert out["pass@3"] == pytest.approx(0.8) and out["oracle"] == pytest.approx(0.8)
    assert out["per_perspective"][U] == {"single_pass": pytest.approx(0.4), "pass@3": pytest.approx(0.6)}
    assert out["hits"]["oracle"] == [True, True, False, True, True]  # p1..p5: p3 no perspective's first sample
    assert out["hits"]["single_pass"] == [True, False, False, False, True]
    with pytest.raises(ValueError, match="pass@4 needs 4 samples"):
        sel.oracle_comparison(records, 4)
