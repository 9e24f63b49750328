import numpy as np
import pytest
from sklearn.metrics import f1_score

from relkd.eval.metrics import (
    UNPARSEABLE,
    calibration_error,
    classification_report,
    encode,
    macro_f1_from_codes,
    per_group,
    reliability_rows,
)

LABELS = ("a", "b", "c")
Y_TRUE = ["a", "a", "b", "b", "c", "c"]
Y_PRED = ["a", "b", "b", None, "c", "a"]  # one unparseable (None) prediction, gold "b"


def test_report_exact_values_with_unparseable_prediction():
    rep = classification_report(Y_TRUE, Y_PRED, LABELS)
    assert rep["n"] == 6
    assert rep["accuracy"] == pytest.approx(3 / 6)
    # a: P=R=1/2; b: P=R=1/2 (None is a miss, no false positive); c: P=1, R=1/2 -> F1=2/3
    assert rep["macro_f1"] == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert rep["per_class"]["c"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2, "unparseable": 0})
    assert rep["per_class"]["b"]["unparseable"] == 1
    assert [rep["per_class"][lab]["support"] for lab in LABELS] == [2, 2, 2]
    assert rep["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert rep["n_unparseable"] == 1 and rep["unparseable_rate"] == pytest.approx(1 / 6)


def test_free_text_prediction_counts_as_wrong_like_none():
    with_none = classification_report(Y_TRUE, Y_PRED, LABELS)
    with_text = classification_report(Y_TRUE, [p if p else "I think b?" for p in Y_PRED], LABELS)
    assert with_text["accuracy"] == with_none["accuracy"]
    assert with_text["macro_f1"] == with_none["macro_f1"]


def test_gold_label_outside_label_set_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'d' is not in the label set"):
        classification_report(["a", "d"], ["a", "a"], LABELS)
    with pytest.raises(ValueError, match="lengths differ"):
        classification_report(["a"], ["a", "b"], LABELS)


def test_fast_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 300)
    p = rng.integers(-1, 4, 300)  # -1 = unparseable
    ref = f1_score(t, p, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    assert macro_f1_from_codes(t, p, 4) == pytest.approx(ref)
    codes = encode(["b", None, "zzz"], LABELS, what="y_pred", allow_unparseable=True)
    assert codes.tolist() == [1, UNPARSEABLE, UNPARSEABLE]


def test_per_group_scores_each_locale_over_the_full_label_set():
    groups = ["us", "us", "us", "es", "es", "es"]
    out = per_group(Y_TRUE, Y_PRED, groups, LABELS)
    assert list(out) == ["es", "us"]
    assert out["us"]["accuracy"] == pytest.approx(2 / 3)
    assert out["es"]["accuracy"] == pytest.approx(1 / 3)
    assert out["us"]["per_class"]["c"]["support"] == 0 and out["es"]["per_class"]["c"]["support"] == 2
    assert len(out["us"]["confusion"]) == 3


def test_reliability_rows_sum_to_n_and_bin_edges():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=50)
    probs[0] = [1.0, 0.0, 0.0]  # confidence exactly 1.0 belongs in the last bin
    y = rng.integers(0, 3, 50)
    rows = reliability_rows(probs, y, n_bins=5)
    assert len(rows) == 5 and sum(r["count"] for r in rows) == 50
    assert rows[0]["count"] == 0 and rows[0]["accuracy"] is None  # max prob of 3 classes >= 1/3
    top = rows[-1]
    conf = probs.max(1)
    sel = conf >= 0.8
    assert top["count"] == int(sel.sum())
    assert top["confidence"] == pytest.approx(conf[sel].mean())
    assert top["accuracy"] == pytest.approx((probs.argmax(1) == y)[sel].mean())
    # label values instead of indices give the same rows
    assert reliability_rows(probs, [LABELS[i] for i in y], n_bins=5, labels=LABELS) == rows


def test_calibration_error_of_a_perfectly_and_a_badly_calibrated_model():
    probs = np.array([[0.9, 0.1]] * 10)
    y = np.array([0] * 9 + [1])  # 90% confidence, 90% right
    assert calibration_error(reliability_rows(probs, y, n_bins=10)) == pytest.approx(0.0)
    y_bad = np.array([0] * 5 + [1] * 5)
    assert calibration_error(reliability_rows(probs, y_bad, n_bins=10)) == pytest.approx(0.4)


def test_one_ece_for_the_metric_and_the_plot():
    # metrics/export.json's ECE and the reliability plot's title come from the same bins (they were 15 and 10).
    from relkd.eval.metrics import ECE_BINS, expected_calibration_error

    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(3), size=200)
    y = rng.integers(0, 3, 200)
    assert len(reliability_rows(probs, y)) == ECE_BINS
    assert expected_calibration_error(probs, y) == calibration_error(reliability_rows(probs, y))
