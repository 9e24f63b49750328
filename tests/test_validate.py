"""Row screening (each reject reason) and the great-expectations gate (each failure)."""
import pandas as pd
import pytest

from relkd.data.config import ValidationConfig
from relkd.data.schema import DataError, canonical
from relkd.data.splits import query_key, split_by_query
from relkd.data.validate import check_reject_rate, gate, screen

LABELS = ("good", "bad")


def frame(rows):
    return canonical(pd.DataFrame(rows, columns=["query", "title", "label"], dtype=object), "test")


def test_screen_every_reason_and_no_row_lost():
    df = frame([
        ["shoes", "Red shoe", "good"],
        ["", "Red shoe", "good"],
        ["shoes", "   ", "bad"],
        ["shoes", "Bad \udcff bytes", "good"],
        ["shoes", "Blue shoe", None],
        ["shoes", "Green shoe", "meh"],
        ["shoes", "Pink shoe", float("nan")],
        ["Shoes ", "Red shoe", "bad"],
    ])
    kept, rejects = screen(df, LABELS)
    assert len(kept) + len(rejects) == len(df)
    assert list(kept["title"]) == ["Red shoe"]
    reasons = list(rejects["reason"])
    assert reasons[0] == "empty query"
    assert reasons[1] == "empty title"
    assert reasons[2].startswith("invalid UTF-8 in title")
    assert reasons[3] == "missing label"
    assert reasons[4].startswith("label 'meh' is not in the label set")
    assert reasons[5] == "missing label"
    assert reasons[6].startswith("duplicate (query, title) pair")
    # the rejects file must be writable as UTF-8: bad bytes are escaped, still visible
    assert "\\udcff" in rejects.loc[2, "title"]
    rejects.to_json(orient="records", lines=True)


def test_split_by_query_is_disjoint_and_seeded():
    df = frame([[f"query {i % 40}", f"title {i}", "good"] for i in range(200)])
    a = split_by_query(df, 0.2, 0.2, seed=1)
    b = split_by_query(df, 0.2, 0.2, seed=1)
    c = split_by_query(df, 0.2, 0.2, seed=2)
    keys = {s: set(query_key(d["query"])) for s, d in a.items()}
    assert not (keys["train"] & keys["valid"]) and not (keys["train"] & keys["test"])
    assert not (keys["valid"] & keys["test"])
    assert sum(len(d) for d in a.values()) == 200
    assert all(a[s].equals(b[s]) for s in a)
    assert not a["test"].equals(c["test"])
    assert len(keys["test"]) == 8 and len(keys["valid"]) == 8


def test_split_groups_case_and_space_variants():
    df = frame([["Red Shoes", "tA", "good"], ["red  shoes", "tB", "good"]] +
               [[f"q{i}", f"t{i}", "good"] for i in range(30)])
    splits = split_by_query(df, 0.3, 0.3, seed=3)
    where = {s for s, d in splits.items() if d["title"].isin(["tA", "tB"]).any()}
    assert len(where) == 1


def good_splits():
    df = frame([[f"q{i}", f"t{i}", LABELS[i % 2]] for i in range(30)])
    return split_by_query(df, 0.2, 0.2, seed=0)


def test_gate_passes_clean_data():
    report = gate(good_splits(), LABELS, ValidationConfig())
    assert report.success, report.text()


@pytest.mark.parametrize("mutate, check, row", [
    (lambda s: s["train"].assign(title=lambda d: d["title"].where(d.index != 0, "x" * 600)),
     "expect_column_value_lengths_to_be_between", 0),
    (lambda s: s["train"].assign(label=lambda d: d["label"].where(d.index != 1, "ugly")),
     "expect_column_values_to_be_in_set", 1),
    (lambda s: s["train"].assign(query=lambda d: d["query"].where(d.index != 2, "")),
     "expect_column_value_lengths_to_be_between", 2),
])
def test_gate_names_bad_rows(mutate, check, row):
    s = good_splits()
    bad_id = s["train"].loc[row, "pair_id"]
    s["train"] = mutate(s)
    report = gate(s, LABELS, ValidationConfig())
    assert not report.success
    assert any(f["check"] == check and bad_id in f["rows"] for f in report.failures), report.text()
    assert bad_id in report.text()


def test_gate_catches_cross_split_leaks():
    s = good_splits()
    leaked = s["test"].iloc[[0]].assign(pair_id="leak")
    s["train"] = pd.concat([s["train"], leaked], ignore_index=True)
    report = gate(s, LABELS, ValidationConfig())
    checks = {f["check"] for f in report.failures}
    assert "expect_compound_columns_to_be_unique" in checks
    assert "query in two splits" in checks


def test_gate_min_rows_per_split():
    s = good_splits()
    s["valid"] = s["valid"].iloc[:0]
    report = gate(s, LABELS, ValidationConfig(min_rows_per_split=1))
    assert any(f["split"] == "valid" and f["check"] == "expect_table_row_count_to_be_between" for f in report.failures)


def test_reject_rate_limit():
    check_reject_rate(100, 20, 0.2)
    with pytest.raises(DataError, match="21 of 100 rows rejected"):
        check_reject_rate(100, 21, 0.2)


def test_screen_names_unmapped_raw_label():
    df = frame([["shoes", "Red shoe", "good"], ["shoes", "Blue shoe", None]]).assign(raw_label=["5", "meh"])
    kept, rejects = screen(df, LABELS)
    assert len(kept) == 1
    assert rejects.loc[0, "reason"].startswith("unknown label 'meh' (add it to data.table.labels")
