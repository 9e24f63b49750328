"""Answers over a serving engine's completion call (relkd.teacher.served_answers): the rationale stops at the label
key, a key inside a sentence does not end it, the label is one of the label set; the structured-output dialects; the
in-process vLLM engine wherever vLLM imports (its HTTP sibling runs against a real server in test_teacher_http.py)."""
import importlib.util
import re

import pytest

from relkd.teacher.config import SamplingConfig
from relkd.teacher.openai_backend import structured_choice
from relkd.teacher.parsing import parse
from relkd.teacher.served_answers import LABEL_STOPS, Completion, answer

LABELS = ["exact", "substitute", "irrelevant"]


class Scripted:
    """An engine whose continuations are scripted per prompt ending: it honours stop strings (keeping the one that
    stopped it, as vLLM with include_stop_str_in_output) and a choice list, and records every request."""

    def __init__(self, script):
        self.script, self.requests = script, []

    def __call__(self, requests):
        self.requests += requests
        out = []
        for r in requests:
            if r.choice:
                out.append([Completion(r.choice[-1], 1, None, False)] * r.n)
                continue
            text = next(v for k, v in self.script.items() if r.prompt.endswith(k))
            cut = min((text.index(s) + len(s), s) for s in r.stop if s in text) if any(
                s in text for s in r.stop) else None
            got = Completion(text[:cut[0]], len(text[:cut[0]].split()), cut[1], False) if cut else \
                Completion(text, len(text.split()), None, True)
            out.append([got] * r.n)
        return out


def test_the_rationale_stops_at_the_label_key_and_the_label_is_chosen_from_the_set():
    engine = Scripted({"Q1\n": "Reasoning: same brand, same model.\nLabel: exact\nQuery: another pair"})
    got = answer(engine, ["Q1\n"], 2, SamplingConfig(temperature=0.7, no_repeat_ngram=0), seed=3, labels=LABELS)
    assert len(got) == 1 and len(got[0]) == 2
    assert got[0][0] == "Reasoning: same brand, same model.\nLabel: irrelevant"  # the scripted choice: the last
    assert parse(got[0][0], LABELS).label == "irrelevant"
    first, label = engine.requests[0], engine.requests[1]
    assert first.stop == LABEL_STOPS and first.n == 2 and first.choice is None
    assert label.prompt.endswith("Label:") and label.choice == [f" {lab}" for lab in LABELS]


def test_a_key_inside_a_sentence_does_not_end_the_rationale():
    engine = Scripted({"Q\n": "Reasoning: the answer: partly.", "answer:": " partly. It fits.\nLabel: exact\n",
                       "Label:": " substitute\nmore"})
    free = SamplingConfig(temperature=0.0, no_repeat_ngram=0, label_choice=False)
    got = answer(engine, ["Q\n"], 3, free, seed=0, labels=LABELS)
    assert got == [["Reasoning: the answer: partly. It fits.\nLabel: substitute"] * 3]  # greedy: one answer, n copies
    assert [r.stop for r in engine.requests] == [LABEL_STOPS, LABEL_STOPS, ["\n"]]


def test_an_answer_without_a_label_line_is_returned_as_written():
    engine = Scripted({"Q\n": "it rambles on and on"})
    got = answer(engine, ["Q\n"], 1, SamplingConfig(no_repeat_ngram=0), seed=0, labels=LABELS)
    assert got == [["it rambles on and on"]] and parse(got[0][0], LABELS).error == "no label line"


def test_no_repeat_ngram_is_refused_by_name():
    with pytest.raises(ValueError, match="no_repeat_ngram"):
        answer(Scripted({}), ["Q"], 1, SamplingConfig(no_repeat_ngram=8), seed=0)


def test_each_servers_dialect_restricts_the_label():
    choices = [" exact", ' say "hi"']
    assert structured_choice("vllm", choices) == {"structured_outputs": {"choice": choices}}
    regex = structured_choice("sglang", choices)["regex"]
    assert all(re.fullmatch(regex, c) for c in choices) and not re.fullmatch(regex, " exactly")
    assert structured_choice("llama_cpp", choices)["grammar"] == 'root ::= " exact" | " say \\"hi\\""'
    with pytest.raises(ValueError, match="no choice constraint"):
        structured_choice("openai", choices)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (the gpu extra)")
def test_the_vllm_engine_answers_and_scores(tmp_path):
    """Wherever vLLM imports (a GPU host with `pip install -e .[gpu]`): one engine, the base and an adapter as its
    teachers, answers ending at a label from the set, label scores for every label."""
    import torch

    from relkd.models import resolve
    from relkd.teacher.config import TeacherConfig
    from relkd.teacher.vllm_backend import VLLMEngine

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    model = resolve("pypi:SmolLM2-135M-Instruct")
    engine = VLLMEngine(model, TeacherConfig(backend="vllm", max_prompt_tokens=512))
    teacher = engine.teacher()
    prompts = ["Query: red shoes\nTitle: Nike red running shoe\nReasoning:"]
    out = teacher.generate(prompts, 2, SamplingConfig(no_repeat_ngram=0, max_new_tokens=48), seed=0, labels=LABELS)
    assert len(out) == 1 and len(out[0]) == 2
    assert all(parse(o, LABELS).label in LABELS for o in out[0] if parse(o, LABELS).error != "no label line")
    scores = teacher.score_labels([prompts[0] + " same shoe.\nLabel:"], LABELS)
    assert scores.shape == (1, 3) and (scores < 0).all()
    assert teacher.cache_id.startswith("vllm|")
