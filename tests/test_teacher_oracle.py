"""The oracle rationale source (a control): every label's reason is in its rationale, the wording varies, the draw
is fixed by the seed, and the annotate + embed stages carry it through (`teacher.annotate.source: oracle`)."""
import json
import re

import pandas as pd
import pytest
import yaml
from conftest import ROOT

from relkd.data.catalogue import ACCESSORY, ATTRIBUTE, BRAND, CATEGORY, LABELS, MODEL, generate_catalogue
from relkd.data.config import CatalogueConfig
from relkd.teacher.config import AnnotateConfig
from relkd.teacher.oracle import oracle_rationales, oracle_records, pair_facts
from relkd.teacher.prompts import PERSPECTIVES


@pytest.fixture(scope="module")
def pairs():
    return generate_catalogue(CatalogueConfig(n_queries=150), seed=13)


def reasons(f) -> list[str]:
    """What a rationale for the pair must name: the facts that decide its label."""
    if f.label == BRAND:
        return [f.brand, f.p_brand]
    if f.label == MODEL:
        return [f.model, f.p_model]
    if f.label == ATTRIBUTE:
        return [f.attr[1], f.p_value]
    if f.label in (CATEGORY, ACCESSORY):
        return [f.cat, f.p_cat]
    return [f.cat]


def test_every_label_has_its_reason_and_never_its_name(pairs):
    texts = oracle_rationales(pairs, seed=13)
    assert set(pairs["label"]) == set(LABELS) and set(pairs["case"]) >= {"substitute", "model_near", "brand_near"}
    for row, (perspective, text) in zip(pairs.to_dict("records"), texts):
        f = pair_facts(row)
        assert f.label == row["label"] and perspective in PERSPECTIVES
        for fact in reasons(f):
            assert fact and fact.lower() in text.lower(), (row["case"], fact, text)
        assert row["label"] not in text.lower(), text
        assert "{" not in text and "  " not in text and text.endswith("."), text
    # A hard case says what makes it hard, in at least some of its phrasings.
    near = [t for row, (_, t) in zip(pairs.to_dict("records"), texts) if row["case"] == "model_near"]
    assert any(re.search(r"digit|almost the same|neighbouring", t) for t in near)


def test_wording_varies_within_each_label_and_perspective(pairs):
    texts = oracle_rationales(pairs, seed=13)
    by = {}
    for row, (perspective, text) in zip(pairs.to_dict("records"), texts):
        f = pair_facts(row)
        skeleton = text
        for fact in {f.cat, f.brand, f.model, f.p_cat, f.p_brand, f.p_model, *(f.attr or ()), f.p_value} - {""}:
            skeleton = re.sub(re.escape(fact), "X", skeleton, flags=re.I)
        by.setdefault((row["label"], perspective), set()).add(skeleton)
    assert {p for _, p in by} == set(PERSPECTIVES)
    for label in LABELS:  # every label is written in every voice, each in more than one way
        for perspective in PERSPECTIVES:
            assert len(by[(label, perspective)]) >= 2, (label, perspective, by[(label, perspective)])


def test_the_seed_fixes_the_draw(pairs):
    first = oracle_rationales(pairs, seed=13)
    assert oracle_rationales(pairs, seed=13) == first
    # per pair, not per position: the same pair in another frame order gets the same rationale
    shuffled = pairs.sample(frac=1.0, random_state=0)
    again = dict(zip(shuffled["pair_id"], oracle_rationales(shuffled, seed=13)))
    assert [again[p] for p in pairs["pair_id"]] == first
    other = oracle_rationales(pairs, seed=14)
    assert sum(a != b for a, b in zip(first, other)) > len(first) // 2


def test_records_are_the_annotate_format_with_the_gold_label(pairs):
    records = oracle_records(pairs.head(5), seed=13)
    for rec, row in zip(records, pairs.head(5).to_dict("records")):
        assert rec["label"] == rec["gold"] == rec["parsed_label"] == row["label"] and rec["source"] == "oracle"
        assert rec["text"].startswith("Reasoning: ") and rec["text"].endswith(f"Label: {row['label']}")


def test_data_without_the_catalogue_provenance_is_refused():
    frame = pd.DataFrame({"pair_id": ["a"], "query": ["q"], "title": ["t"], "label": ["exact"]})
    with pytest.raises(ValueError, match=r"data.source: catalogue.*source: teacher"):
        oracle_rationales(frame, seed=13)
    with pytest.raises(ValueError, match="hint: none with the oracle"):
        AnnotateConfig(source="oracle", hint="gold")
    assert AnnotateConfig().source == "teacher"  # the oracle is a control, never the default


def test_annotate_and_embed_stages_carry_the_oracle(tmp_path, monkeypatch):
    """prepare -> annotate (oracle, no teacher model loaded) -> embed: the e_cot probe reads the labels off the
    oracle's rationales (tiny:bert, random weights: what it reads is the words)."""
    from pipeline import annotate, embed, prepare
    from relkd.config import merge

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = ROOT
    params = merge(yaml.safe_load((root / "params.yaml").read_text()),
                   yaml.safe_load((root / "profiles" / "tiny.yaml").read_text()))
    params["data"]["catalogue"] = {**params["data"]["catalogue"], "n_queries": 60, "pairs_per_query": 4}
    params["teacher"]["annotate"].update(source="oracle", max_pairs=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepare.run("params.yaml", "prepared", "metrics/prepare.json")
    got = annotate.run("params.yaml", "prepared", "no-teacher-needed", str(root / "prompts"), "rationales.jsonl",
                       "cache", "metrics/annotate.json")
    train = pd.read_parquet(tmp_path / "prepared" / "train.parquet")
    assert got["source"] == "oracle" and got["n_pairs"] == len(train) and got["teacher_accuracy_on_train"] == 1.0
    assert not (tmp_path / "cache").exists()  # nothing was generated
    metrics = embed.run("params.yaml", "rationales.jsonl", "embeddings", "metrics/embed.json")
    probe = metrics["e_cot_probe"]
    assert probe["status"] == "ok" and probe["accuracy"] > probe["majority_rate"] + 0.3, probe
    assert json.loads((tmp_path / "embeddings" / "meta.json").read_text())["n"] == len(train)
