"""Peer rows of every quality table: the majority class, lexical models and sentence-transformers' CrossEncoder.

A student's score means little alone: these are what a relevance team would get without a teacher, trained
on the same rows. Frames have ``query``, ``title`` and (for training) ``label`` columns; every predictor's
``predict_proba(frame)`` returns an (N, C) array of probabilities in the order of `labels`.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

PEERS = ("majority", "lexical_lr", "lexical_hgb", "cross_encoder")  # the folder and row names
BM25_K1, BM25_B = 1.2, 0.75
_TOKEN = re.compile(r"\w+")  # letters and digits in any script; "usb-c" -> usb, c
FEATURES = ("query_in_title", "jaccard", "tfidf_cosine", "char_tfidf_cosine", "bm25", "bm25_norm",
            "query_numbers", "numbers_in_title", "number_share", "title_numbers_not_in_query",
            "query_tokens", "title_tokens", "length_ratio")


def tokens(text) -> list[str]:
    """Lower-cased word tokens (digits kept, so model codes like "x200" stay one token)."""
    return _TOKEN.findall(text.lower()) if isinstance(text, str) else []


def _has_digit(tok: str) -> bool:
    return any(ch.isdigit() for ch in tok)


def _label_codes(values, labels: Sequence[Hashable]) -> np.ndarray:
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({str(v) for v in values if v not in index})
    if unknown:
        raise ValueError(f"training labels {unknown} are not in the label set {list(labels)}; "
                         "pass the dataset's label set (data/prepared/labels.json)")
    return np.asarray([index[v] for v in values], dtype=np.int64)


def _full_proba(proba: np.ndarray, classes: np.ndarray, n_labels: int) -> np.ndarray:
    """A classifier's probabilities over the classes it saw, spread into all `n_labels` columns."""
    out = np.zeros((len(proba), n_labels), dtype=np.float64)
    out[:, classes.astype(int)] = proba
    return out


# ------------------------------------------------------------------------------------- majority
def majority(train_labels: Sequence[Hashable], labels: Sequence[Hashable] | None = None) -> Hashable:
    """The most frequent training label (ties go to the earlier label in `labels`, else the first seen)."""
    counts = Counter(train_labels)
    if not counts:
        raise ValueError("majority needs at least one training label")
    order = {lab: i for i, lab in enumerate(labels if labels is not None else counts)}
    return max(counts, key=lambda lab: (counts[lab], -order.get(lab, len(order))))


@dataclass(frozen=True)
class MajorityModel:
    """Predicts the training majority for every pair; its probabilities are the training class prior."""

    labels: tuple
    label: Hashable
    prior: np.ndarray

    def predict_proba(self, frame) -> np.ndarray:
        return np.tile(self.prior, (len(frame), 1))


def fit_majority(train_labels: Sequence[Hashable], labels: Sequence[Hashable]) -> MajorityModel:
    codes = _label_codes(list(train_labels), labels)
    prior = np.bincount(codes, minlength=len(labels)) / len(codes)
    return MajorityModel(tuple(labels), majority(train_labels, labels), prior)


# -------------------------------------------------------------------------------------- lexical
@dataclass(frozen=True)
class LexicalVocabulary:
    """What the lexical features learn from the training texts: TF-IDF vectorizers (word and character
    n-grams, fitted on training queries and titles) and BM25 statistics of the training titles."""

    word_tfidf: object
    char_tfidf: object
    n_titles: int
    avg_title_len: float
    title_df: dict[str, int]

    def idf(self, tok: str) -> float:
        """BM25's idf with the +1 inside the log (never negative, as in Lucene)."""
        df = self.title_df.get(tok, 0)
        return math.log((self.n_titles - df + 0.5) / (df + 0.5) + 1.0)


def fit_vocabulary(queries: Sequence[str], titles: Sequence[str]) -> LexicalVocabulary:
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [str(t) for t in list(queries) + list(titles)]
    word = TfidfVectorizer(tokenizer=tokens, token_pattern=None, lowercase=False, sublinear_tf=True).fit(texts)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True, sublinear_tf=True).fit(texts)
    # BM25's documents are the distinct titles (a title judged for several queries counts once).
    docs = [tokens(t) for t in dict.fromkeys(str(t) for t in titles)]
    if not docs:
        raise ValueError("fit_vocabulary needs at least one training title")
    df = Counter(tok for d in docs for tok in set(d))
    return LexicalVocabulary(word, char, len(docs), float(np.mean([len(d) for d in docs])) or 1.0, dict(df))


def bm25(query_tokens: Sequence[str], title_tokens: Sequence[str], vocab: LexicalVocabulary,
         k1: float = BM25_K1, b: float = BM25_B) -> float:
    """Okapi BM25 of the title for the query, with idf and average length from the training titles."""
    tf = Counter(title_tokens)
    norm = k1 * (1 - b + b * len(title_tokens) / vocab.avg_title_len)
    return float(sum(vocab.idf(q) * tf[q] * (k1 + 1) / (tf[q] + norm) for q in query_tokens if tf[q]))


def _row_cosine(a, b) -> np.ndarray:
    """Cosine of row i of `a` with row i of `b` (TfidfVectorizer rows are already L2-normalised)."""
    return np.asarray(a.multiply(b).sum(axis=1)).ravel()


def lexical_features(queries: Sequence[str], titles: Sequence[str], vocab: LexicalVocabulary) -> np.ndarray:
    """One row of FEATURES per (query, title) pair."""
    queries, titles = [str(q) for q in queries], [str(t) for t in titles]
    if len(queries) != len(titles):
        raise ValueError(f"{len(queries)} queries but {len(titles)} titles; pass one title per query")
    rows = []
    for q, t in zip(queries, titles):
        qt, tt = tokens(q), tokens(t)
        qs, ts = set(qt), set(tt)
        q_num = {w for w in qs if _has_digit(w)}
        t_num = {w for w in ts if _has_digit(w)}
        ceiling = sum(vocab.idf(w) * (BM25_K1 + 1) for w in qt)  # the score as tf -> infinity
        score = bm25(qt, tt, vocab)
        rows.append([
            len(qs & ts) / len(qs) if qs else 0.0,
            len(qs & ts) / len(qs | ts) if qs | ts else 0.0,
            0.0, 0.0,  # TF-IDF cosines, filled below in one sparse product
            score,
            score / ceiling if ceiling else 0.0,
            len(q_num),
            len(q_num & ts),
            len(q_num & ts) / len(q_num) if q_num else 0.0,
            len(t_num - qs),
            len(qt),
            len(tt),
            len(qt) / len(tt) if tt else 0.0,
        ])
    x = np.asarray(rows, dtype=np.float64).reshape(len(queries), len(FEATURES))
    if len(queries):
        x[:, 2] = _row_cosine(vocab.word_tfidf.transform(queries), vocab.word_tfidf.transform(titles))
        x[:, 3] = _row_cosine(vocab.char_tfidf.transform(queries), vocab.char_tfidf.transform(titles))
    return x


@dataclass(frozen=True)
class LexicalModel:
    """A classifier over lexical_features; `kind` is "lr" (logistic regression) or "hgb" (gradient boosting)."""

    labels: tuple
    kind: str
    vocab: LexicalVocabulary
    classifier: object

    def predict_proba(self, frame) -> np.ndarray:
        x = lexical_features(frame["query"].tolist(), frame["title"].tolist(), self.vocab)
        return _full_proba(self.classifier.predict_proba(x), self.classifier.classes_, len(self.labels))


def feature_classifier(kind: str, seed: int, C: float = 1.0, max_iter: int = 5000):
    """The unfitted scikit-learn classifier of the lexical peers: standardised features + logistic regression
    (kind="lr"), or histogram gradient boosting (kind="hgb", which needs no scaling)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind not in ("lr", "hgb"):
        raise ValueError(f"kind {kind!r} is not a lexical classifier; use 'lr' or 'hgb'")
    if kind == "lr":
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    return HistGradientBoostingClassifier(random_state=seed)


def fit_lexical(train_df, labels: Sequence[Hashable], seed: int, C: float = 1.0, max_iter: int = 5000,
                kind: str = "lr") -> LexicalModel:
    """Fit the vocabulary and a :func:`feature_classifier` on the training pairs' lexical features."""
    clf = feature_classifier(kind, seed, C, max_iter)
    y = _label_codes(train_df["label"].tolist(), labels)
    vocab = fit_vocabulary(train_df["query"].tolist(), train_df["title"].tolist())
    x = lexical_features(train_df["query"].tolist(), train_df["title"].tolist(), vocab)
    if len(set(y)) < 2:  # one class: nothing to separate, sklearn refuses; the prior is the answer
        return LexicalModel(tuple(labels), kind, vocab, _Constant(int(y[0])))
    clf.fit(x, y)
    return LexicalModel(tuple(labels), kind, vocab, clf)


@dataclass(frozen=True)
class _Constant:
    code: int
    classes_: np.ndarray = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "classes_", np.asarray([self.code]))

    def predict_proba(self, x) -> np.ndarray:
        return np.ones((len(x), 1))


# -------------------------------------------------------------------------------- cross-encoder
@dataclass
class CrossEncoderPeer:
    """A trained sentence-transformers CrossEncoder; `history` is its trainer's log (loss, eval_loss)."""

    model: object
    labels: tuple
    batch_size: int = 64
    history: list = field(default_factory=list)

    def predict_proba(self, frame) -> np.ndarray:
        if len(frame) == 0:
            return np.zeros((0, len(self.labels)))
        pairs = [[str(q), str(t)] for q, t in zip(frame["query"], frame["title"])]
        probs = self.model.predict(pairs, batch_size=self.batch_size, apply_softmax=True,
                                   show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(probs, dtype=np.float64).reshape(len(frame), len(self.labels))


def _pair_dataset(frame, labels):
    from datasets import Dataset

    return Dataset.from_dict({"query": [str(q) for q in frame["query"]], "title": [str(t) for t in frame["title"]],
                              "label": _label_codes(frame["label"].tolist(), labels).tolist()})


def train_cross_encoder(train_df, valid_df, labels: Sequence[Hashable], backbone_path: str, seed: int,
                        epochs: int, batch_size: int, lr: float, warmup_ratio: float, max_length: int,
                        out_dir: str | None = None, weight_decay: float = 0.0, eval_batch_size: int = 64,
                        use_cpu: bool | None = None) -> CrossEncoderPeer:
    """sentence-transformers' own recipe: CrossEncoder(backbone, num_labels=C) trained by CrossEncoderTrainer
    with its CrossEntropyLoss (linear schedule with warm-up, AdamW), the validation loss logged per epoch.

    `use_cpu` defaults to "no GPU visible". With `out_dir` the trained model is saved there; without, the
    trainer works in a temporary folder that is removed."""
    import tempfile

    import torch
    from sentence_transformers.cross_encoder import (CrossEncoder, CrossEncoderTrainer,
                                                     CrossEncoderTrainingArguments)
    from sentence_transformers.cross_encoder.losses import CrossEntropyLoss
    from transformers import set_seed

    labels = tuple(labels)
    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    set_seed(seed)  # the classification head is initialised when the model is built, before the trainer seeds
    model = CrossEncoder(backbone_path, num_labels=len(labels), max_length=max_length,
                         device="cpu" if use_cpu else None, local_files_only=True,
                         config_kwargs={"id2label": dict(enumerate(map(str, labels))),
                                        "label2id": {str(lab): i for i, lab in enumerate(labels)}})
    train_ds = _pair_dataset(train_df, labels)
    valid_ds = _pair_dataset(valid_df, labels) if valid_df is not None and len(valid_df) else None
    # Whole warm-up steps, rounded down: transformers rounds a float ratio up, so a 1-step run would take
    # its only step at learning rate 0.
    warmup = int(warmup_ratio * epochs * math.ceil(len(train_ds) / batch_size))
    with tempfile.TemporaryDirectory(prefix="relkd-cross-encoder-") as tmp:
        args = CrossEncoderTrainingArguments(
            output_dir=tmp, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=eval_batch_size, learning_rate=lr, warmup_steps=warmup,
            weight_decay=weight_decay, seed=seed, data_seed=seed, use_cpu=use_cpu, report_to="none",
            save_strategy="no", eval_strategy="epoch" if valid_ds is not None else "no",
            logging_strategy="epoch", disable_tqdm=True, dataloader_num_workers=0)
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=valid_ds,
                                      loss=CrossEntropyLoss(model))
        trainer.train()
        history = [dict(h) for h in trainer.state.log_history]
    if out_dir is not None:
        model.save_pretrained(str(out_dir))
    model.eval()
    return CrossEncoderPeer(model, labels, eval_batch_size, history)
