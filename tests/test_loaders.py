"""ESCI join on fixtures written in the official schema; the CSV mapping with graded thresholds."""
import gzip

import pandas as pd
import pytest

from relkd.data.esci import join_esci, load_esci
from relkd.data.schema import COLUMNS, DataError
from relkd.data.table import graded_to_class, label_set, load_table


def esci_fixture():
    examples = pd.DataFrame({
        "example_id": [1, 2, 3, 4, 5, 6],
        "query": ["red shoes", "red shoes", "red shoes", "zapatos rojos", "zapatos rojos", "kettle"],
        "query_id": [10, 10, 10, 11, 11, 12],
        "product_id": ["A1", "A2", "A3", "A1", "B9", "A4"],
        "product_locale": ["us", "us", "us", "es", "es", "us"],
        "esci_label": ["E", "S", "I", "C", "E", "E"],
        "small_version": [1, 1, 1, 1, 1, 0],
        "large_version": [1, 1, 1, 1, 1, 1],
        "split": ["train"] * 6,
    })
    products = pd.DataFrame({
        "product_id": ["A1", "A2", "A3", "A1", "A4"],
        "product_locale": ["us", "us", "us", "es", "us"],
        "product_title": ["Red running shoe", "Crimson sneaker", "Blue kettle", "Zapato rojo", "Kettle 1.7L"],
        "product_description": [""] * 5, "product_bullet_point": [""] * 5,
        "product_brand": ["X", "Y", "Z", "X", "K"], "product_color": ["red", "red", "blue", "rojo", "steel"],
    })
    return examples, products


def test_esci_join_on_locale_and_product():
    ex, pr = esci_fixture()
    df = join_esci(ex, pr, ["us", "es"], "small")
    assert list(df.columns[:6]) == list(COLUMNS)
    assert len(df) == 5  # example 6 is not in the small version
    by_id = df.set_index("pair_id")
    # same product id, two locales: each example joins its own locale's title
    assert by_id.loc["esci-1", "title"] == "Red running shoe"
    assert by_id.loc["esci-4", "title"] == "Zapato rojo"
    assert by_id.loc["esci-2", "label"] == "substitute" and by_id.loc["esci-4", "label"] == "complement"
    # a product missing from the products table keeps an empty title (screening rejects it)
    assert by_id.loc["esci-5", "title"] == ""
    assert by_id.loc["esci-4", "query_id"] == "es-11"


def test_esci_locale_and_version_filters():
    ex, pr = esci_fixture()
    assert set(join_esci(ex, pr, ["us"], "small")["locale"]) == {"us"}
    assert len(join_esci(ex, pr, ["us"], "large")) == 4
    with pytest.raises(DataError, match="locales present"):
        join_esci(ex, pr, ["jp"], "small")


def test_esci_missing_column_names_it():
    ex, pr = esci_fixture()
    with pytest.raises(DataError, match="esci_label"):
        join_esci(ex.drop(columns=["esci_label"]), pr, ["us"], "small")


def test_esci_files_roundtrip(tmp_path):
    ex, pr = esci_fixture()
    ex.to_parquet(tmp_path / "examples.parquet")
    pr.to_parquet(tmp_path / "products.parquet")
    df = load_esci(tmp_path / "examples.parquet", tmp_path / "products.parquet", ["us"], "small")
    assert sorted(df["label"]) == ["exact", "irrelevant", "substitute"]


def test_graded_thresholds():
    th = [[3.0, "exact"], [2.33, "substitute"], [1.67, "partial"], [0.0, "irrelevant"]]
    got = graded_to_class(pd.Series(["3.0", "2.67", "2.33", "2.0", "1.67", "1.5", "x"]), th)
    assert list(got[:6]) == ["exact", "substitute", "substitute", "partial", "partial", "irrelevant"]
    assert pd.isna(got[6])
    assert label_set(None, th) == ("exact", "substitute", "partial", "irrelevant")


def test_csv_mapping_with_graded_labels_and_bad_bytes(tmp_path):
    path = tmp_path / "hd.csv.gz"
    rows = (b"id,product_title,search_term,relevance\n"
            b"1,Angle bracket 12-gauge,angle bracket,3.0\n"
            b"2,Deck screws,l bracket,1.33\n"
            b"3,Bad \xff\xfe title,hinge,2.5\n")
    with gzip.open(path, "wb") as f:
        f.write(rows)
    df = load_table(path, {"query": "search_term", "title": "product_title", "label": "relevance", "pair_id": "id"},
                    thresholds=[[3.0, "exact"], [2.33, "substitute"], [1.67, "partial"], [0.0, "irrelevant"]])
    assert list(df["label"]) == ["exact", "irrelevant", "substitute"]
    assert list(df["raw_label"]) == ["3.0", "1.33", "2.5"]
    assert list(df["pair_id"]) == ["1", "2", "3"]
    # undecodable bytes survive as surrogates for screening to reject, not as a crash
    assert "\udcff" in df.loc[2, "title"]


def test_categorical_mapping_unknown_label_is_na(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"q": ["a", "b"], "t": ["x", "y"], "y": ["good", "meh"]}).to_csv(path, index=False)
    df = load_table(path, {"query": "q", "title": "t", "label": "y"}, labels={"good": "relevant", "bad": "irrelevant"})
    assert df.loc[0, "label"] == "relevant" and pd.isna(df.loc[1, "label"])
    assert label_set({"good": "relevant", "bad": "irrelevant"}, None) == ("relevant", "irrelevant")


def test_table_missing_file_and_column(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_table(tmp_path / "none.csv", {"query": "q", "title": "t", "label": "y"})
    path = tmp_path / "t.csv"
    pd.DataFrame({"q": ["a"], "t": ["x"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['y'\]"):
        load_table(path, {"query": "q", "title": "t", "label": "y"})
