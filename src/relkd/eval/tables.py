"""Result tables shaped like the paper's Table 1 (teacher and student parts), as rows and as markdown."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from relkd.eval.stats import mean_std

STUDENT_COLUMNS = ("model", "ACC", "F1", "ΔACC (95% CI)", "ΔF1 (95% CI)", "ret. ACC", "ret. F1")
TEACHER_COLUMNS = ("model", "ACC", "F1", "unparseable")
STAGE_ORDER = ("few-shot", "SFT", "SFT+DPO")
SINGLE, BEST_SINGLE, MPCOT = "SingleCoT", "Best-SingleCoT", "MPCoT"
_METRICS = ("accuracy", "macro_f1")


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


def teacher_table(rows: Sequence[Mapping], *, select_by: str = "accuracy") -> list[dict]:
    """Teacher rows in Table 1 order: Best-SingleCoT, other baselines, then MPCoT; within each,
    few-shot, SFT, SFT+DPO.

    Each input row has ``teacher``, ``stage``, ``accuracy``, ``macro_f1`` and ``unparseable_rate``.
    Rows with teacher "SingleCoT" also name their ``perspective``; per stage the one with the highest
    `select_by` becomes "Best-SingleCoT" (the paper's top-performing single perspective) and keeps
    its perspective name.
    """
    if select_by not in _METRICS:
        raise ValueError(f"select_by {select_by!r} is not supported; use one of {_METRICS}")
    picked: dict[tuple[str, str], Mapping] = {}
    for r in rows:
        teacher, stage = r["teacher"], r["stage"]
        if teacher == SINGLE:
            key = (BEST_SINGLE, stage)
            if key not in picked or r[select_by] > picked[key][select_by]:
                picked[key] = r
            continue
        if (teacher, stage) in picked:
            raise ValueError(f"two rows for teacher {teacher!r} at stage {stage!r}; pass one per stage "
                             f"(single perspectives go in as teacher {SINGLE!r} with a perspective)")
        picked[(teacher, stage)] = r
    teachers = list(dict.fromkeys(t for t, _ in picked))
    stages = list(STAGE_ORDER) + [s for s in dict.fromkeys(s for _, s in picked) if s not in STAGE_ORDER]

    def teacher_rank(t: str) -> tuple[int, int]:
        return (0 if t == BEST_SINGLE else 2 if t == MPCOT else 1, teachers.index(t))

    out = []
    for teacher, stage in sorted(picked, key=lambda k: (teacher_rank(k[0]), stages.index(k[1]))):
        r = picked[(teacher, stage)]
        out.append({
            "model": f"{teacher} ({stage})", "teacher": teacher, "stage": stage,
            "perspective": r.get("perspective"),
            "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "unparseable_rate": r["unparseable_rate"],
            "ACC": _pct(r["accuracy"]), "F1": _pct(r["macro_f1"]), "unparseable": _pct(r["unparseable_rate"]),
        })
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
