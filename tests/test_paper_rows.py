"""The paper's remaining rows on tiny models: a single-perspective teacher's SFT set holds its perspective only,
ProgressiveCoT's curriculum order, the Avg. Ensemble's probabilities are its members' mean (saved and loaded back
too), and LRKD-Combined's target is the embedding of the rationales concatenated."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT

from relkd import lexical
from relkd.student.config import named_variants

LABELS = ("strongly relevant", "brand mismatch", "accessory mismatch")
U, B = "user_intent", "business_rules"
QUERIES = ["red shoe", "usb c cable 2m", "bose headphones", "yoga mat", "lego display case", "phone"]
TITLES = ["red running shoe size 42", "phone case", "Sony WH-1000 headphones", "bath mat", "acrylic case for lego",
          "phone charger"]


def _params(tmp_path, **sections) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def _prepared(tmp_path):
    folder = tmp_path / "prepared"
    folder.mkdir()
    train = pd.DataFrame({"pair_id": [f"p{i}" for i in range(6)], "query_id": [f"q{i}" for i in range(6)],
                          "query": QUERIES, "title": TITLES, "label": [LABELS[i % 3] for i in range(6)]})
    train.to_parquet(folder / "train.parquet")
    (folder / "labels.json").write_text(json.dumps({"labels": list(LABELS)}))
    return folder, train


def test_a_single_perspective_teacher_learns_from_its_perspective_only(tmp_path):
    from pipeline import teacher_sft_data
    from relkd.io import read_jsonl, write_jsonl
    from relkd.teacher.prompts import load_perspectives

    prepared, train = _prepared(tmp_path)
    fewshot = tmp_path / "fewshot"
    # Each perspective is right on its own pairs (and wrong on the others'): the filter keeps one per perspective.
    records = [{"pair_id": pid, "perspective": p, "sample": 0, "rationale": f"{p} says so about {pid}",
                "label": gold if (i % 2 == 0) == (p == U) else None, "gold": gold}
               for i, (pid, gold) in enumerate(zip(train["pair_id"], train["label"])) for p in (U, B)]
    write_jsonl(fewshot / "generations.jsonl", records)
    write_jsonl(fewshot / "shots.jsonl", [{"query": "mat", "title": "yoga mat", "label": LABELS[0]}])
    params = _params(tmp_path, teacher={"model": "tiny:llama", "sft": {"label_hinted_fallback": False,
                                                                         "max_length": 2048}})
    out = tmp_path / "sft_data.jsonl"
    metrics = teacher_sft_data.run(params, str(prepared), str(fewshot), str(ROOT / "prompts"), str(out),
                                   str(tmp_path / "cache"), str(tmp_path / "m.json"), perspective=U)
    data = read_jsonl(out)
    assert metrics["n_generations"] == 6 and metrics["perspective"] == U
    assert sorted(d["pair_id"] for d in data) == ["p0", "p2", "p4"]  # user intent's right answers, nothing else
    assert all(d["rationale"].startswith(U) and d["group"] == U for d in data)
    instruction = load_perspectives(ROOT / "prompts")[U].instruction
    assert all(instruction in d["prompt"] for d in data)  # posed under its own prompt, as it is asked later
    mpcot = teacher_sft_data.run(params, str(prepared), str(fewshot), str(ROOT / "prompts"), str(tmp_path / "all"),
                                 str(tmp_path / "cache"), str(tmp_path / "m2.json"))
    assert mpcot["n_examples"] == 6  # MPCoT's set: the union of both perspectives


def test_the_curriculum_trains_phase_after_phase_with_the_steps_of_plain_sft():
    from relkd.teacher.trainers import CurriculumSampler, PromptGroupSampler, curriculum_batches, curriculum_phases

    rationales = ["a b c d e f", "a", "a b c", "a b", "a b c d", "a b c d e"]
    phases = curriculum_phases(rationales, 3)
    assert phases == [2, 0, 1, 0, 1, 2]  # by length in words, shortest first, equal buckets
    groups = ["unified", "unified", "user_intent", "unified", "unified", "user_intent"]
    batches = curriculum_batches(groups, phases, batch_size=2, seed=0, passes=2)
    order = [phases[b[0]] for b in batches]
    assert order == sorted(order) and all(len({phases[i] for i in b}) == 1 for b in batches)
    assert all(len({groups[i] for i in b}) == 1 for b in batches)  # one prompt per batch, as plain SFT
    assert sorted(i for b in batches for i in b) == sorted(list(range(6)) * 2)  # every example, each pass
    plain = PromptGroupSampler(groups, 2, 0)
    assert len(CurriculumSampler(groups, phases, 2, 0, passes=2)) >= 2 * len(plain)
    with pytest.raises(ValueError, match="whole number of passes"):
        CurriculumSampler(groups, phases, 2, 0, passes=1.5)


def _student(seed, tables):
    from relkd.student.model import build_student

    torch.manual_seed(seed)
    model, tok = build_student("tiny:bert", LABELS, named_variants()["lrkd_gat"], d_out=24, hidden=8, codes=4,
                               max_length=32, lexical_tables=tables)
    torch.nn.init.normal_(model.head.weight)  # a fresh head starts at zero (warm start); give each its own answers
    return model.eval(), tok


def test_the_avg_ensemble_is_its_members_mean_and_loads_back(tmp_path):
    # Its one ONNX graph is checked against this torch module at export (the e2e test registers, exports and serves
    # the tiny profile's ensemble).
    from relkd.student.ensemble import AvgEnsemble, save_ensemble
    from relkd.student.model import load_student
    from relkd.student.trainer import predict

    tables = lexical.fit_tables(QUERIES, TITLES)
    members = {p: _student(i, tables) for i, p in enumerate((U, B, "structured_analysis"))}
    tok = members[U][1]
    ensemble = AvgEnsemble({p: m for p, (m, _) in members.items()}).eval()
    frame = pd.DataFrame({"query": QUERIES, "title": TITLES})
    want = np.mean([predict(m, tok, frame)[0] for m, _ in members.values()], axis=0)
    probs, r, _ = predict(ensemble, tok, frame)
    assert np.allclose(probs, want, atol=1e-6) and not np.allclose(want, predict(members[U][0], tok, frame)[0])
    assert r.shape == (len(QUERIES), 3 * 24)
    folder = save_ensemble(ensemble, tok, tmp_path / "ens")
    loaded, tok2 = load_student(folder)
    assert np.allclose(predict(loaded, tok2, frame)[0], want, atol=1e-6)
    other = _student(9, lexical.fit_tables(QUERIES[:3], TITLES[:3]))[0]
    with pytest.raises(ValueError, match="other lexical tables"):
        AvgEnsemble({U: members[U][0], B: other})


def test_lrkd_combined_learns_from_the_embedding_of_the_rationales_concatenated(tmp_path):
    from pipeline import embed_combined
    from relkd.embed import encode_rationales
    from relkd.embed.store import read_embeddings
    from relkd.io import read_jsonl, write_jsonl

    single = tmp_path / "single"
    notes = {U: {"p0": "fits the purpose", "p1": "a case, not a phone", "p2": "only user intent saw it"},
             B: {"p0": "main product matches", "p1": "accessory rule applies"}}
    for p, texts in notes.items():
        write_jsonl(single / p / "rationales.jsonl", [{"pair_id": pid, "rationale": t, "label": LABELS[0],
                                                       "gold": LABELS[0]} for pid, t in texts.items()])
    params = _params(tmp_path, teacher={"single": {"perspectives": [U, B]}}, student={"combined": ["lrkd_combined"]},
                     embed={"model": "tiny:bert", "max_length": 64})
    out = tmp_path / "combined"
    embed_combined.run(params, str(single), str(out), str(tmp_path / "m.json"))
    vectors, meta = read_embeddings(out)
    joined = [notes[U][pid] + " [SEP] " + notes[B][pid] for pid in ("p0", "p1")]  # tiny:bert's separator token
    assert meta["pair_ids"] == ["p0", "p1"]  # a pair one teacher left out has no combined target
    assert [r["rationale"] for r in read_jsonl(out / "rationales.jsonl")] == joined
    assert np.allclose(vectors, encode_rationales(joined, "tiny:bert", 64), atol=1e-6)
