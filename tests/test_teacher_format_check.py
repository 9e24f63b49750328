"""relkd.teacher.format_check: the per-prompt report from a judge's own answers, and the loud failure."""
from __future__ import annotations

import pytest

from relkd.teacher.format_check import format_report, judged_format, require_format

LABELS = ("exact", "substitute", "irrelevant")


def _record(perspective, text, parsed, gold):
    return {"perspective": perspective, "text": text, "parsed_label": parsed, "gold": gold}


def test_judged_format_counts_every_sample_per_perspective():
    records = [_record("user_intent", "Label: exact", "exact", "exact"),
               _record("user_intent", "rambling with no label", None, "exact"),
               _record("business_rules", "Label: irrelevant", "irrelevant", "exact"),
               _record("business_rules", "Label: exact", "exact", "exact")]
    got = judged_format(records, LABELS)
    assert set(got) == {"user_intent", "business_rules"}
    assert got["user_intent"]["n"] == 2 and got["user_intent"]["unparseable_rate"] == 0.5
    assert got["user_intent"]["failed_example"] == "rambling with no label"
    assert got["business_rules"]["unparseable_rate"] == 0.0 and got["business_rules"]["accuracy"] == 0.5
    # the same report as parsing the texts afresh
    assert format_report(["Label: exact", "rambling with no label"], ["exact", "exact"], LABELS) == got["user_intent"]


def test_require_format_names_the_worst_prompt_and_one_failed_answer():
    check = {"unified": format_report(["Label: exact"] * 9 + ["no label"], ["exact"] * 10, LABELS),
             "user_intent": format_report(["Label: exact"] * 6 + ["cut off"] * 4, ["exact"] * 10, LABELS)}
    require_format(check, 0.4, {})  # 10% and 40%: within the limit
    with pytest.raises(SystemExit, match=r"40% of the teacher's 10 answers under the user_intent prompt.*"
                                         r"\['unified', 'user_intent'\].*'cut off'"):
        require_format(check, 0.05, {"first_loss": 1.0, "last_loss": 0.9, "steps": 3})
