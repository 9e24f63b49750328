"""Lexical features of a (query, title) pair: token overlap, TF-IDF cosines, BM25, number matches, lengths.

The one home of these features: the lexical peers (:mod:`relkd.eval.peers`) classify them, the student adds
them to its head (``student.lexical``), and the served student computes them inside the Triton stub. So this
module imports only the standard library and numpy (the server's environment has no scikit-learn, torch or
relkd): it is copied beside ``model.py`` into every version folder of the model repository.

:class:`LexicalTables` holds what the features learn from the training texts, as plain dicts that round-trip
through JSON: the word and character-n-gram idf (scikit-learn's ``TfidfVectorizer(sublinear_tf=True)``
weighting, smooth idf, L2 rows; the character n-grams of its ``analyzer="char_wb"``, 3-5) and the BM25
statistics of the distinct training titles.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BM25_K1, BM25_B = 1.2, 0.75
CHAR_NGRAMS = (3, 5)
_TOKEN = re.compile(r"\w+")  # letters and digits in any script; "usb-c" -> usb, c
_SPACES = re.compile(r"\s\s+")
FEATURES = ("query_in_title", "jaccard", "tfidf_cosine", "char_tfidf_cosine", "bm25", "bm25_norm",
            "query_numbers", "numbers_in_title", "number_share", "title_numbers_not_in_query",
            "query_tokens", "title_tokens", "length_ratio")
TABLES_FILE = "lexical.json"
FORMAT_VERSION = 1


def tokens(text) -> list[str]:
    """Lower-cased word tokens (digits kept, so model codes like "x200" stay one token)."""
    return _TOKEN.findall(text.lower()) if isinstance(text, str) else []


def char_ngrams(text: str) -> list[str]:
    """Character 3-5-grams inside word boundaries, words padded with a space (scikit-learn's char_wb)."""
    lo, hi = CHAR_NGRAMS
    grams = []
    for w in _SPACES.sub(" ", text.lower()).split():
        w = f" {w} "
        for n in range(lo, hi + 1):
            offset = 0
            grams.append(w[offset:offset + n])
            while offset + n < len(w):
                offset += 1
                grams.append(w[offset:offset + n])
            if offset == 0:  # a word shorter than n counts once
                break
    return grams


def _idf(docs: list[list[str]]) -> dict[str, float]:
    """Smoothed idf over `docs`: ln((1 + n) / (1 + df)) + 1."""
    df = Counter(term for d in docs for term in set(d))
    n = len(docs)
    return {term: math.log((1 + n) / (1 + k)) + 1.0 for term, k in df.items()}


def _tfidf(terms: list[str], idf: dict[str, float]) -> dict[str, float]:
    """An L2-normalised sublinear-tf TF-IDF vector of known terms (unknown terms are dropped)."""
    vec = {t: (1.0 + math.log(c)) * idf[t] for t, c in Counter(terms).items() if t in idf}
    norm = math.sqrt(sum(v * v for v in vec.values()))
    return {t: v / norm for t, v in vec.items()} if norm else {}


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    if len(b) < len(a):
        a, b = b, a
    return sum(v * b.get(t, 0.0) for t, v in a.items())


def _has_digit(tok: str) -> bool:
    return any(ch.isdigit() for ch in tok)


@dataclass(frozen=True)
class LexicalTables:
    """What the features learn from the training pairs (see the module docstring)."""

    word_idf: dict
    char_idf: dict
    n_titles: int
    avg_title_len: float
    title_df: dict

    def bm25_idf(self, tok: str) -> float:
        """BM25's idf with the +1 inside the log (never negative, as in Lucene)."""
        df = self.title_df.get(tok, 0)
        return math.log((self.n_titles - df + 0.5) / (df + 0.5) + 1.0)

    def bm25(self, query_tokens: Sequence[str], title_tokens: Sequence[str]) -> float:
        """Okapi BM25 of the title for the query."""
        tf = Counter(title_tokens)
        norm = BM25_K1 * (1 - BM25_B + BM25_B * len(title_tokens) / self.avg_title_len)
        return float(sum(self.bm25_idf(q) * tf[q] * (BM25_K1 + 1) / (tf[q] + norm) for q in query_tokens if tf[q]))

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "features": list(FEATURES), "word_idf": self.word_idf,
                "char_idf": self.char_idf, "n_titles": self.n_titles, "avg_title_len": self.avg_title_len,
                "title_df": self.title_df}

    @classmethod
    def from_dict(cls, d: dict) -> "LexicalTables":
        if d.get("format_version") != FORMAT_VERSION or list(d.get("features", ())) != list(FEATURES):
            raise ValueError(f"lexical tables of format {d.get('format_version')!r} with features "
                             f"{d.get('features')!r}; this code computes format {FORMAT_VERSION} {list(FEATURES)}: "
                             "retrain the student (or refit the peer) with this relkd version")
        return cls(dict(d["word_idf"]), dict(d["char_idf"]), int(d["n_titles"]), float(d["avg_title_len"]),
                   dict(d["title_df"]))

    def save(self, folder) -> None:
        from pathlib import Path

        (Path(folder) / TABLES_FILE).write_text(json.dumps(self.to_dict(), sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, folder) -> "LexicalTables":
        from pathlib import Path

        path = Path(folder) / TABLES_FILE
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def fit_tables(queries: Sequence[str], titles: Sequence[str]) -> LexicalTables:
    """The idf tables from the training queries and titles (both are documents of the TF-IDF vocabularies) and
    BM25's statistics from the distinct training titles (a title judged for several queries counts once)."""
    texts = [str(t) for t in list(queries) + list(titles)]
    docs = [tokens(t) for t in dict.fromkeys(str(t) for t in titles)]
    if not docs:
        raise ValueError("the lexical tables need at least one training title")
    return LexicalTables(_idf([tokens(t) for t in texts]), _idf([char_ngrams(t) for t in texts]), len(docs),
                         float(np.mean([len(d) for d in docs])) or 1.0,
                         dict(Counter(tok for d in docs for tok in set(d))))


def features(queries: Sequence[str], titles: Sequence[str], tables: LexicalTables) -> np.ndarray:
    """One row of FEATURES per (query, title) pair, float64 (N, len(FEATURES))."""
    queries, titles = [str(q) for q in queries], [str(t) for t in titles]
    if len(queries) != len(titles):
        raise ValueError(f"{len(queries)} queries but {len(titles)} titles; pass one title per query")
    x = np.zeros((len(queries), len(FEATURES)), dtype=np.float64)
    for i, (q, t) in enumerate(zip(queries, titles)):
        qt, tt = tokens(q), tokens(t)
        qs, ts = set(qt), set(tt)
        q_num = {w for w in qs if _has_digit(w)}
        t_num = {w for w in ts if _has_digit(w)}
        ceiling = sum(tables.bm25_idf(w) * (BM25_K1 + 1) for w in qt)  # the score as tf -> infinity
        score = tables.bm25(qt, tt)
        x[i] = [
            len(qs & ts) / len(qs) if qs else 0.0,
            len(qs & ts) / len(qs | ts) if qs | ts else 0.0,
            _cosine(_tfidf(qt, tables.word_idf), _tfidf(tt, tables.word_idf)),
            _cosine(_tfidf(char_ngrams(q), tables.char_idf), _tfidf(char_ngrams(t), tables.char_idf)),
            score,
            score / ceiling if ceiling else 0.0,
            len(q_num),
            len(q_num & ts),
            len(q_num & ts) / len(q_num) if q_num else 0.0,
            len(t_num - qs),
            len(qt),
            len(tt),
            len(qt) / len(tt) if tt else 0.0,
        ]
    return x
