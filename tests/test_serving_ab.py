import numpy as np
import pandas as pd
import pytest

from relkd.serving.ab import ab_markdown, ab_report, traffic_split

LABELS = ("exact", "substitute", "irrelevant")
ONE_HOT = {lab: np.eye(3)[i] * 0.8 + 0.2 / 3 for i, lab in enumerate(LABELS)}


def _frame(ids, labels, tiers):
    return pd.DataFrame({"id": ids, "label": labels, "tier": tiers, "probs": [ONE_HOT[x] for x in labels]})


@pytest.fixture
def arms():
    ids = ["q1", "q2", "q3", "q4", "q5", "q6"]
    champion = _frame(ids, ["exact", "exact", "substitute", "irrelevant", "irrelevant", "exact"], [4, 3, 2, 1, 0, 4])
    challenger = _frame(ids, ["exact", "substitute", "substitute", "irrelevant", "exact", "exact"], [4, 2, 2, 0, 3, 4])
    # Rows in another order: the report matches arms by id, not by position.
    return {"champion": champion, "challenger": challenger.iloc[::-1].reset_index(drop=True)}


GOLD = {"q1": "exact", "q2": "substitute", "q3": "substitute", "q4": "irrelevant", "q5": "exact"}  # q6 unlabelled


def test_ab_report_counts(arms):
    rep = ab_report(arms, LABELS, y_true=GOLD, seed=0, n_boot=200)
    assert rep["n"] == 6
    assert rep["agreement"] == pytest.approx(4 / 6)
    shift = np.zeros((5, 5), dtype=int)
    for a, b in [(4, 4), (3, 2), (2, 2), (1, 0), (0, 3), (4, 4)]:
        shift[a, b] += 1
    assert rep["tier_shift"] == shift.tolist()
    assert rep["filtered_share"] == {"champion": pytest.approx(2 / 6), "challenger": pytest.approx(1 / 6)}
    assert rep["tier_share"]["champion"] == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 6, 2 / 6])
    # Two rows disagree, and two different rows of ONE_HOT are 0.8 apart in total variation.
    assert rep["mean_prob_tv"] == pytest.approx(2 * 0.8 / 6)

    lab = rep["labelled"]
    assert lab["n"] == 5
    assert lab["metrics"]["champion"]["accuracy"] == pytest.approx(3 / 5)
    assert lab["metrics"]["challenger"]["accuracy"] == pytest.approx(1.0)
    assert lab["metrics"]["challenger"]["macro_f1"] == pytest.approx(1.0)
    assert lab["diff_ci"]["accuracy"]["diff"] == pytest.approx(0.4)
    assert lab["diff_ci"]["accuracy"]["low"] <= 0.4 <= lab["diff_ci"]["accuracy"]["high"]
    assert lab["mcnemar"]["b01"] == 2 and lab["mcnemar"]["b10"] == 0  # challenger fixes q2 and q5
    assert lab["mcnemar"]["p_value"] == pytest.approx(0.5)


def test_ab_report_without_labels_and_with_a_third_arm(arms):
    ids = arms["champion"]["id"].tolist()
    teacher = _frame(ids, ["exact"] * 6, [4] * 6)
    rep = ab_report({**arms, "teacher": teacher}, LABELS)
    assert rep["labelled"] is None
    assert rep["arms"] == ["champion", "challenger", "teacher"]
    assert rep["pairwise_agreement"]["champion vs teacher"] == pytest.approx(3 / 6)
    assert rep["pairwise_agreement"]["challenger vs teacher"] == pytest.approx(3 / 6)
    assert rep["filtered_share"]["teacher"] == 0.0
    md = ab_markdown(rep)
    assert "| teacher | 0.0% |" in md and "No labelled inputs" in md


def test_ab_markdown_shows_the_numbers(arms):
    md = ab_markdown(ab_report(arms, LABELS, y_true=pd.Series(GOLD), n_boot=100))
    assert "label agreement: 66.67%" in md
    assert "| champion | 33.3% |" in md and "| challenger | 16.7% |" in md
    assert "| 3 | 0 | 0 | 1 | 0 | 0 |" in md  # champion tier 3 -> challenger tier 2
    assert "| accuracy | +0.4000 |" in md
    assert "champion wrong 2, the reverse 0" in md


def test_ab_report_rejects_mismatched_arms(arms):
    with pytest.raises(ValueError, match="champion"):
        ab_report({"challenger": arms["challenger"]}, LABELS)
    short = {**arms, "challenger": arms["challenger"].iloc[:5]}
    with pytest.raises(ValueError, match="same inputs"):
        ab_report(short, LABELS)
    odd = {**arms, "challenger": arms["challenger"].assign(label="great")}
    with pytest.raises(ValueError, match="outside the label set"):
        ab_report(odd, LABELS)
    bad_tier = {**arms, "challenger": arms["challenger"].assign(tier=5)}
    with pytest.raises(ValueError, match="tiers outside"):
        ab_report(bad_tier, LABELS)


def test_traffic_split_is_deterministic_with_the_given_shares():
    ids = [f"user-{i}" for i in range(10_000)]
    arms = traffic_split(ids, salt="exp-1")
    assert arms == traffic_split(ids, salt="exp-1")
    assert traffic_split(ids[5000:], salt="exp-1") == arms[5000:]  # an id's arm does not depend on the batch
    counts = pd.Series(arms).value_counts(normalize=True)
    assert counts["champion"] == pytest.approx(0.1, abs=0.015)
    assert counts["challenger"] == pytest.approx(0.1, abs=0.015)
    assert counts["unassigned"] == pytest.approx(0.8, abs=0.02)
    other = traffic_split(ids, salt="exp-2")
    moved = np.mean([a != b for a, b in zip(arms, other)])
    assert 0.2 < moved < 0.45  # a new salt reshuffles (independent draws: 1 - .1² - .1² - .8² = 0.34)
    half = pd.Series(traffic_split(ids, "s", {"a": 0.5, "b": 0.5})).value_counts(normalize=True)
    assert set(half.index) == {"a", "b"} and half["a"] == pytest.approx(0.5, abs=0.02)


def test_traffic_split_rejects_bad_shares():
    with pytest.raises(ValueError, match="sum to at most 1"):
        traffic_split(["x"], "s", {"champion": 0.6, "challenger": 0.6})
    with pytest.raises(ValueError, match="also an arm"):
        traffic_split(["x"], "s", {"unassigned": 0.1})
