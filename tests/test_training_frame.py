"""Which training pairs carry a rationale and an e_cot: pipeline.common.training_frame, then
pipeline.train_student.guiding_rationales (student.rationale_rows)."""
import numpy as np
import pandas as pd
import pytest

from pipeline.common import training_frame, write_embeddings
from pipeline.train_student import guiding_rationales
from relkd.io import write_jsonl


@pytest.fixture()
def files(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    pd.DataFrame({"pair_id": ["a", "b", "c", "d"], "query": ["q"] * 4, "title": ["t"] * 4,
                  "label": ["x", "y", "x", "y"]}).to_parquet(prepared / "train.parquet")
    # a: the teacher agrees with gold; b: it does not; c: unparseable; d: not annotated.
    write_jsonl(tmp_path / "r.jsonl", [
        {"pair_id": "a", "rationale": "ra", "label": "x", "gold": "x"},
        {"pair_id": "b", "rationale": "rb", "label": "x", "gold": "y"},
        {"pair_id": "c", "rationale": "rc", "label": None, "gold": "x"},
    ])
    write_embeddings(tmp_path / "emb", np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32),
                     {"pair_ids": ["a", "b", "c"], "name": "e", "dim": 2})
    return str(prepared), str(tmp_path / "r.jsonl"), str(tmp_path / "emb")


def test_every_annotated_rationale_guides_by_default(files):
    train, notes, emb, _ = training_frame(*files)
    assert list(train["pair_id"]) == ["a", "b", "c", "d"] and notes == ["ra", "rb", "rc", None]
    assert np.isfinite(emb).all(axis=1).tolist() == [True, True, True, False]
    np.testing.assert_array_equal(emb[1], [0.0, 1.0])
    same_notes, same_emb = guiding_rationales(train, notes, emb, files[1])
    assert same_notes == notes and same_emb is emb


def test_agreeing_keeps_only_the_rationales_for_the_gold_label(files):
    train, notes, emb, _ = training_frame(*files)
    kept, kept_emb = guiding_rationales(train, notes, emb, files[1], "agreeing")
    assert kept == ["ra", None, None, None] and kept_emb.dtype == emb.dtype
    assert np.isfinite(kept_emb).all(axis=1).tolist() == [True, False, False, False]
    np.testing.assert_array_equal(kept_emb[0], [1.0, 0.0])
    with pytest.raises(ValueError, match="'all' or 'agreeing'"):
        guiding_rationales(train, notes, emb, files[1], "gold")
