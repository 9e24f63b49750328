"""relkd.teacher.parsing: the strict answer grammar, on the 6-class catalogue labels and ESCI's 4."""
from __future__ import annotations

import pytest

from relkd.teacher.parsing import Parsed, answer_end, awaits_label, cut_answer, error_kind, parse
from relkd.teacher.prompts import answer_text

CAT = ("strongly relevant", "brand mismatch", "category mismatch", "model mismatch", "attribute mismatch",
       "accessory mismatch")
ESCI = ("exact", "substitute", "complement", "irrelevant")


def test_valid_answer():
    text = "Reasoning: The brand is Bose,\n  not Sony.\nLabel: brand mismatch"
    assert parse(text, CAT) == Parsed("The brand is Bose, not Sony.", "brand mismatch", None)


@pytest.mark.parametrize("line", [
    "**Label:** Brand Mismatch", "**Label**: brand mismatch", "- Label: `brand mismatch`",
    "### Label: Brand mismatch.", "label: BRAND MISMATCH", "Final label: \"brand mismatch\"",
    "Answer: [brand mismatch]", "Label: brand_mismatch", "**Label:**\n\n**brand mismatch**",
])
def test_markdown_case_and_key_variants(line):
    parsed = parse(f"**Reasoning:** Another brand.\n{line}", CAT)
    assert parsed == Parsed("Another brand.", "brand mismatch", None)


def test_label_followed_by_explanation_and_trailing_lines():
    assert parse("Reasoning: x\nLabel: brand mismatch, because the brand differs", CAT).label == "brand mismatch"
    assert parse("Label: exact (E)\nThanks for asking!", ESCI) == Parsed("", "exact", None)


def test_missing_label_line_keeps_text_as_rationale():
    assert parse("Reasoning: it is a case for\nthe phone.", CAT) == Parsed("it is a case for the phone.", None,
                                                                           "no label line")
    # "Labels:" is not the key, and a label named mid-line is not a label line.
    assert parse("Labels: exact, substitute\nSo the label: exact", ESCI).error == "no label line"


@pytest.mark.parametrize("text, error", [
    ("Label: relevant", "unknown label 'relevant'"),
    ("Label: exactly right", "unknown label 'exactly right'"),
    ("Label: not exact", "unknown label 'not exact'"),
    ("Label: it is an exact match", "unknown label 'it is an exact match'"),
    ("Label:", "unknown label ''"),
])
def test_unknown_label_is_not_guessed(text, error):
    assert parse(f"Reasoning: The title is an exact match.\n{text}", ESCI) == Parsed(
        "The title is an exact match.", None, error)


def test_ambiguous_label():
    parsed = parse("Reasoning: hmm\nLabel: brand mismatch or model mismatch", CAT)
    assert parsed == Parsed("hmm", None, "ambiguous label 'brand mismatch or model mismatch'")
    assert parse("Label: brand mismatch, not model mismatch", CAT).error.startswith("ambiguous label")


def test_first_label_line_ends_the_answer():
    # A small model that keeps writing after its answer starts another pair: what follows is ignored.
    text = "Reasoning: same brand.\nLabel: brand mismatch\nQuery: x\nLabel: model mismatch"
    assert parse(text, CAT) == Parsed("same brand.", "brand mismatch", None)
    assert parse("Label: maybe\nLabel: exact", ESCI).error == "unknown label 'maybe'"


@pytest.mark.parametrize("text, end", [
    ("Reasoning: r\nLabel: exact\nmore", len("Reasoning: r\nLabel: exact\n")),
    ("Reasoning: r\nLabel: exact", None),                 # the label may still be growing
    ("Reasoning: r\nLabel:", None),                       # cut right after the key: not an answer yet
    ("Reasoning: r\n**Label:**\nexact\nQuery", len("Reasoning: r\n**Label:**\nexact\n")),
    ("Reasoning: r\n**Label:**\n\n", None),
    ("Reasoning: no label yet\n", None),
])
def test_answer_end_is_the_end_of_the_first_complete_label_line(text, end):
    assert answer_end(text) == end


@pytest.mark.parametrize("text, waits", [
    ("Reasoning: r\nLabel:", True),
    ("Reasoning: r\n**Label:** ", True),
    ("Reasoning: r\n**Label:**\n\n", True),          # a bare key line: the label comes on the next line
    ("Reasoning: r\nLabel: ex", False),              # the label has begun
    ("Reasoning: r\nLabel: exact\nLabel:", False),   # only the first label line is the answer's
    ("Reasoning: the label", False),
    ("", False),
])
def test_awaits_label_is_the_point_a_guided_decoder_chooses_the_label(text, waits):
    assert awaits_label(text) is waits


def test_cut_answer_drops_what_follows_the_label_line():
    assert cut_answer("Reasoning: r\nLabel: exact\nQuery: q\nLabel: irrelevant") == "Reasoning: r\nLabel: exact"
    assert cut_answer("Reasoning: r and more") == "Reasoning: r and more"


def test_empty_rationale_keeps_the_label():
    assert parse("Label: complement", ESCI) == Parsed("", "complement", None)


def test_long_label_text_is_cut_in_the_error():
    parsed = parse("Label: " + "very " * 30, ESCI)
    assert parsed.label is None and parsed.error == f"unknown label '{('very ' * 12)[:60]}...'"


@pytest.mark.parametrize("labels", [CAT, ESCI])
def test_answer_text_round_trips(labels):
    for label in labels:
        assert parse(answer_text(" two\n lines  of reasoning ", label), labels) == Parsed(
            "two lines of reasoning", label, None)
    assert answer_text("", labels[0]) == f"Label: {labels[0]}"


def test_bad_label_sets_are_the_callers_error():
    with pytest.raises(ValueError, match="empty"):
        parse("Label: exact", ())
    with pytest.raises(ValueError, match="same after normalising"):
        parse("Label: exact", ("brand-mismatch", "brand mismatch"))


def test_error_kind_drops_the_quoted_text():
    """teacher_eval counts failed answers by kind; the kind is the error without the answer's own words."""
    labels = ["exact", "substitute", "irrelevant"]
    assert error_kind(parse("Reasoning: fine.\nLabel: exact", labels).error) is None
    assert error_kind(parse("It is fine.", labels).error) == "no label line"
    assert error_kind(parse("Label: size mismatch", labels).error) == "unknown label"
    assert error_kind(parse("Label: exact or substitute", labels).error) == "ambiguous label"
