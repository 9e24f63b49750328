"""Figures (confusion matrix, reliability diagram, probe bars like the paper's Fig. 4) and their data rows."""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from relkd.eval.metrics import calibration_error
from relkd.io import atomic_path

UNPARSEABLE_NAME = "(unparseable)"


def _figure(width: float, height: float) -> Figure:
    # Figure + Agg canvas directly, not pyplot: no global backend state, safe in any process.
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_cm(cm, labels) -> np.ndarray:
    m = np.asarray(cm, dtype=int)
    if m.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix shape {m.shape} does not match {len(labels)} labels {list(labels)}")
    return m


def confusion_rows(cm: Sequence[Sequence[int]], labels: Sequence[Hashable]) -> list[dict]:
    """One row per cell: {actual, predicted, count}, zeros included (a compact, diffable summary)."""
    m = _check_cm(cm, labels)
    return [{"actual": str(a), "predicted": str(p), "count": int(m[i, j])}
            for i, a in enumerate(labels) for j, p in enumerate(labels)]


def dvc_confusion_rows(cm: Sequence[Sequence[int]], labels: Sequence[Hashable],
                       unparseable: Sequence[int] | None = None) -> list[dict]:
    """One {actual, predicted} row per example, for DVC's "confusion" template, which counts rows
    (a count field would be ignored). `unparseable` (per gold class) adds "(unparseable)" rows."""
    m = _check_cm(cm, labels)
    rows = [{"actual": str(a), "predicted": str(p)}
            for i, a in enumerate(labels) for j, p in enumerate(labels) for _ in range(m[i, j])]
    if unparseable is not None:
        rows += [{"actual": str(a), "predicted": UNPARSEABLE_NAME}
                 for a, k in zip(labels, unparseable, strict=True) for _ in range(int(k))]
    return rows


def confusion_plot(cm: Sequence[Sequence[int]], labels: Sequence[Hashable], title: str = "") -> Figure:
    """Heat map of counts, rows = gold, columns = predicted, each cell annotated with its count."""
    m = _check_cm(cm, labels)
    size = 1.0 + 0.9 * len(labels)
    fig = _figure(size + 1.5, size)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues")
    names = [str(x) for x in labels]
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    cut = m.max() / 2 if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > cut else "black")
    fig.colorbar(im, ax=ax)
    return fig


def reliability_plot(rows: Sequence[Mapping], title: str = "") -> Figure:
    """Accuracy per confidence bin against the diagonal of perfect calibration."""
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot()
    full = [r for r in rows if r["count"]]
    ax.bar([(r["low"] + r["high"]) / 2 for r in full], [r["accuracy"] for r in full],
           width=[r["high"] - r["low"] for r in full], edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ece = f" (ECE {calibration_error(rows):.3f})" if full else ""
    ax.set_title(title + ece)
    ax.legend(loc="upper left")
    return fig


def probe_bar_plot(results: Sequence[Mapping], title: str = "Probe F1 on non-trivial CoT keywords") -> Figure:
    """Per keyword, mean probe F1 on the latent reasoning vector r vs on h_cls, std over runs as
    error bars (the paper's Fig. 4). Skipped keywords are left out."""
    done = [r for r in results if r.get("status") == "ok"]
    fig = _figure(max(5.0, 0.6 * len(done) + 2), 4.0)
    ax = fig.add_subplot()
    x = np.arange(len(done))
    w = 0.4
    ax.bar(x - w / 2, [r["mean_r"] for r in done], w, yerr=[r["std_r"] for r in done], capsize=3,
           label="latent reasoning vector r")
    ax.bar(x + w / 2, [r["mean_cls"] for r in done], w, yerr=[r["std_cls"] for r in done], capsize=3,
           label="[CLS] h_cls")
    ax.set_xticks(x, [str(r.get("keyword", i)) for i, r in enumerate(done)], rotation=45, ha="right")
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure atomically; the format follows the file suffix (png, svg, pdf, ...)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"figure path {str(path)!r} has no suffix; name the format, e.g. {path.name}.png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path
