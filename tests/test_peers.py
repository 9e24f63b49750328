"""Peers of the student table (majority, lexical, CrossEncoder), the peers stage and compare's peer rows, and
the embed stage's e_cot label probe."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT

from relkd.eval.config import CrossEncoderPeerConfig
from relkd.eval.metrics import classification_report
from relkd.eval.peers import PEERS, fit_lexical, fit_majority, majority, train_cross_encoder
from relkd.eval.probing import label_probe
from relkd.lexical import FEATURES, LexicalTables, char_ngrams, features, fit_tables, tokens

LABELS = ("relevant", "model mismatch", "category mismatch")
BRANDS = ["acme", "zenit", "orbo", "kora", "vexa", "lumo", "tarn", "quill"]
THINGS = [("phone", "smartphone with camera"), ("drill", "cordless drill driver"), ("kettle", "electric kettle"),
          ("lamp", "desk lamp led"), ("boots", "hiking boots leather"), ("mixer", "stand mixer bowl")]


def pairs(n: int, seed: int) -> pd.DataFrame:
    """Learnable lexical structure: the same product (relevant), its code one digit off (model mismatch),
    or another kind of thing (category mismatch)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        brand = BRANDS[rng.integers(len(BRANDS))]
        k = int(rng.integers(len(THINGS)))
        code = f"{brand[0]}{rng.integers(100, 900)}"
        query = f"{brand} {THINGS[k][0]} {code}"
        label = LABELS[rng.choice(3, p=[0.5, 0.25, 0.25])]
        if label == "relevant":
            title = f"{brand.title()} {THINGS[k][1]} {code.upper()} {rng.integers(2, 9)} pack"
        elif label == "model mismatch":
            other = f"{code[0]}{int(code[1:]) + 1}"
            title = f"{brand.title()} {THINGS[k][1]} {other.upper()}"
        else:
            j = (k + 1 + int(rng.integers(len(THINGS) - 1))) % len(THINGS)
            title = f"{BRANDS[rng.integers(len(BRANDS))].title()} {THINGS[j][1]} {rng.integers(100, 900)}"
        rows.append({"pair_id": f"p{seed}-{i}", "query_id": f"q{seed}-{i}", "query": query, "title": title,
                     "label": label, "locale": "en"})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ lexical
def test_lexical_features_on_hand_made_pairs():
    tables = fit_tables(["red shoe 42", "phone x200"], ["Red Shoe size 42", "Phone X201 case", "Green hat"])
    f = dict(zip(FEATURES, features(["red shoe 42", "phone x200", "blue hat"],
                                    ["Red Shoe size 42", "Phone X201 case", "Green hat"], tables).T))
    assert f["query_in_title"].tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert f["jaccard"].tolist() == pytest.approx([3 / 4, 1 / 4, 1 / 3])
    # "42" is in its title; "x200" is not in "x201"'s title, which has a number the query lacks
    assert f["query_numbers"].tolist() == [1, 1, 0]
    assert f["numbers_in_title"].tolist() == [1, 0, 0]
    assert f["number_share"].tolist() == [1.0, 0.0, 0.0]
    assert f["title_numbers_not_in_query"].tolist() == [0, 1, 0]
    assert f["query_tokens"].tolist() == [3, 2, 2] and f["title_tokens"].tolist() == [4, 3, 2]
    # a title repeating the query scores higher than one sharing a word
    assert f["tfidf_cosine"][0] > f["tfidf_cosine"][2] > 0 and f["char_tfidf_cosine"][0] > f["char_tfidf_cosine"][1]
    assert f["bm25"][0] > f["bm25"][1] > 0 and 0 < f["bm25_norm"][0] <= 1


def test_bm25_matches_the_formula():
    titles = ["red shoe", "red hat", "blue shoe shoe lace"]
    tables = fit_tables(["x"], titles)
    assert tables.n_titles == 3 and tables.avg_title_len == pytest.approx(8 / 3)
    idf = {w: math.log((3 - df + 0.5) / (df + 0.5) + 1) for w, df in {"shoe": 2, "lace": 1}.items()}
    norm = 1.2 * (1 - 0.75 + 0.75 * 4 / (8 / 3))
    want = idf["shoe"] * 2 * 2.2 / (2 + norm) + idf["lace"] * 1 * 2.2 / (1 + norm)
    assert tables.bm25(tokens("shoe lace"), tokens(titles[2])) == pytest.approx(want)
    assert tables.bm25(tokens("umbrella"), tokens(titles[2])) == 0.0


def test_tfidf_cosines_equal_scikit_learns_vectorizers():
    """relkd.lexical computes the TF-IDF cosines without scikit-learn (the Triton stub has none): they must be
    the numbers TfidfVectorizer(sublinear_tf=True) gives, word tokens and char_wb 3-5-grams."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    train = pairs(80, 0)
    odd = pd.DataFrame({"query": ["Ünïcode  café x2", "a"], "title": ["CAFÉ x2 mug", "b  c"]})
    test = pd.concat([pairs(30, 1), odd])
    texts = list(train["query"]) + list(train["title"])
    word = TfidfVectorizer(tokenizer=tokens, token_pattern=None, lowercase=False, sublinear_tf=True).fit(texts)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True, sublinear_tf=True).fit(texts)
    assert char.build_analyzer()("Ünïcode  café x2") == char_ngrams("Ünïcode  café x2")

    def cos(vec):
        both = vec.transform(list(test["query"])).multiply(vec.transform(list(test["title"])))
        return np.asarray(both.sum(1)).ravel()

    got = features(list(test["query"]), list(test["title"]), fit_tables(list(train["query"]), list(train["title"])))
    assert got[:, FEATURES.index("tfidf_cosine")] == pytest.approx(cos(word), abs=1e-12)
    assert got[:, FEATURES.index("char_tfidf_cosine")] == pytest.approx(cos(char), abs=1e-12)


def test_lexical_tables_round_trip_and_refuse_another_format(tmp_path):
    train = pairs(40, 0)
    tables = fit_tables(list(train["query"]), list(train["title"]))
    tables.save(tmp_path)
    back = LexicalTables.load(tmp_path)
    assert np.array_equal(features(list(train["query"]), list(train["title"]), back),
                          features(list(train["query"]), list(train["title"]), tables))
    d = tables.to_dict()
    d["features"] = d["features"][:-1]
    (tmp_path / "lexical.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="lexical.json.*retrain"):
        LexicalTables.load(tmp_path)


def test_majority_and_its_prior():
    assert majority(["b", "a", "b", "a"], labels=["a", "b"]) == "a"  # a tie goes to the earlier label
    m = fit_majority(["b", "b", "a", "c"], ["a", "b", "c"])
    assert m.label == "b"
    probs = m.predict_proba(pd.DataFrame({"query": ["q"] * 3, "title": ["t"] * 3}))
    assert probs.shape == (3, 3) and probs[0].tolist() == pytest.approx([0.25, 0.5, 0.25])


# Gradient boosting splits on whichever feature separates the training rows first (here often a TF-IDF one,
# which unseen model codes move at test time), so its margin is the smaller one.
@pytest.mark.parametrize("kind,margin", [("lr", 0.3), ("hgb", 0.15)])
def test_lexical_model_beats_the_majority_on_a_learnable_set(kind, margin):
    train, test = pairs(240, 0), pairs(120, 1)
    model = fit_lexical(train, LABELS, seed=0, kind=kind)
    probs = model.predict_proba(test)
    assert probs.shape == (len(test), 3) and np.allclose(probs.sum(1), 1)
    lexical = classification_report(test["label"].tolist(), [LABELS[i] for i in probs.argmax(1)], LABELS)
    base = classification_report(test["label"].tolist(), [majority(train["label"], LABELS)] * len(test), LABELS)
    assert lexical["accuracy"] > base["accuracy"] + margin
    assert lexical["macro_f1"] > base["macro_f1"] + margin


def test_lexical_model_keeps_every_label_column_when_a_class_is_unseen():
    train = pairs(60, 0)
    train = train[train["label"] != "model mismatch"]
    probs = fit_lexical(train, LABELS, seed=0).predict_proba(pairs(10, 1))
    assert probs.shape == (10, 3) and np.all(probs[:, 1] == 0) and np.allclose(probs.sum(1), 1)
    with pytest.raises(ValueError, match="not in the label set"):
        fit_lexical(train.assign(label="nope"), LABELS, seed=0)


# ------------------------------------------------------------------------------------ cross-encoder
def test_cross_encoder_trains_and_predicts_probabilities(tmp_path):
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    from relkd.models import resolve

    backbone = resolve("tiny:bert")
    train, valid, test = pairs(24, 0), pairs(8, 1), pairs(5, 2)
    recipe = CrossEncoderPeerConfig(epochs=2, batch_size=8, lr=1e-3, warmup_ratio=0.1)
    peer = train_cross_encoder(train, valid, LABELS, backbone, 3, recipe, max_length=32, out_dir=tmp_path / "ce")
    probs = peer.predict_proba(test)
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1, atol=1e-5) and (probs >= 0).all()
    assert any("eval_loss" in h for h in peer.history) and peer.history[-1]["step"] == 6  # 2 epochs x 3 steps
    trained = {k: v.detach().clone() for k, v in peer.model.state_dict().items()}
    start = CrossEncoder(backbone, num_labels=3, max_length=32, device="cpu").state_dict()
    changed = [k for k in trained if k in start and not torch.equal(trained[k], start[k])]
    assert any("classifier" in k for k in changed) and any("encoder.layer" in k for k in changed)
    saved = CrossEncoder(str(tmp_path / "ce"), device="cpu")
    assert np.allclose(saved.predict([[test["query"][0], test["title"][0]]], apply_softmax=True), probs[0], atol=1e-5)


# ---------------------------------------------------------------------------------- stage + compare
def tiny_params(tmp_path, seeds=(1, 2)) -> str:
    from relkd.config import merge

    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                   yaml.safe_load((ROOT / "profiles" / "tiny.yaml").read_text()))
    params["student"]["seeds"] = list(seeds)
    params["student"]["variants"] = {"plain": {"extractor": "none", "guidance": False},
                                     "lrkd_gat": {"extractor": "gat"}}
    params["student"].update(ensembles=[], combined=[])  # the tiny profile's Table 6 rows: not these tests' students
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return str(path)


def write_prepared(folder):
    folder.mkdir(parents=True)
    for name, (n, seed) in {"train": (60, 0), "valid": (12, 1), "test": (30, 2)}.items():
        pairs(n, seed).to_parquet(folder / f"{name}.parquet")
    (folder / "labels.json").write_text(json.dumps({"labels": list(LABELS)}))


def fake_student(models, name, test, seeds, rng, n_train):
    """A student's folder as train_student writes it, with random predictions."""
    results = {}
    for s in seeds:
        pred = [LABELS[i] for i in rng.integers(0, 3, len(test))]
        (models / name / f"seed{s}").mkdir(parents=True)
        pd.DataFrame({"pair_id": test["pair_id"], "label": test["label"], "pred": pred,
                      "probs": [[1.0, 0.0, 0.0]] * len(test)}).to_parquet(models / name / f"seed{s}" /
                                                                          "test_predictions.parquet")
        rep = classification_report(test["label"].tolist(), pred, LABELS)
        results[str(s)] = {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"],
                           "per_class_f1": {k: v["f1"] for k, v in rep["per_class"].items()},
                           "confusion": rep["confusion"], "epochs": [], "n_train": n_train}
    (models / name / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory):
    from pipeline import peers as stage

    tmp = tmp_path_factory.mktemp("peers")
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        write_prepared(tmp / "data" / "prepared")
        params = tiny_params(tmp)
        metrics = stage.run(params, "data/prepared", "models/peers", "metrics/peers.json")
        yield tmp, params, metrics
    finally:
        mp.undo()


def test_peers_stage_writes_what_compare_reads(peers_run):
    from pipeline.compare import load_variant

    tmp, _, metrics = peers_run
    test = pd.read_parquet(tmp / "data/prepared/test.parquet")
    assert set(metrics) == set(PEERS) == {p.name for p in (tmp / "models/peers").iterdir()}
    for name in PEERS:
        reports, preds = load_variant(tmp / "models/peers", name, [1, 2])
        assert len(reports) == 2 and len(preds) == 2 * len(test)
        assert preds[preds["seed"] == 1]["pair_id"].tolist() == test["pair_id"].tolist()
        assert set(reports[0]["per_class"]) == set(LABELS) and np.array(reports[0]["confusion"]).sum() == len(test)
        results = json.loads((tmp / "models/peers" / name / "results.json").read_text())
        assert results["1"]["n_train"] == 60 and results["1"]["mlflow_run_id"]
        assert all(np.isclose(sum(p), 1, atol=1e-4) for p in preds["probs"])
    top = majority(pd.read_parquet(tmp / "data/prepared/train.parquet")["label"], LABELS)
    assert metrics["majority"]["accuracy"] == pytest.approx((test["label"] == top).mean())
    assert metrics["lexical_lr"]["accuracy"] > metrics["majority"]["accuracy"] + 0.2
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp}/registry/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted((r.data.tags["relkd.peer"], r.data.tags["relkd.seed"]) for r in runs
                  if r.data.tags.get("relkd.stage") == "peers") == sorted((p, s) for p in PEERS for s in "12")


def _compare(peers_run, out: Path, n_train: int, seed: int) -> dict:
    """`compare` on two fake students (plain, lrkd_gat; seeds 1, 2) trained on `n_train` rows and the real peers."""
    from pipeline import compare

    tmp, params, _ = peers_run
    test = pd.read_parquet(tmp / "data/prepared/test.parquet")
    for name in ("plain", "lrkd_gat"):
        fake_student(out / "student", name, test, [1, 2], np.random.default_rng(seed), n_train=n_train)
    (out / "teacher_eval.json").write_text(json.dumps({"table": {}}))
    return compare.run(params, str(tmp / "data/prepared"), str(out / "student"), str(tmp / "models/peers"),
                       str(out / "teacher_eval.json"), str(out / "reports"), str(out / "plots"), str(out / "m.json"))


def test_compare_carries_peer_rows_with_their_intervals(peers_run, tmp_path):
    tmp, params, peer_metrics = peers_run
    test = pd.read_parquet(tmp / "data/prepared/test.parquet")
    metrics = _compare(peers_run, tmp_path, 60, 0)
    assert set(metrics) == {"plain", "lrkd_gat"}  # the students' metrics stay one key per variant
    rows = json.loads((tmp_path / "reports/peers.json").read_text())
    assert set(rows) == {f"peer:{p}" for p in PEERS}
    for name, row in rows.items():
        assert row["accuracy"] == pytest.approx(peer_metrics[name.removeprefix("peer:")]["accuracy"])
        assert row["delta_accuracy"] == pytest.approx(row["accuracy"] - metrics["plain"]["accuracy"])
        assert row["delta_macro_f1_ci_low"] <= row["delta_macro_f1"] <= row["delta_macro_f1_ci_high"]
    md = (tmp_path / "reports/compare.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| peer:")]
    assert len(table) == 2 * len(PEERS)  # the main table and the per-class table
    top = test["label"].value_counts().index[0]
    assert f"Majority rate of the test split: {100 * (test['label'] == top).mean():.2f}% (`{top}`" in md
    assert "not the same rows" not in md
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["lrkd_gat.json", "plain.json"]


def test_compare_says_when_peers_trained_on_other_rows(peers_run, tmp_path):
    _compare(peers_run, tmp_path, 40, 1)
    assert "the students trained on [40] rows, the peers on [60]" in (tmp_path / "reports/compare.md").read_text()


# ------------------------------------------------------------------------------------ e_cot probe
def gold_labels(n, seed=0):
    return np.random.default_rng(seed).choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])


def test_e_cot_probe_finds_a_label_the_embeddings_carry():
    y = gold_labels(240)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(240, 32))
    x[:, :3] += 2.0 * (y[:, None] == np.array(["a", "b", "c"]))  # one direction per class, under noise
    r = label_probe(x, y, folds=5, seed=0)
    assert r["status"] == "ok" and r["folds"] == 5 and r["n"] == 240
    assert r["majority_label"] == "a" and r["majority_rate"] == pytest.approx((y == "a").mean())
    assert r["accuracy"] > r["majority_rate"] + 0.3 and r["macro_f1"] > r["majority_macro_f1"] + 0.4


def test_e_cot_probe_on_noise_stays_near_the_majority():
    y = gold_labels(240)
    r = label_probe(np.random.default_rng(2).normal(size=(240, 32)), y, folds=5, seed=0)
    assert r["status"] == "ok" and r["accuracy"] < r["majority_rate"] + 0.08


def test_e_cot_probe_on_tiny_inputs():
    rng = np.random.default_rng(0)
    r = label_probe(rng.normal(size=(5, 4)), ["a", "a", "a", "b", "b"], folds=5)
    assert r["status"] == "ok" and r["folds"] == 2  # the smallest class has 2 rows
    r = label_probe(rng.normal(size=(6, 4)), ["a", "a", "a", "b", "b", "c"], folds=5)
    assert r["status"] == "ok" and r["left_out"] == ["c"] and r["n"] == 5
    r = label_probe(rng.normal(size=(3, 4)), ["a", "a", "b"], folds=5)
    assert r["status"] == "skipped" and "too few rows" in r["reason"] and r["accuracy"] is None
    with pytest.raises(ValueError, match="one row per gold label"):
        label_probe(rng.normal(size=(3, 4)), ["a", "b"])
