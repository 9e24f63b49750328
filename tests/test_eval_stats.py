import numpy as np
import pytest
from scipy.stats import ttest_rel
from sklearn.metrics import f1_score

from relkd.eval.stats import agreement, bootstrap_diff_ci, mcnemar, mean_std, paired_ttest

LABELS = ("x", "y")


def _two_systems(n=400):
    rng = np.random.default_rng(3)
    y = list(rng.choice(LABELS, n))
    flip = {"x": "y", "y": "x"}
    a = [t if i % 10 < 6 else flip[t] for i, t in enumerate(y)]  # 60% right
    b = [t if i % 10 < 8 else flip[t] for i, t in enumerate(y)]  # 80% right
    return y, a, b


def test_bootstrap_ci_contains_true_difference_and_excludes_zero():
    y, a, b = _two_systems()
    ci = bootstrap_diff_ci(y, a, b, "accuracy", LABELS, n_boot=500, seed=7)
    assert ci["diff"] == pytest.approx(0.2)
    assert ci["low"] < 0.2 < ci["high"]
    assert ci["low"] > 0
    assert ci["mean"] == pytest.approx(0.2, abs=0.02)


def test_bootstrap_is_deterministic_for_a_seed():
    y, a, b = _two_systems()
    one = bootstrap_diff_ci(y, a, b, "macro_f1", LABELS, n_boot=200, seed=11)
    two = bootstrap_diff_ci(y, a, b, "macro_f1", LABELS, n_boot=200, seed=11)
    other = bootstrap_diff_ci(y, a, b, "macro_f1", LABELS, n_boot=200, seed=12)
    assert one == two
    assert (one["low"], one["high"]) != (other["low"], other["high"])
    ref = (f1_score(y, b, labels=list(LABELS), average="macro", zero_division=0)
           - f1_score(y, a, labels=list(LABELS), average="macro", zero_division=0))
    assert one["diff"] == pytest.approx(ref)


def test_bootstrap_rejects_unknown_metric_and_missing_labels():
    y, a, b = _two_systems(20)
    with pytest.raises(ValueError, match="'auc'"):
        bootstrap_diff_ci(y, a, b, "auc", LABELS)
    with pytest.raises(ValueError, match="labels is required"):
        bootstrap_diff_ci(y, a, b, "accuracy")


def test_mcnemar_matches_binomial_by_hand():
    # 8 examples only b gets right, 2 only a gets right, 5 both right, 5 both wrong
    y = ["x"] * 20
    a = ["y"] * 8 + ["x"] * 2 + ["x"] * 5 + [None] * 5
    b = ["x"] * 8 + ["y"] * 2 + ["x"] * 5 + ["y"] * 5
    res = mcnemar(y, a, b)
    assert (res["b01"], res["b10"]) == (8, 2)
    # two-sided exact binomial, n=10, k=2: 2 * (C(10,0)+C(10,1)+C(10,2)) / 2^10
    assert res["p_value"] == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar(y, b, b)["p_value"] == 1.0


def test_paired_ttest_matches_scipy_and_handles_ties():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.4, 0.05, 10), rng.normal(0.2, 0.05, 10)
    ref = ttest_rel(a, b)
    res = paired_ttest(a, b)
    assert res["t"] == pytest.approx(ref.statistic) and res["p"] == pytest.approx(ref.pvalue)
    assert res["t"] > 0
    assert paired_ttest([0.3, 0.5], [0.3, 0.5]) == {"t": 0.0, "p": 1.0, "n": 2}
    assert paired_ttest([0.5, 0.6], [0.4, 0.5])["p"] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        paired_ttest([1.0], [2.0])


def test_mean_std_and_agreement():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.7]) == (0.7, 0.0)
    assert agreement(["a", "b", None], ["a", "c", None]) == pytest.approx(2 / 3)


def test_bootstrap_over_seeds_is_about_the_mean_of_per_seed_differences():
    y, a, b = _two_systems()
    flip = {"x": "y", "y": "x"}
    a2 = [flip[p] if i % 7 == 0 else p for i, p in enumerate(a)]  # a second seed of each system
    b2 = [flip[p] if i % 5 == 0 else p for i, p in enumerate(b)]

    def f1(pred):
        return f1_score(y, pred, labels=list(LABELS), average="macro", zero_division=0)

    ci = bootstrap_diff_ci(y, [a, a2], [b, b2], "macro_f1", LABELS, n_boot=300, seed=1)
    want = ((f1(b) - f1(a)) + (f1(b2) - f1(a2))) / 2  # the Δ of means over seeds, not pooled rows' F1
    assert ci["diff"] == pytest.approx(want) and ci["seeds"] == 2
    assert ci["low"] < want < ci["high"]
    single = bootstrap_diff_ci(y, [a], [b], "macro_f1", LABELS, n_boot=300, seed=1)
    assert single["diff"] == pytest.approx(f1(b) - f1(a))
    assert (single["low"], single["high"]) == pytest.approx(
        tuple(bootstrap_diff_ci(y, a, b, "macro_f1", LABELS, n_boot=300, seed=1)[k] for k in ("low", "high")))
    with pytest.raises(ValueError, match="2 seeds of pred_a but 1 of pred_b"):
        bootstrap_diff_ci(y, [a, a2], [b], "accuracy", LABELS)


def test_bootstrap_over_seeds_covers_the_spread_between_seeds():
    # Three seeds of each system: a and b equal on two, a one lucky seed far ahead. Rows alone would call
    # b worse (every resample keeps the lucky seed); resampling the seeds too puts 0 inside the interval.
    y, a, b = _two_systems()
    wrong = {"x": "y", "y": "x"}
    lucky = list(y)  # a seed of a that gets every row right
    worse = [wrong[t] if i % 3 == 0 else t for i, t in enumerate(y)]
    ci = bootstrap_diff_ci(y, [worse, worse, lucky], [worse, worse, worse], "accuracy", LABELS, n_boot=400, seed=3)
    assert ci["resampled"] == "rows and seeds" and ci["seeds"] == 3
    assert ci["diff"] == pytest.approx(-(1 - np.mean([p == t for p, t in zip(worse, y)])) / 3)
    assert ci["low"] < ci["diff"] < 0 <= ci["high"]
    one_seed = bootstrap_diff_ci(y, [lucky], [worse], "accuracy", LABELS, n_boot=400, seed=3)
    assert one_seed["resampled"] == "rows" and one_seed["high"] < 0  # the lucky seed alone: clear of 0
