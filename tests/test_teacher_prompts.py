"""relkd.teacher.prompts: the perspective files, rendering for both label sets, shots, the chat template."""
from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest

from relkd.teacher import prompts
from relkd.teacher.parsing import parse

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
CAT = ("strongly relevant", "brand mismatch", "category mismatch", "model mismatch", "attribute mismatch",
       "accessory mismatch")
ESCI = ("exact", "substitute", "complement", "irrelevant")
SHOTS = (prompts.Shot("zentrix hb-3157 headphones", "Zentrix Terra HB-3157 Wireless Headphones, Grey",
                      "strongly relevant"),
         prompts.Shot("boltrix am-1510 vacuum 0.8l", "Dust Bags for Boltrix Core Series", "accessory mismatch"))


@pytest.fixture(scope="module")
def perspectives():
    return prompts.load_perspectives(PROMPTS, prompts.PERSPECTIVES + (prompts.UNIFIED,))


@pytest.fixture(scope="module")
def tokenizer():
    import transformers

    from relkd import models

    return transformers.AutoTokenizer.from_pretrained(models.resolve("tiny:llama"))


def _turns(messages):
    """(user, assistant) contents of the few-shot turns."""
    return [(u["content"], a["content"]) for u, a in zip(messages[1:-1:2], messages[2:-1:2])]


def test_perspective_files_are_complete_and_short(perspectives):
    for name in (*prompts.PERSPECTIVES, prompts.UNIFIED):
        p = perspectives[name]
        assert p.name == name and p.instruction and len(p.exemplars) == 2
        for ex in p.exemplars:
            # A worked answer must fit well inside the embedded teacher's 64-token cap.
            assert len(re.findall(r"[.!?](\s|$)", ex.rationale)) <= 2 and len(ex.rationale.split()) <= 30
            # Every exemplar is usable with both label sets.
            assert ex.label_for(CAT) in CAT and ex.label_for(ESCI) in ESCI
    # The unified prompt's worked examples show the format without naming a perspective.
    unified = " ".join(ex.rationale for ex in perspectives[prompts.UNIFIED].exemplars).lower()
    assert not any(w in unified for w in ("shopper", "annotator", "rule"))


@pytest.mark.parametrize("labels", [CAT, ESCI])
@pytest.mark.parametrize("name", prompts.PERSPECTIVES)
def test_render_messages(perspectives, name, labels):
    p = perspectives[name]
    shots = SHOTS if labels == CAT else (("usb c cable", "Braided USB-C Cable 2m", "exact"),)
    messages = prompts.render_messages(p, "q text", "t text", labels, shots)
    roles = [m["role"] for m in messages]
    assert roles == ["system"] + ["user", "assistant"] * (len(shots) + 2) + ["user"]
    system = messages[0]["content"]
    assert system.startswith(p.instruction)
    assert f"Labels: {', '.join(labels)}." in system and "Reasoning:" in system and "Label:" in system
    assert messages[-1] == {"role": "user", "content": "Query: q text\nTitle: t text"}
    turns = _turns(messages)
    # Shots first, answered with the label only; then the worked exemplars, each label resolved.
    assert turns[:len(shots)] == [(f"Query: {q}\nTitle: {t}", f"Label: {y}") for q, t, y in shots]
    for (user, answer), ex in zip(turns[len(shots):], p.exemplars):
        assert user == f"Query: {ex.query}\nTitle: {ex.title}"
        assert parse(answer, labels).label == ex.label_for(labels)
        assert parse(answer, labels).rationale == ex.rationale


def test_exemplar_label_preference_and_skipping():
    ex = prompts.Exemplar("q", "t", "r.", "accessory of the requested product",
                          ("accessory mismatch", "complement", "irrelevant"))
    assert ex.label_for(CAT) == "accessory mismatch"
    assert ex.label_for(ESCI) == "complement"
    assert ex.label_for(("Relevant", "Irrelevant")) == "Irrelevant"  # the dataset's spelling
    p = prompts.Perspective("x", "Judge.", (ex, prompts.Exemplar("q2", "t2", "r2.", "exact match", ("exact",))))
    messages = prompts.render_messages(p, "q", "t", ("relevant", "partial", "irrelevant"))
    assert [a for _, a in _turns(messages)] == ["Reasoning: r.\nLabel: irrelevant"]  # second one skipped
    assert len(prompts.render_messages(p, "q", "t", ("yes", "no"))) == 2  # both skipped: system + pair


def test_unified_prompt_names_no_perspective(perspectives):
    messages = prompts.render_messages(perspectives[prompts.UNIFIED], "q", "t", CAT)
    assert len(messages) == 2 + 2 * 2  # system, two worked examples, the pair
    text = " ".join(m["content"] for m in messages).lower()
    for p in prompts.PERSPECTIVES:
        words = p.split("_")
        assert " ".join(words) not in text and words[0] not in text and words[0].rstrip("s") not in text
    assert not any(w in text for w in ("perspective", "shopper", "annotator", "rule"))


def test_render_rejects_shots_outside_the_label_set(perspectives):
    with pytest.raises(ValueError, match="'exact'.*not in"):
        prompts.render_messages(perspectives["user_intent"], "q", "t", CAT, [("a", "b", "exact")])


def test_chat_template_applied_and_prompt_within_budget(perspectives, tokenizer):
    messages = prompts.render_messages(perspectives["business_rules"],
                                       "acheter nexora dm-7783 smartphone 128gb",
                                       "Zentrix Core SD-5901 Green 128GB Smartphone", CAT, SHOTS)
    text = prompts.render(tokenizer, messages)
    assert text.startswith("<|im_start|>system\nYou apply the platform's relevance rules")
    assert text.endswith("Title: Zentrix Core SD-5901 Green 128GB Smartphone<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_start|>assistant\n") == 5  # 2 shots + 2 exemplars + the generation prompt
    assert "assistant\nLabel: accessory mismatch<|im_end|>" in text
    # The embedded teacher's prompt budget: 2 exemplars + 2 shots under ~450 SmolLM2 tokens.
    assert len(tokenizer(text).input_ids) < 450
    sft = prompts.render(tokenizer, messages + [{"role": "assistant", "content": "Label: exact"}],
                         add_generation_prompt=False)
    assert sft.endswith("<|im_start|>assistant\nLabel: exact<|im_end|>\n")


def test_render_needs_a_chat_template():
    class NoTemplate:
        chat_template = None
        name_or_path = "pypi:all-MiniLM-L6-v2"

    with pytest.raises(ValueError, match="all-MiniLM-L6-v2.*no chat template"):
        prompts.render(NoTemplate(), [{"role": "user", "content": "x"}])


def _train():
    rows = []
    for i, label in enumerate(["a"] * 6 + ["b"] * 3 + ["c"]):
        rows.append({"pair_id": f"p{i}", "query_id": f"q{i // 2}", "query": f"query {i}",
                     "title": f"title {i}", "label": label})
    return pd.DataFrame(rows)


def test_draw_shots_is_seeded_and_covers_labels():
    train = _train()
    shots = prompts.draw_shots(train, 3, seed=1)
    assert shots == prompts.draw_shots(train.sample(frac=1, random_state=7), 3, seed=1)  # row order free
    assert sorted(s.label for s in shots) == ["a", "b", "c"]
    assert all(isinstance(s, prompts.Shot) and s.title == s.query.replace("query", "title") for s in shots)
    assert len({prompts.draw_shots(train, 3, seed=s) for s in range(8)}) > 1
    five = prompts.draw_shots(train, 5, seed=0)
    assert len(set(five)) == 5 and {"a", "b", "c"} <= {s.label for s in five}
    # Excluding a query id keeps its pairs out ("c" lives only in q4).
    assert "c" not in {s.label for s in prompts.draw_shots(train, 4, seed=0, exclude=["q4"])}
    with pytest.raises(ValueError, match="only 10 training pairs"):
        prompts.draw_shots(train, 11, seed=0)


def test_bad_perspective_files_name_the_problem(tmp_path):
    (tmp_path / "user_intent.yaml").write_text("name: user_intent\ninstruction: x\ncolour: red\n")
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        prompts.load_perspectives(tmp_path, ["user_intent"])
    (tmp_path / "user_intent.yaml").write_text("name: other\ninstruction: x\n")
    with pytest.raises(ValueError, match="name: 'other'"):
        prompts.load_perspectives(tmp_path, ["user_intent"])
    (tmp_path / "user_intent.yaml").write_text(
        "name: user_intent\ninstruction: x\nexemplars:\n  - {query: q, title: t, rationale: r, label_hint: h}\n")
    with pytest.raises(ValueError, match=r"exemplars\[0\]: missing keys \['labels'\]"):
        prompts.load_perspectives(tmp_path, ["user_intent"])
    with pytest.raises(FileNotFoundError, match="business_rules.yaml"):
        prompts.load_perspectives(tmp_path, ["business_rules"])


def test_sft_prompt_names_share_is_seeded_and_cycles_the_perspectives():
    """teacher.sft.perspective_share of the SFT examples go to the perspective prompts in turn, the rest to the
    unified prompt; the paper's 0 keeps every example unified."""
    assert prompts.sft_prompt_names(10, 0.0, 13) == [prompts.UNIFIED] * 10
    names = prompts.sft_prompt_names(12, 0.25, 13)
    assert names == prompts.sft_prompt_names(12, 0.25, 13)
    assert names.count(prompts.UNIFIED) == 9
    assert [n for n in names if n != prompts.UNIFIED] == list(prompts.PERSPECTIVES)
    assert names != prompts.sft_prompt_names(12, 0.25, 14)
    assert prompts.sft_prompt_names(3, 1.0, 0) == list(prompts.PERSPECTIVES)
    with pytest.raises(ValueError, match="perspective_share must be in"):
        prompts.sft_prompt_names(4, 1.5, 0)


def test_prompted_examples_pose_each_example_as_the_teacher_is_asked_later(perspectives, tokenizer):
    """SFT examples under the unified prompt carry no shots (as teacher_eval's MPCoT row and annotate ask);
    under a perspective prompt they carry the few-shot stage's shots (as teacher_pairs asks)."""
    from relkd.teacher.judge import prompted_examples, prompts_for

    pairs = pd.DataFrame({"query": ["sony wh-1000 headphones", "makita drill 18v"],
                          "title": ["Sony WH-1000 Headphones, Black", "Makita Drill Bit Set"]})
    chosen = [perspectives[prompts.UNIFIED], perspectives["structured_analysis"]]
    got = prompted_examples(tokenizer, chosen, pairs, CAT, ["It is the product.", "A bit set, not a drill."],
                            ["strongly relevant", "accessory mismatch"], SHOTS)
    assert got[0]["prompt"] == prompts_for(tokenizer, chosen[0], pairs.iloc[:1], CAT)[0]
    assert got[1]["prompt"] == prompts_for(tokenizer, chosen[1], pairs.iloc[1:], CAT, SHOTS)[0]
    assert SHOTS[0].title in got[1]["prompt"] and SHOTS[0].title not in got[0]["prompt"]
    assert parse(got[1]["completion"], CAT).label == "accessory mismatch"
    with pytest.raises(ValueError, match="pass one of each per example"):
        prompted_examples(tokenizer, chosen[:1], pairs, CAT, ["a", "b"], ["exact", "exact"])
