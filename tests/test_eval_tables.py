import numpy as np
import pytest

from relkd.eval.metrics import reliability_rows
from relkd.eval.plots import (
    confusion_plot,
    confusion_rows,
    dvc_confusion_rows,
    probe_bar_plot,
    reliability_plot,
    save_figure,
)
from relkd.eval.tables import STUDENT_COLUMNS, TEACHER_COLUMNS, by_dataset, student_table, teacher_table, to_markdown


def test_to_markdown_exact_string():
    rows = [{"model": "plain", "acc": 0.5, "note": None}, {"model": "a|b", "acc": 0.625, "note": "x"}]
    md = to_markdown(rows, {"Model": "model", "ACC": "acc", "Note": "note"}, floatfmt=".3f")
    assert md == ("| Model | ACC | Note |\n"
                  "|---|---|---|\n"
                  "| plain | 0.500 |  |\n"
                  "| a\\|b | 0.625 | x |\n")
    assert to_markdown(rows[:1], ["model"]) == "| model |\n|---|\n| plain |\n"


def _results():
    seed = lambda acc, f1: {"accuracy": acc, "macro_f1": f1}
    return {"plain": [seed(0.50, 0.40), seed(0.60, 0.50)],
            "lrkd-gat": [seed(0.62, 0.45), seed(0.70, 0.55)]}


def test_student_table_delta_ci_and_retention():
    cis = {"lrkd-gat": {"accuracy": {"low": 0.02, "high": 0.18}}}
    rows = student_table(_results(), cis=cis, teacher={"accuracy": 0.80, "macro_f1": 0.625})
    plain, gat = rows
    assert plain["model"] == "plain" and gat["model"] == "lrkd-gat"
    assert gat["accuracy"] == pytest.approx(0.66)
    assert gat["accuracy_std"] == pytest.approx(0.08 / np.sqrt(2))
    assert gat["ACC"] == "66.00 ± 5.66"
    assert gat["delta_accuracy"] == pytest.approx(0.11)
    assert gat["delta_macro_f1"] == pytest.approx(0.05)
    assert gat["ΔACC (95% CI)"] == "+11.00 [+2.00, +18.00]"
    assert gat["ΔF1 (95% CI)"] == "+5.00"  # no CI given for F1
    assert gat["retention_accuracy"] == pytest.approx(0.825) and gat["ret. ACC"] == "82.5%"
    assert gat["retention_macro_f1"] == pytest.approx(0.8) and gat["ret. F1"] == "80.0%"
    assert plain["delta_accuracy"] is None and plain["ΔACC (95% CI)"] == "-"
    md = to_markdown(rows, STUDENT_COLUMNS)
    assert md.splitlines()[3].startswith("| lrkd-gat | 66.00 ± 5.66 | 50.00 ± 7.07 | +11.00 [+2.00, +18.00]")


def test_student_table_without_teacher_and_with_bad_baseline():
    rows = student_table(_results())
    assert rows[1]["retention_accuracy"] is None and rows[1]["ret. ACC"] == "-"
    with pytest.raises(ValueError, match="'bert'"):
        student_table(_results(), baseline="bert")


def test_teacher_table_picks_best_single_perspective_and_orders_like_table1():
    def r(teacher, stage, acc, f1=0.5, persp=None):
        return {"teacher": teacher, "stage": stage, "accuracy": acc, "macro_f1": f1,
                "unparseable_rate": 0.01, "perspective": persp}
    rows = [r("MPCoT", "SFT+DPO", 0.68), r("MPCoT", "few-shot", 0.55), r("MPCoT", "SFT", 0.64),
            r("SingleCoT", "few-shot", 0.50, persp="user"), r("SingleCoT", "few-shot", 0.54, persp="rules"),
            r("SingleCoT", "few-shot", 0.52, persp="struct"), r("SingleCoT", "SFT", 0.60, persp="struct")]
    out = teacher_table(rows)
    # After training, a single-perspective prompt of the MPCoT teacher is not the paper's Best-SingleCoT (a teacher
    # trained on one perspective): it keeps a name of its own.
    assert [o["model"] for o in out] == ["Best-SingleCoT (few-shot)", "MPCoT, best perspective prompt (SFT)",
                                         "MPCoT (few-shot)", "MPCoT (SFT)", "MPCoT (SFT+DPO)"]
    assert out[0]["perspective"] == "rules" and out[0]["ACC"] == "54.00"
    assert out[1]["perspective"] == "struct"
    assert "| MPCoT (SFT+DPO) | 68.00 | 50.00 | 1.00 |" in to_markdown(out, TEACHER_COLUMNS)
    with pytest.raises(ValueError, match="two rows for teacher 'MPCoT'"):
        teacher_table(rows + [r("MPCoT", "SFT", 0.1)])


def test_teacher_tables_hold_the_trained_single_perspective_rows_with_paired_deltas():
    from relkd.eval.tables import ablation_table

    gold = ["a", "b", "a", "b"]

    def r(teacher, stage, preds, persp=None):
        acc = sum(p == g for p, g in zip(preds, gold)) / 4
        return {"teacher": teacher, "stage": stage, "accuracy": acc, "macro_f1": acc, "unparseable_rate": 0.0,
                "perspective": persp, "preds": preds}
    rows = [r("MPCoT", "SFT+DPO", ["a", "b", "a", "b"]), r("MPCoT", "SFT", ["a", "b", "a", "a"]),
            r("SingleCoT-trained", "SFT", ["a", "a", "a", "a"], "user"),
            r("SingleCoT-trained", "SFT", ["b", "b", "b", "a"], "rules"),
            r("SingleCoT-trained", "SFT+DPO", ["a", "b", "b", "a"], "user"),
            r("SingleCoT-trained", "SFT+MPCoT DPO", ["a", "b", "a", "a"], "user"),
            r("S-CoT", "SFT+DPO", ["a", "a", "b", "b"], "user"), r("ProgressiveCoT", "SFT", ["b", "b", "a", "a"])]
    out = teacher_table(rows, gold=gold, labels=["a", "b"])
    assert [o["model"] for o in out] == ["Best-SingleCoT (SFT)", "Best-SingleCoT (SFT+DPO)",
                                         "S-CoT user (SFT+DPO, size-matched)", "ProgressiveCoT (SFT)",
                                         "MPCoT (SFT)", "MPCoT (SFT+DPO)"]  # the Table 3 row stays out
    assert out[0]["perspective"] == "user" and "one perspective" in out[0]["what"] and "curriculum" in out[3]["what"]
    assert out[0]["delta_accuracy"] == pytest.approx(-0.5) and out[-1]["ΔACC (95% CI)"] == "-"
    low, high = out[0]["delta_accuracy_ci"]
    assert -1 <= low <= -0.5 <= high <= 0
    t3 = ablation_table(rows, gold, ["a", "b"])
    assert [o["model"] for o in t3] == ["user SFT", "+ user DPO", "+ MPCoT DPO", "rules SFT", "MPCoT (SFT+DPO)"]
    assert t3[1]["delta_accuracy"] == pytest.approx(0.0) and t3[2]["delta_accuracy"] == pytest.approx(0.25)


def test_by_dataset_puts_datasets_side_by_side():
    t1 = [{"model": "plain", "ACC": "53.17", "F1": "49.34"}]
    t2 = [{"model": "plain", "ACC": "66.83", "F1": "41.38"}, {"model": "gat", "ACC": "68.73", "F1": "45.83"}]
    rows, cols = by_dataset({"AliExpress": t1, "ESCI-US": t2})
    assert cols == ["model", "AliExpress ACC", "AliExpress F1", "ESCI-US ACC", "ESCI-US F1"]
    assert rows[1] == {"model": "gat", "ESCI-US ACC": "68.73", "ESCI-US F1": "45.83"}
    assert to_markdown(rows, cols).splitlines()[3] == "| gat |  |  | 68.73 | 45.83 |"


def test_confusion_rows_and_dvc_rows_carry_every_count():
    cm = [[3, 1], [0, 2]]
    rows = confusion_rows(cm, ["x", "y"])
    assert rows == [{"actual": "x", "predicted": "x", "count": 3}, {"actual": "x", "predicted": "y", "count": 1},
                    {"actual": "y", "predicted": "x", "count": 0}, {"actual": "y", "predicted": "y", "count": 2}]
    dvc = dvc_confusion_rows(cm, ["x", "y"], unparseable=[0, 1])
    assert len(dvc) == 7
    assert dvc.count({"actual": "x", "predicted": "x"}) == 3
    assert dvc[-1] == {"actual": "y", "predicted": "(unparseable)"}
    with pytest.raises(ValueError, match="does not match 3 labels"):
        confusion_rows(cm, ["x", "y", "z"])


def test_figures_render_and_save_atomically(tmp_path):
    fig = confusion_plot([[3, 1], [0, 2]], ["x", "y"], "test")
    assert [t.get_text() for t in fig.axes[0].texts] == ["3", "1", "0", "2"]
    out = save_figure(fig, tmp_path / "cm.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png"]  # no temporary file left
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    rel = reliability_plot(reliability_rows(probs, [0, 1, 1], n_bins=5), "rel")
    assert "ECE" in rel.axes[0].get_title()
    save_figure(rel, tmp_path / "rel.svg")
    assert (tmp_path / "rel.svg").read_text().lstrip().startswith("<?xml")
    probes = [{"keyword": "likely", "status": "ok", "mean_r": 0.4, "std_r": 0.05, "mean_cls": 0.2, "std_cls": 0.04},
              {"keyword": "rare", "status": "skipped"}]
    bars = probe_bar_plot(probes)
    assert [t.get_text() for t in bars.axes[0].get_xticklabels()] == ["likely"]
    assert [p.get_height() for p in bars.axes[0].patches] == pytest.approx([0.4, 0.2])
    with pytest.raises(ValueError, match="no suffix"):
        save_figure(bars, tmp_path / "bars")
