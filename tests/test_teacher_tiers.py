"""TaoSR1's cumulative-probability tiers, and the teacher scoring a batch directly as an A/B arm."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from relkd.teacher.config import TeacherTierSection
from relkd.teacher.tiers import cumulative_tiers, top_score

ESCI = ["exact", "substitute", "complement", "irrelevant"]
# The catalogue's label order (as the dataset lists it) and a relevance order over it.
CATALOGUE = ["strongly relevant", "brand mismatch", "category mismatch", "model mismatch", "attribute mismatch",
             "accessory mismatch"]
RELEVANCE = ["strongly relevant", "attribute mismatch", "model mismatch", "brand mismatch", "accessory mismatch",
             "category mismatch"]


def test_median_thresholds_on_esci_with_ties_reaching_the_threshold():
    probs = [[1.0, 0.0, 0.0, 0.0],   # all exact -> 4
             [0.5, 0.5, 0.0, 0.0],   # P(exact) = 0.5 ties t4 -> 4
             [0.4, 0.1, 0.2, 0.3],   # cum 0.4, 0.5 -> 3 (tie at t3)
             [0.2, 0.2, 0.1, 0.5],   # cum 0.2, 0.4, 0.5 -> 2 (tie: P(not irrelevant) = t2)
             [0.1, 0.1, 0.1, 0.7],   # P(not irrelevant) 0.3 < t1 -> 0
             [0.0, 0.0, 0.0, 1.0]]   # all irrelevant -> 0
    assert cumulative_tiers(probs, ESCI).tolist() == [4, 4, 3, 2, 0, 0]


def test_four_classes_share_the_not_irrelevant_sum_between_tiers_two_and_one():
    t = [0.9, 0.8, 0.6, 0.3]
    probs = [[0.7, 0.1, 0.1, 0.1],   # 0.7 + 0.1 is 0.7999999999999999 in floats, still reaches t3 = 0.8 -> 3
             [0.1, 0.1, 0.1, 0.7],   # P(not irrelevant) 0.3 = t1 -> 1
             [0.2, 0.2, 0.3, 0.3],   # 0.7 >= t2 -> 2
             [0.1, 0.1, 0.09, 0.71],  # 0.29 < t1 -> 0
             [0.95, 0.05, 0.0, 0.0]]  # -> 4
    assert cumulative_tiers(probs, ESCI, thresholds=t).tolist() == [3, 1, 2, 0, 4]


def test_six_classes_in_an_explicit_relevance_order():
    def row(**p):  # probabilities by label name, columns in the dataset's order
        return [p.get(name.split()[0], 0.0) for name in CATALOGUE]

    probs = [row(strongly=0.1, attribute=0.6, brand=0.3),                 # top two 0.7 -> 3
             row(strongly=0.1, attribute=0.1, model=0.3, brand=0.5),      # top three 0.5 -> 2
             row(brand=0.5, accessory=0.25, category=0.25),               # top four 0.5 -> 1
             row(strongly=0.1, attribute=0.1, model=0.1, brand=0.1, accessory=0.3, category=0.3),  # 0.4 -> 0
             row(strongly=0.8, category=0.2)]                             # -> 4
    assert cumulative_tiers(probs, CATALOGUE, RELEVANCE).tolist() == [3, 2, 1, 0, 4]
    # The dataset's own order is a different relevance ranking: brand mismatch second, not fourth.
    assert cumulative_tiers(probs, CATALOGUE).tolist() == [0, 3, 3, 2, 4]
    assert top_score(probs, CATALOGUE, RELEVANCE).tolist() == [0.1, 0.1, 0.0, 0.1, 0.8]
    brand_first = ["brand mismatch", *[x for x in RELEVANCE if x != "brand mismatch"]]
    assert top_score(probs, CATALOGUE, brand_first).tolist() == [0.3, 0.5, 0.5, 0.1, 0.0]


def test_two_classes_read_one_sum_for_every_tier():
    labels = ["relevant", "irrelevant"]
    probs = [[0.95, 0.05], [0.75, 0.25], [0.6, 0.4], [0.35, 0.65], [0.1, 0.9]]
    assert cumulative_tiers(probs, labels, thresholds=[0.9, 0.7, 0.55, 0.3]).tolist() == [4, 3, 2, 1, 0]


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="exactly once"):
        cumulative_tiers([[1, 0, 0, 0]], ESCI, ["exact", "substitute", "complement"])
    with pytest.raises(ValueError, match="not a distribution"):
        cumulative_tiers([[0.5, 0.5, 0.0, 0.0], [0.5, 0.2, 0.0, 0.0]], ESCI)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        cumulative_tiers([[0.5, 0.5]], ESCI)
    with pytest.raises(ValueError, match="4 values"):
        cumulative_tiers([[1, 0, 0, 0]], ESCI, thresholds=[0.5, 0.5])
    with pytest.raises(ValueError, match="4 values"):
        TeacherTierSection(thresholds=[0.5, 0.5, 1.5, 0.5])
    assert cumulative_tiers(np.zeros((0, 4)), ESCI).shape == (0,)


def test_teacher_scores_a_batch_as_an_ab_arm(tmp_path, repo_root):
    from pipeline.teacher_score import run
    from relkd.serving.ab import ab_report

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "labels.json").write_text(json.dumps({"labels": ESCI}))
    batch = tmp_path / "batch.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "query": ["usb cable", "red mug", "desk lamp"],
                  "title": ["USB-C cable 1m", "", "LED desk lamp"]}).to_csv(batch, index=False)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"teacher": {
        "model": "tiny:llama", "sampling": {"max_new_tokens": 8},
        "tiers": {"order": ["exact", "substitute", "complement", "irrelevant"], "thresholds": [0.3, 0.5, 0.7, 0.2]}}}))
    out = tmp_path / "out"
    summary = run(params, batch, prepared, None, repo_root / "prompts", out, tmp_path / "cache")

    scores = pd.read_parquet(out / "scores.parquet")
    assert scores["id"].tolist() == ["a", "c"] and scores["row"].tolist() == [0, 2]
    assert [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()] == [
        {"row": 1, "id": "b", "reason": "title is empty"}]
    probs = np.stack(scores["probs"].to_list())
    assert probs.shape == (2, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert scores["tier"].tolist() == cumulative_tiers(probs, ESCI, thresholds=[0.3, 0.5, 0.7, 0.2]).tolist()
    assert np.allclose(scores["score"], probs[:, 0])
    assert set(scores["label"]) <= set(ESCI) and set(scores["label_source"]) <= {"parsed", "scored"}
    cost = json.loads((out / "cost.json").read_text())
    assert cost["pairs"] == 2 and cost["seconds"] > 0 and cost["cache_hits"] == 0
    assert cost["seconds_per_1000_pairs"] == pytest.approx(500 * cost["seconds"])
    assert summary["scored"] == 2 and summary["rejected"] == 1
    # The frame is an arm ab_report accepts as it is.
    report = ab_report({"champion": scores, "challenger": scores}, ESCI, y_true={"a": "exact"}, n_boot=10)
    assert report["agreement"] == 1.0 and report["n"] == 2

    # A second run reads every rationale from the cache and writes the same scores.
    run(params, batch, prepared, None, repo_root / "prompts", out, tmp_path / "cache")
    assert json.loads((out / "cost.json").read_text())["cache_hits"] == 2
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"), scores)
