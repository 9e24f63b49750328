"""Input drift: a cheap profile of traffic (lengths, language mix, tier mix) and warnings when a batch departs from it.

A profile is a small JSON-ready dict, so the reference (the validation split, or last week's traffic)
can be stored beside the model and each new batch compared to it without the reference rows.
"""
from __future__ import annotations

import re
import unicodedata

import numpy as np
import pandas as pd
from pydantic import Field

from relkd.section import Section

TEXT_COLUMNS = ("query", "title")
OTHER = "other"

# Words that are common in shopping queries and titles and tell the languages apart; a word shared by
# two languages ("para", "comprar") counts for both, and a tie yields "other".
_MARKER_WORDS = {
    "en": {"the", "and", "for", "with", "without", "of", "size", "inch", "buy", "cheap", "sale", "deal", "men",
           "women", "kids", "free", "shipping", "pack", "set"},
    "es": {"el", "la", "los", "las", "para", "con", "sin", "y", "talla", "pulgadas", "comprar", "barato", "oferta",
           "envío", "gratis", "hombre", "mujer", "niños", "negro", "blanco", "rojo"},
    "fr": {"le", "la", "les", "pour", "avec", "sans", "et", "taille", "pouces", "pointure", "acheter", "pas", "cher",
           "livraison", "gratuite", "homme", "femme", "enfant", "noir", "blanc", "rouge", "en"},
    "pt": {"o", "os", "as", "para", "com", "sem", "e", "tamanho", "polegadas", "número", "comprar", "barato",
           "promoção", "frete", "grátis", "homem", "mulher", "preto", "branco", "vermelho"},
}
LANGUAGES = tuple(_MARKER_WORDS)  # the languages the detector tells apart
_MARKER_CHARS = {"es": "ñ¿¡", "fr": "èëàœîûù", "pt": "ãõ"}
_WORD = re.compile(r"\w+", re.UNICODE)


class DriftThresholds(Section):
    """When a batch's profile counts as drifted from the reference."""

    length_rel_change: float = Field(
        0.3, gt=0, description="relative change of a mean length (characters or words, query or title)")
    language_tvd: float = Field(
        0.2, gt=0, le=1, description="total variation distance between language mixes")
    tier_tvd: float = Field(
        0.2, gt=0, le=1, description="total variation distance between predicted tier mixes")


def guess_language(text: str) -> str:
    """en/es/fr/pt from marker words and letters, else "other" (no evidence, a tie, or a non-Latin script).

    Deliberately crude: it only has to be the same measuring stick for the reference and the batch.
    """
    text = str(text).lower()
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return OTHER
    if sum(not unicodedata.name(c, "").startswith("LATIN") for c in letters) > len(letters) / 2:
        return OTHER
    words = _WORD.findall(text)
    score = {lang: sum(w in _MARKER_WORDS[lang] for w in words) for lang in LANGUAGES}
    for lang, chars in _MARKER_CHARS.items():
        score[lang] += 2 * sum(c in chars for c in text)
    best = max(score.values())
    winners = [lang for lang, s in score.items() if s == best]
    return winners[0] if best > 0 and len(winners) == 1 else OTHER


def _length_stats(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95))}


def _shares(values: pd.Series) -> dict[str, float]:
    counts = values.astype(str).value_counts(normalize=True).sort_index()
    return {str(k): float(v) for k, v in counts.items()}


def profile(df: pd.DataFrame) -> dict:
    """Length statistics of query and title (characters and words: mean, p50, p95), the language mix
    (the ``locale`` column when present, else :func:`guess_language` of the query) and, with a
    ``tier`` column, the predicted tier mix. Columns that are absent are left out."""
    if len(df) == 0:
        raise ValueError("cannot profile an empty batch")
    out: dict = {"n": int(len(df)), "lengths": {}}
    for col in TEXT_COLUMNS:
        if col in df.columns:
            text = df[col].astype(str)
            out["lengths"][col] = {
                "chars": _length_stats(text.str.len().to_numpy(dtype=float)),
                "words": _length_stats(text.map(lambda s: len(s.split())).to_numpy(dtype=float)),
            }
    if "locale" in df.columns:
        out["language_source"] = "locale"
        out["language"] = _shares(df["locale"])
    elif "query" in df.columns:
        out["language_source"] = "heuristic"
        out["language"] = _shares(df["query"].map(guess_language))
    if "tier" in df.columns:
        out["tier"] = _shares(df["tier"].astype(int))
    return out


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """Half the L1 distance between two categorical distributions (0 = same, 1 = disjoint)."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def drift_check(reference: dict, batch: dict, thresholds: DriftThresholds | dict | None = None) -> list[dict]:
    """Warnings for every measure of `batch` that departs from `reference` beyond its threshold.

    Each warning is {metric, reference, batch, value, threshold, message}, where value is the
    relative change (lengths) or the total variation distance (mixes). A measure present in only one
    profile is skipped; a language mix measured differently (locale vs heuristic) is reported, not compared.
    """
    th = thresholds if isinstance(thresholds, DriftThresholds) else DriftThresholds(**(thresholds or {}))
    warnings: list[dict] = []

    def warn(metric, ref, new, value, limit, what):
        warnings.append({"metric": metric, "reference": ref, "batch": new, "value": value, "threshold": limit,
                         "message": f"{metric}: {what} {value:.3f} > {limit} (reference {ref}, batch {new})"})

    for col, ref_stats in reference.get("lengths", {}).items():
        new_stats = batch.get("lengths", {}).get(col)
        if new_stats is None:
            continue
        for unit in ("chars", "words"):
            ref, new = ref_stats[unit]["mean"], new_stats[unit]["mean"]
            change = abs(new - ref) / ref if ref > 0 else (np.inf if new > 0 else 0.0)
            if change > th.length_rel_change:
                warn(f"{col}.{unit}.mean", round(ref, 3), round(new, 3), float(change), th.length_rel_change,
                     "relative change")
    if "language" in reference and "language" in batch:
        if reference.get("language_source") != batch.get("language_source"):
            warnings.append({"metric": "language", "reference": reference.get("language_source"),
                             "batch": batch.get("language_source"), "value": None, "threshold": None,
                             "message": "language: mixes measured differently (reference "
                                        f"{reference.get('language_source')}, batch {batch.get('language_source')}); "
                                        "profile both with or both without a locale column"})
        else:
            tvd = total_variation(reference["language"], batch["language"])
            if tvd > th.language_tvd:
                warn("language", reference["language"], batch["language"], tvd, th.language_tvd,
                     "total variation distance")
    if "tier" in reference and "tier" in batch:
        tvd = total_variation(reference["tier"], batch["tier"])
        if tvd > th.tier_tvd:
            warn("tier", reference["tier"], batch["tier"], tvd, th.tier_tvd, "total variation distance")
    return warnings
