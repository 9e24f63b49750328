"""Peer rows of every quality table: the majority class, lexical models and sentence-transformers' CrossEncoder.

A student's score means little alone: these are what a relevance team would get without a teacher, trained
on the same rows. Frames have ``query``, ``title`` and (for training) ``label`` columns; every predictor's
``predict_proba(frame)`` returns an (N, C) array of probabilities in the order of `labels`.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from relkd import lexical
from relkd.eval.config import CrossEncoderPeerConfig

PEERS = ("majority", "lexical_lr", "lexical_hgb", "cross_encoder")  # the folder and row names


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
# The features themselves live in relkd.lexical (the student and the served stub compute the same ones).


@dataclass(frozen=True)
class LexicalModel:
    """A classifier over lexical_features; `kind` is "lr" (logistic regression) or "hgb" (gradient boosting)."""

    labels: tuple
    kind: str
    tables: lexical.LexicalTables
    classifier: object

    def predict_proba(self, frame) -> np.ndarray:
        x = lexical.features(frame["query"].tolist(), frame["title"].tolist(), self.tables)
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
    """Fit the lexical tables and a :func:`feature_classifier` on the training pairs' lexical features."""
    clf = feature_classifier(kind, seed, C, max_iter)
    y = _label_codes(train_df["label"].tolist(), labels)
    tables = lexical.fit_tables(train_df["query"].tolist(), train_df["title"].tolist())
    x = lexical.features(train_df["query"].tolist(), train_df["title"].tolist(), tables)
    if len(set(y)) < 2:  # one class: nothing to separate, sklearn refuses; the prior is the answer
        return LexicalModel(tuple(labels), kind, tables, _Constant(int(y[0])))
    clf.fit(x, y)
    return LexicalModel(tuple(labels), kind, tables, clf)


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
                        recipe: CrossEncoderPeerConfig, max_length: int, eval_batch_size: int = 64,
                        out_dir: str | None = None, use_cpu: bool | None = None) -> CrossEncoderPeer:
    """sentence-transformers' own recipe: CrossEncoder(backbone, num_labels=C) trained by CrossEncoderTrainer
    with its CrossEntropyLoss (linear schedule with warm-up, AdamW; epochs, batch size, lr, warm-up and weight decay
    from `recipe`, ``peers.cross_encoder``), the validation loss logged per epoch.

    `use_cpu` defaults to "no GPU visible". With `out_dir` the trained model is saved there; without, the
    trainer works in a temporary folder that is removed."""
    import tempfile

    import torch
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
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
    epochs, batch_size = recipe.epochs, recipe.batch_size
    warmup = int(recipe.warmup_ratio * epochs * math.ceil(len(train_ds) / batch_size))
    with tempfile.TemporaryDirectory(prefix="relkd-cross-encoder-") as tmp:
        args = CrossEncoderTrainingArguments(
            output_dir=tmp, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=eval_batch_size, learning_rate=recipe.lr, warmup_steps=warmup,
            weight_decay=recipe.weight_decay, seed=seed, data_seed=seed, use_cpu=use_cpu, report_to="none",
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
