import numpy as np
import pytest
from scipy.special import softmax

from relkd.eval.metrics import expected_calibration_error
from relkd.serving.calibration import (
    assign_tiers,
    calibrated_probs,
    fit_temperature,
    fit_tier_thresholds,
    relevance_score,
)


def _sample(t_true: float, n: int = 20000, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, classes))
    p = softmax(logits / t_true, axis=1)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, y


@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_fit_temperature_recovers_the_true_temperature(t_true):
    logits, y = _sample(t_true)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(t_true, rel=0.04)
    # Calibrating lowers ECE against the raw (T = 1) probabilities.
    assert expected_calibration_error(calibrated_probs(logits, t), y) < expected_calibration_error(
        softmax(logits, axis=1), y)


def test_fit_temperature_rejects_label_names():
    with pytest.raises(ValueError, match="integer class index"):
        fit_temperature(np.zeros((2, 2)), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="outside 0..1"):
        fit_temperature(np.zeros((2, 2)), np.array([0, 2]))


def test_relevance_score_is_probs_times_weights():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(relevance_score(probs, [1.0, 0.0, 0.0]), [0.7, 0.1])
    np.testing.assert_allclose(relevance_score(probs, [1.0, 0.5, 0.0]), [0.8, 0.15])
    with pytest.raises(ValueError, match="one weight per class"):
        relevance_score(probs, [1.0, 0.0])


SCORES = np.round(np.arange(10) * 0.1 + 0.05, 2)  # 0.05, 0.15, ..., 0.95


def test_tier_thresholds_meet_reachable_targets_with_the_smallest_cut():
    relevant = np.array([0, 0, 1, 0, 1, 0, 1, 1, 1, 1], dtype=bool)
    # precision of "score >= s_k": 6/10, 6/9, 6/8, 5/7, 5/6, 4/5, 1, 1, 1, 1
    res = fit_tier_thresholds(SCORES, relevant, [0.3, 0.5, 0.7, 0.9])
    assert res["thresholds"] == [0.05, 0.15, 0.25, 0.65]
    assert res["precision"] == pytest.approx([0.6, 6 / 9, 0.75, 1.0])
    assert res["coverage"] == pytest.approx([1.0, 0.9, 0.8, 0.4])
    assert res["met"] == [True, True, True, True]
    assert res["tier_counts"] == [0, 1, 1, 4, 4]
    assert res["n"] == 10 and res["n_relevant"] == 6
    # The fitted cuts, applied as the served model applies them, give those tiers.
    np.testing.assert_array_equal(assign_tiers(SCORES, res["thresholds"]), [1, 2, 3, 3, 3, 3, 4, 4, 4, 4])


def test_tier_thresholds_report_unreachable_targets():
    relevant = np.array([1, 0, 0, 1, 0, 1, 0, 1, 1, 0], dtype=bool)
    # precision of "score >= s_k": .5, 4/9, .5, 4/7, .5, .6, .5, 2/3, .5, 0
    res = fit_tier_thresholds(SCORES, relevant, [0.5, 0.6, 0.9, 0.95])
    assert res["thresholds"] == [0.05, 0.55, 0.75, 0.85]
    assert res["met"] == [True, True, False, False]
    assert res["precision"] == pytest.approx([0.5, 0.6, 2 / 3, 0.5])  # fallback: best precision above the cut below
    assert res["coverage"] == pytest.approx([1.0, 0.5, 0.3, 0.2])


def test_tier_thresholds_stay_strictly_increasing_when_scores_run_out():
    res = fit_tier_thresholds([0.2, 0.2, 0.8, 0.8], [0, 1, 1, 1], [0.5, 0.9, 0.95, 0.99])
    cuts = res["thresholds"]
    assert cuts[:2] == [0.2, 0.8]
    assert 0.8 < cuts[2] < cuts[3] < 0.8 + 1e-12
    assert res["met"] == [True, True, False, False]
    assert res["precision"][2:] == [None, None] and res["coverage"][2:] == [0.0, 0.0]
    assert res["tier_counts"] == [0, 2, 2, 0, 0]


def test_tier_thresholds_validate_inputs():
    with pytest.raises(ValueError, match="non-decreasing"):
        fit_tier_thresholds(SCORES, np.ones(10), [0.9, 0.5])
    with pytest.raises(ValueError, match="one score and one relevance flag"):
        fit_tier_thresholds(SCORES, np.ones(9), [0.5])


def test_assign_tiers_counts_the_cut_points_reached():
    cuts = [0.2, 0.4, 0.6, 0.8]
    tiers = assign_tiers([0.0, 0.2, 0.39, 0.4, 0.79, 0.8, 1.0], cuts)
    np.testing.assert_array_equal(tiers, [0, 1, 1, 2, 3, 4, 4])
    with pytest.raises(ValueError, match="strictly increasing"):
        assign_tiers([0.5], [0.2, 0.2, 0.6, 0.8])


def test_calibration_matches_the_served_model():
    """Tiers fitted here, applied by the Triton model's own code, give the same tiers."""
    from relkd.serving.triton_model import relevance

    logits, y = _sample(1.5, n=2000, classes=3, seed=1)
    t = fit_temperature(logits, y)
    weights = [1.0, 0.3, 0.0]
    score = relevance_score(calibrated_probs(logits, t), weights)
    fit = fit_tier_thresholds(score, y == 0, [0.4, 0.6, 0.8, 0.95])
    served = relevance(logits, {"temperature": t, "relevance_weights": weights,
                                "tier_thresholds": fit["thresholds"]})
    np.testing.assert_allclose(served["score"], score, atol=1e-6)
    ours = assign_tiers(score, fit["thresholds"])
    # both compare the float64 score with the cuts (score >= cut reaches it)
    np.testing.assert_array_equal(served["tier"], ours)
    assert len(set(ours.tolist())) >= 4


def test_ece_on_a_hand_made_case():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # bins: conf .9 (acc .5, 2 items), .6 (acc 1), .7 (acc 1): .5*.4 + .25*.4 + .25*.3
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.375)
    assert expected_calibration_error(probs, y, n_bins=1) == pytest.approx(abs(0.75 - 0.775))
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == 0.0


def test_fit_serving_fits_what_a_served_version_needs():
    from relkd.serving.calibration import fit_serving

    logits, y = _sample(2.0, n=2000)
    labels = ["exact", "substitute", "complement", "irrelevant"]
    fit = fit_serving(logits, y, labels, {"exact": 1.0, "substitute": 0.5}, ["exact"], (0.3, 0.5, 0.7, 0.9))
    assert fit["temperature"] == pytest.approx(fit_temperature(logits, y))
    assert fit["relevance_weights"] == [1.0, 0.5, 0.0, 0.0]
    assert fit["tier_thresholds"] == sorted(fit["tier_thresholds"]) and len(fit["tier_thresholds"]) == 4
    assert sum(fit["valid_tier_share"]) == len(y) and fit["ece_after"] <= fit["ece_before"]
