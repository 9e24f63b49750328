"""Which training pairs carry a rationale and an e_cot: relkd.student.data.training_frame, then guiding_rationales
(student.rationale_rows); and the embed stage's files (relkd.embed.store) they are read from."""
import numpy as np
import pandas as pd
import pytest

from relkd.embed.store import read_embeddings, write_embeddings
from relkd.student.data import guiding_rationales, training_frame

# a: the teacher agrees with gold; b: it does not; c: unparseable; d: not annotated.
RECORDS = [{"pair_id": "a", "rationale": "ra", "label": "x", "gold": "x"},
           {"pair_id": "b", "rationale": "rb", "label": "x", "gold": "y"},
           {"pair_id": "c", "rationale": "rc", "label": None, "gold": "x"}]
VECTORS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
TRAIN = pd.DataFrame({"pair_id": ["a", "b", "c", "d"], "query": ["q"] * 4, "title": ["t"] * 4,
                      "label": ["x", "y", "x", "y"]})


def test_every_annotated_rationale_guides_by_default():
    train, notes, emb = training_frame(TRAIN, RECORDS, VECTORS, ["a", "b", "c"])
    assert list(train["pair_id"]) == ["a", "b", "c", "d"] and notes == ["ra", "rb", "rc", None]
    assert np.isfinite(emb).all(axis=1).tolist() == [True, True, True, False]
    np.testing.assert_array_equal(emb[1], [0.0, 1.0])
    same_notes, same_emb = guiding_rationales(train, notes, emb, RECORDS)
    assert same_notes == notes and same_emb is emb


def test_annotated_rows_keep_only_pairs_with_a_rationale_and_a_vector():
    train, notes, emb = training_frame(TRAIN, RECORDS, VECTORS[[2, 0]], ["c", "a"], "annotated")
    assert list(train["pair_id"]) == ["a", "c"] and notes == ["ra", "rc"]
    np.testing.assert_array_equal(emb, [[1.0, 0.0], [1.0, 1.0]])  # each pair's own row, whatever the file order
    with pytest.raises(ValueError, match="'all' or 'annotated'"):
        training_frame(TRAIN, RECORDS, VECTORS, ["a", "b", "c"], "some")


def test_agreeing_keeps_only_the_rationales_for_the_gold_label():
    train, notes, emb = training_frame(TRAIN, RECORDS, VECTORS, ["a", "b", "c"])
    kept, kept_emb = guiding_rationales(train, notes, emb, RECORDS, "agreeing")
    assert kept == ["ra", None, None, None] and kept_emb.dtype == emb.dtype
    assert np.isfinite(kept_emb).all(axis=1).tolist() == [True, False, False, False]
    np.testing.assert_array_equal(kept_emb[0], [1.0, 0.0])
    with pytest.raises(ValueError, match="'all' or 'agreeing'"):
        guiding_rationales(train, notes, emb, RECORDS, "gold")


def test_embeddings_round_trip_and_refuse_a_meta_that_does_not_match(tmp_path):
    write_embeddings(tmp_path / "emb", VECTORS, {"pair_ids": ["a", "b", "c"], "name": "e", "dim": 2})
    vectors, meta = read_embeddings(tmp_path / "emb")
    np.testing.assert_array_equal(vectors, VECTORS)
    assert meta == {"pair_ids": ["a", "b", "c"], "name": "e", "dim": 2}
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        write_embeddings(tmp_path / "bad", VECTORS, {"pair_ids": ["a", "b"]})
