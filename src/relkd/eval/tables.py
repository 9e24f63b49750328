"""Result tables shaped like the paper's Table 1 (teacher and student parts), as rows and as markdown."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from relkd.eval.stats import mean_std

STUDENT_COLUMNS = ("model", "ACC", "F1", "ΔACC (95% CI)", "ΔF1 (95% CI)", "ret. ACC", "ret. F1")
TEACHER_COLUMNS = ("model", "ACC", "F1", "unparseable")
STAGE_ORDER = ("few-shot", "SFT", "SFT+DPO")
MPCOT_DPO = "SFT+MPCoT DPO"  # a single-perspective SFT teacher's DPO on MPCoT's pairs (Table 3)
# Row kinds of teacher_eval: SINGLE = a teacher asked under one perspective's prompt (the untrained one at few-shot,
# the MPCoT-trained one after); TRAINED_SINGLE = a teacher trained on one perspective's data (teacher.single);
# SIZE_MATCHED = such a teacher's DPO on as many of its own pairs as MPCoT's; MPCOT = the MPCoT teacher.
SINGLE, TRAINED_SINGLE, SIZE_MATCHED, MPCOT = "SingleCoT", "SingleCoT-trained", "S-CoT", "MPCoT"
BEST_SINGLE, MPCOT_AS_SINGLE = "Best-SingleCoT", "MPCoT, best perspective prompt"
REFERENCE = "MPCoT (SFT+DPO)"
_METRICS = ("accuracy", "macro_f1")
_WHAT = {
    (SINGLE, "few-shot"): "untrained, few-shot under one perspective's prompt",
    (SINGLE, None): "the MPCoT-trained teacher asked under one perspective's prompt (with the shots)",
    (TRAINED_SINGLE, "SFT"): "SFT on one perspective's consistent (and label-hinted) rationales, asked under its "
                             "prompt",
    (TRAINED_SINGLE, "SFT+DPO"): "that SFT, then DPO on pairs of its own perspective's answers",
    (TRAINED_SINGLE, MPCOT_DPO): "that SFT, then DPO on MPCoT's cross-perspective pairs posed under its prompt",
    (SIZE_MATCHED, "SFT+DPO"): "that SFT, then DPO on exactly as many pairs of its own answers as MPCoT's DPO has",
    (MPCOT, "few-shot"): "untrained: the majority vote of the three perspectives' few-shot answers",
    (MPCOT, "SFT"): "SFT on the union of the three perspectives' consistent (and label-hinted) rationales, asked "
                    "under the unified prompt",
    (MPCOT, "SFT+DPO"): "that SFT, then DPO on cross-perspective preference pairs",
    (MPCOT, "SFT+DPO+GRPO"): "that SFT+DPO, then GRPO (TaoSR1's third stage)",
}
PROGRESSIVE_WHAT = ("MPCoT's SFT set and steps in a curriculum, shortest rationales first (buckets of rising length in "
                    "words, one after another), asked under the unified prompt; the paper's ProgressiveCoT follows "
                    "LREF's multi-stage CoT SFT, described only briefly: an approximation")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _signed(x: float) -> str:
    return f"{100 * x:+.2f}"


def student_table(results: Mapping[str, Sequence[Mapping]], *, baseline: str = "plain",
                  cis: Mapping[str, Mapping[str, Mapping]] | None = None,
                  teacher: Mapping[str, float] | None = None) -> list[dict]:
    """Student rows: mean ± std over seeds, Δ vs the plain student, retention of the teacher.

    `results` maps variant -> one report per seed (each with ``accuracy`` and ``macro_f1`` as
    fractions, optionally ``per_class``). `cis` maps variant -> {"accuracy": ci, "macro_f1": ci},
    each ci a bootstrap_diff_ci result (b = the variant, a = the plain student). `teacher` holds the
    teacher's ``accuracy``/``macro_f1``; retention = student mean / teacher score. Numeric fields stay
    fractions; the display fields (STUDENT_COLUMNS) are in points, like the paper.
    """
    if baseline not in results:
        raise ValueError(f"baseline {baseline!r} is not among the variants {list(results)}; "
                         "pass baseline= naming the plain fine-tuned student")
    cis = cis or {}
    unknown = set(cis) - set(results)
    if unknown:
        raise ValueError(f"confidence intervals given for unknown variants {sorted(unknown)}")
    summary = {}
    for name, seeds in results.items():
        if not seeds:
            raise ValueError(f"variant {name!r} has no seed results")
        summary[name] = {m: mean_std([s[m] for s in seeds]) for m in _METRICS}
    order = [baseline] + [v for v in results if v != baseline]
    rows = []
    for name in order:
        seeds = results[name]
        row: dict = {"model": name, "n_seeds": len(seeds)}
        for m, short in zip(_METRICS, ("ACC", "F1")):
            mean, std = summary[name][m]
            row[m], row[f"{m}_std"] = mean, std
            row[short] = f"{_pct(mean)} ± {_pct(std)}"
            delta = None if name == baseline else mean - summary[baseline][m][0]
            ci = cis.get(name, {}).get(m)
            row[f"delta_{m}"] = delta
            row[f"delta_{m}_ci"] = [ci["low"], ci["high"]] if ci else None
            shown = "-" if delta is None else _signed(delta)
            if ci:
                shown += f" [{_signed(ci['low'])}, {_signed(ci['high'])}]"
            row[f"Δ{short} (95% CI)"] = shown
            ret = mean / teacher[m] if teacher and teacher.get(m) else None
            row[f"retention_{m}"] = ret
            row[f"ret. {short}"] = "-" if ret is None else f"{100 * ret:.1f}%"
        if all("per_class" in s for s in seeds):
            labels = list(seeds[0]["per_class"])
            row["per_class_f1"] = {lab: mean_std([s["per_class"][lab]["f1"] for s in seeds])[0]
                                   for lab in labels}
        rows.append(row)
    return rows


def describe(teacher: str, stage: str) -> str:
    """One line saying what a teacher row is: trained on what, asked how (a kind not listed is a ProgressiveCoT
    teacher of teacher.progressive)."""
    what = _WHAT.get((teacher, stage)) or (teacher == SINGLE and _WHAT[(SINGLE, None)])
    return what or PROGRESSIVE_WHAT


def _delta(row: Mapping, ref: Mapping, gold: Sequence, labels: Sequence) -> dict:
    """Δ of `row` vs `ref` in accuracy and macro-F1 with their 95% paired bootstrap intervals (same test pairs)."""
    from relkd.eval.stats import bootstrap_diff_ci

    out = {}
    for m, short in zip(_METRICS, ("ACC", "F1")):
        ci = bootstrap_diff_ci(gold, ref["preds"], row["preds"], m, labels, n_boot=1000, seed=0)
        out[f"delta_{m}"], out[f"delta_{m}_ci"] = ci["diff"], [ci["low"], ci["high"]]
        out[f"Δ{short} (95% CI)"] = f"{_signed(ci['diff'])} [{_signed(ci['low'])}, {_signed(ci['high'])}]"
    return out


def _teacher_row(model: str, r: Mapping, best_of: int = 0) -> dict:
    """A table row; `best_of` > 0: the best of that many perspectives' rows (the row says which one)."""
    p = r.get("perspective")
    where = f"; the best of {best_of} perspectives: {p}" if best_of else f" ({p})" if p else ""
    return {"model": model, "teacher": r["teacher"], "stage": r["stage"], "perspective": p,
            "what": describe(r["teacher"], r["stage"]) + where,
            "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "unparseable_rate": r["unparseable_rate"],
            "ACC": _pct(r["accuracy"]), "F1": _pct(r["macro_f1"]), "unparseable": _pct(r["unparseable_rate"]),
            **({"preds": r["preds"]} if "preds" in r else {})}


def teacher_table(rows: Sequence[Mapping], *, select_by: str = "accuracy", gold: Sequence | None = None,
                  labels: Sequence | None = None) -> list[dict]:
    """Teacher rows in Table 1 order: Best-SingleCoT (few-shot, and after SFT / SFT+DPO from the teachers trained
    on one perspective), the MPCoT teacher asked under its best perspective prompt, the size-matched S-CoT rows,
    other baselines (ProgressiveCoT), then MPCoT; within each, few-shot, SFT, SFT+DPO. Each row says what it is.

    Each input row has ``teacher``, ``stage``, ``accuracy``, ``macro_f1`` and ``unparseable_rate``. Rows of kind
    SINGLE and TRAINED_SINGLE name their ``perspective``; per stage the one with the highest `select_by` is kept
    (the paper's top-performing single perspective) with its perspective; TRAINED_SINGLE rows of the Table 3 stage
    (MPCOT_DPO) stay out (:func:`ablation_table`). SIZE_MATCHED rows are kept one per perspective. With `gold` and
    `labels` (and each row's ``preds`` on the same test pairs) every row gets its Δ vs MPCoT (SFT+DPO) with the 95%
    paired bootstrap interval.
    """
    if select_by not in _METRICS:
        raise ValueError(f"select_by {select_by!r} is not supported; use one of {_METRICS}")
    picked: dict[tuple[str, str], Mapping] = {}
    among: dict[tuple[str, str], int] = {}  # how many perspectives a best-of row was picked from
    for r in rows:
        teacher, stage = r["teacher"], r["stage"]
        if teacher == SINGLE:
            teacher = BEST_SINGLE if stage == "few-shot" else MPCOT_AS_SINGLE
        elif teacher == TRAINED_SINGLE:
            if stage == MPCOT_DPO:
                continue
            teacher = BEST_SINGLE
        elif teacher == SIZE_MATCHED:
            teacher = f"{SIZE_MATCHED} {r['perspective']}"
        else:
            if (teacher, stage) in picked:
                raise ValueError(f"two rows for teacher {teacher!r} at stage {stage!r}; pass one per stage "
                                 f"(single perspectives go in as teacher {SINGLE!r} with a perspective)")
            picked[(teacher, stage)] = r
            continue
        key = (teacher, stage)
        if teacher != f"{SIZE_MATCHED} {r['perspective']}":
            among[key] = among.get(key, 0) + 1
        if key not in picked or r[select_by] > picked[key][select_by]:
            picked[key] = r
    teachers = list(dict.fromkeys(t for t, _ in picked))
    stages = list(STAGE_ORDER) + [s for s in dict.fromkeys(s for _, s in picked) if s not in STAGE_ORDER]

    def teacher_rank(t: str) -> tuple[int, int]:
        rank = {BEST_SINGLE: 0, MPCOT_AS_SINGLE: 1, MPCOT: 4}.get(t, 2 if t.startswith(SIZE_MATCHED) else 3)
        return rank, teachers.index(t)

    out = []
    for teacher, stage in sorted(picked, key=lambda k: (teacher_rank(k[0]), stages.index(k[1]))):
        model = f"{teacher} ({stage}, size-matched)" if teacher.startswith(SIZE_MATCHED) else f"{teacher} ({stage})"
        out.append(_teacher_row(model, picked[(teacher, stage)], among.get((teacher, stage), 0)))
    ref = next((r for r in out if r["model"] == REFERENCE), None)
    if gold is not None and ref is not None and "preds" in ref:
        for r in out:
            r.update(_delta(r, ref, gold, labels) if r is not ref else {"ΔACC (95% CI)": "-", "ΔF1 (95% CI)": "-"})
    return out


def ablation_table(rows: Sequence[Mapping], gold: Sequence, labels: Sequence) -> list[dict]:
    """Table 3: per single-perspective teacher, its SFT row, then "+ <perspective> DPO" (its own pairs) and
    "+ MPCoT DPO" (MPCoT's pairs) as Δ vs that SFT with 95% paired bootstrap intervals; MPCoT (SFT+DPO) last."""
    trained = {(r["perspective"], r["stage"]): r for r in rows if r["teacher"] == TRAINED_SINGLE}
    out = []
    for p in dict.fromkeys(r["perspective"] for r in rows if r["teacher"] == TRAINED_SINGLE):
        base = trained.get((p, "SFT"))
        if base is None:
            continue
        out.append(_teacher_row(f"{p} SFT", base))
        for stage, name in (("SFT+DPO", f"+ {p} DPO"), (MPCOT_DPO, "+ MPCoT DPO")):
            if (p, stage) in trained:
                out.append({**_teacher_row(name, trained[(p, stage)]), **_delta(trained[(p, stage)], base, gold,
                                                                                   labels)})
    ref = next((r for r in rows if r["teacher"] == MPCOT and r["stage"] == "SFT+DPO"), None)
    if ref is not None:
        out.append(_teacher_row(REFERENCE, ref))
    return out


def by_dataset(tables: Mapping[str, Sequence[Mapping]],
               values: Sequence[str] = ("ACC", "F1")) -> tuple[list[dict], list[str]]:
    """Put per-dataset tables side by side, one column group per dataset, like Table 1's
    AliExpress / ESCI-US / ... columns. Returns (rows, columns) for to_markdown; a model missing
    from a dataset shows an empty cell."""
    models = list(dict.fromkeys(r["model"] for rows in tables.values() for r in rows))
    wide = {m: {"model": m} for m in models}
    for ds, rows in tables.items():
        for r in rows:
            for v in values:
                wide[r["model"]][f"{ds} {v}"] = r.get(v)
    columns = ["model"] + [f"{ds} {v}" for ds in tables for v in values]
    return list(wide.values()), columns


def _cell(v, floatfmt: str) -> str:
    if v is None:
        return ""
    text = format(v, floatfmt) if isinstance(v, float) else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: Sequence[Mapping], columns: Sequence[str] | Mapping[str, str],
                floatfmt: str = ".4f") -> str:
    """A GitHub pipe table. `columns` lists row keys (used as headers) or maps header -> key;
    a missing value is an empty cell, a float is written with `floatfmt`."""
    pairs = list(columns.items()) if isinstance(columns, Mapping) else [(c, c) for c in columns]
    if not pairs:
        raise ValueError("to_markdown needs at least one column")
    lines = ["| " + " | ".join(_cell(h, floatfmt) for h, _ in pairs) + " |",
             "|" + "|".join("---" for _ in pairs) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(k), floatfmt) for _, k in pairs) + " |" for r in rows]
    return "\n".join(lines) + "\n"
