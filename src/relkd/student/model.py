"""The LRKD student (BERT cross-encoder + latent reasoning extractor + linear head): build, save, load.

The student reads "[CLS] query [SEP] title [SEP]" and returns class logits and the latent reasoning
vector r. With ``lexical`` features (:mod:`relkd.lexical`: overlap, TF-IDF, BM25, numbers of the pair) a
second linear head over their standardised values adds its logits: the student then holds the lexical
logistic regression inside it and learns from the tokens what the lexical features miss. Only what
inference needs is part of :class:`Student` (backbone, extractor, head and, for
the no-extractor ablation, the guidance projection); the training-only heads of the CED-KD, MKD and
CRSD baselines live in :mod:`relkd.student.objectives` and are never saved into a student folder.

A saved student folder holds ``model.safetensors`` (the whole Student state dict), the backbone's
``config.json``, the tokenizer, and ``relkd_student.json`` (labels, variant, max_length, d_out,
extractor sizes) so serving and evaluation can rebuild it with :func:`load_student` alone; a student with
lexical features also ``lexical.json`` (:class:`relkd.lexical.LexicalTables`, the features' idf tables).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from relkd import lexical
from relkd.student.config import VariantConfig
from relkd.student.extractors import make_extractor

STUDENT_FILE = "relkd_student.json"
POOLINGS = ("cls", "mean")
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


@dataclass
class StudentOutput:
    logits: torch.Tensor  # (B, C)
    h_cls: torch.Tensor  # (B, d_model)
    r: torch.Tensor  # (B, d_out) r_qp; P h_cls for no_extractor; h_cls for the plain student
    hidden: torch.Tensor  # (B, L, d_model) token states H


class Student(nn.Module):
    """Cross-encoder whose logits are Linear([h_cls ; r]) with r = R(H, M) (paper eq. 6 and 3.3.2).

    The no-extractor ablation (``variant.r_from_cls``) follows the paper's "h_cls for both
    classification and reasoning": logits = Linear(h_cls) and the guidance loss is applied to
    ``guide_proj(h_cls)``, a linear map to the rationale encoder's width d_out (the identity when
    d_out equals the backbone width, so then r is h_cls itself). The plain student has neither
    extractor nor guidance: logits = Linear(h_cls), and ``r`` is reported as h_cls.

    ``lexical_tables`` (a :class:`relkd.lexical.LexicalTables`) adds ``lexical_head``, Linear over the pair's
    lexical features standardised by the buffers ``lexical_mean`` / ``lexical_scale``, to the logits; the
    features are a fourth input, ``lexical`` (B, len(relkd.lexical.FEATURES)).
    """

    def __init__(self, backbone: nn.Module, labels: tuple[str, ...], variant: VariantConfig, d_out: int,
                 hidden: int = 128, codes: int = 32, max_length: int = 128, pooling: str = "cls",
                 lexical_tables=None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        if len(labels) < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {labels!r}")
        self.backbone = backbone
        self.labels = tuple(labels)
        self.variant = variant
        self.d_model = int(backbone.config.hidden_size)
        self.d_out = int(d_out)
        self.hidden_size = int(hidden)
        self.codes = int(codes)
        self.max_length = int(max_length)
        self.extractor = None
        self.guide_proj = None
        if variant.extractor != "none":
            self.extractor = make_extractor(variant.extractor, self.d_model, self.d_out, hidden, codes)
            head_in = self.d_model + self.d_out
        else:
            head_in = self.d_model
            if variant.r_from_cls:
                self.guide_proj = nn.Identity() if self.d_out == self.d_model else nn.Linear(self.d_model, self.d_out)
        self.head = nn.Linear(head_in, len(self.labels))
        self.lexical_tables = lexical_tables
        self.lexical_head = None
        if lexical_tables is not None:
            n = len(lexical.FEATURES)
            self.register_buffer("lexical_mean", torch.zeros(n))
            self.register_buffer("lexical_scale", torch.ones(n))
            self.lexical_head = nn.Linear(n, len(self.labels))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, lexical: torch.Tensor | None = None) -> StudentOutput:
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        H = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return self.read_out(H, attention_mask, lexical)

    def lexical_features(self, queries, titles) -> np.ndarray:
        """The (N, F) float32 lexical features of pairs, from this student's tables (its fourth input)."""
        if self.lexical_tables is None:
            raise ValueError("this student has no lexical head (trained with student.lexical: false)")
        return lexical.features(queries, titles, self.lexical_tables).astype(np.float32)

    def read_out(self, H: torch.Tensor, attention_mask: torch.Tensor,
                 lexical_x: torch.Tensor | None = None) -> StudentOutput:
        """Everything after the backbone: the extractor (or the guidance projection) and the head. ``h_cls`` is
        the [CLS] state (paper) or, with ``pooling="mean"``, the masked mean of the token states, the
        pooling a sentence-transformers backbone such as all-MiniLM-L6-v2 was trained with."""
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(H.dtype)
            h_cls = (H * m).sum(1) / m.sum(1).clamp(min=1.0)
        else:
            h_cls = H[:, 0]
        if self.extractor is not None:
            r = self.extractor(H, attention_mask)
            logits = self.head(torch.cat([h_cls, r], dim=-1))
        else:
            r = self.guide_proj(h_cls) if self.guide_proj is not None else h_cls
            logits = self.head(h_cls)
        if self.lexical_head is not None:
            if lexical_x is None:
                raise ValueError("this student has a lexical head: pass the pairs' lexical features "
                                 "(Student.lexical_features(queries, titles)) as `lexical`")
            logits = logits + self.lexical_head((lexical_x.to(H.dtype) - self.lexical_mean) / self.lexical_scale)
        return StudentOutput(logits=logits, h_cls=h_cls, r=r, hidden=H)

    @torch.no_grad()
    def warm_start_lexical(self, mean, scale, coef, intercept) -> None:
        """The lexical head set to a fitted logistic regression on standardised features (mean, scale: its
        scaler; coef (C, F), intercept (C,)) and the token head to zero: the untrained student predicts what
        the lexical LR predicts, and training learns what the tokens add."""
        if self.lexical_head is None:
            raise ValueError("this student has no lexical head to warm-start (build it with lexical_tables)")
        self.lexical_mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.lexical_scale.copy_(torch.as_tensor(np.asarray(scale), dtype=torch.float32))
        self.lexical_head.weight.copy_(torch.as_tensor(np.asarray(coef), dtype=torch.float32))
        self.lexical_head.bias.copy_(torch.as_tensor(np.asarray(intercept), dtype=torch.float32))
        self.head.weight.zero_()
        self.head.bias.zero_()

    @property
    def r_dim(self) -> int:
        """Width of ``r``: d_out with an extractor or guidance projection, else d_model (r = h_cls)."""
        return self.d_out if (self.extractor is not None or self.guide_proj is not None) else self.d_model

    def describe(self) -> dict:
        """What :func:`load_student` needs besides the weights and the tokenizer."""
        return {
            "format_version": FORMAT_VERSION,
            "labels": list(self.labels),
            "variant": self.variant.model_dump(),
            "max_length": self.max_length,
            "d_model": self.d_model,
            "d_out": self.d_out,
            "hidden": self.hidden_size,
            "codes": self.codes,
            "pooling": self.pooling,
            "lexical": self.lexical_tables is not None,
            "backbone_config": self.backbone.config.to_dict(),
        }


class InferenceWrapper(nn.Module):
    """The student with the plain tensor signature an ONNX export needs: (logits, r); a student with a lexical
    head takes the features as a fourth input."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    @property
    def lexical_tables(self):
        return self.student.lexical_tables

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor, lexical: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.student(input_ids, attention_mask, token_type_ids, lexical)
        return out.logits, out.r


def _load_backbone(path_or_config, from_config: bool = False):
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    # Loading a checkpoint trained with a pooler into BertModel(add_pooling_layer=False) prints an
    # "UNEXPECTED pooler.*" table; that is the intended drop, not a problem worth showing.
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per student says nothing
    try:
        # No pooler: h_cls is the raw [CLS] state, and an unused pooler would make DDP fail (its
        # parameters would get no gradient).
        if from_config:
            return AutoModel.from_config(path_or_config, add_pooling_layer=False)
        return AutoModel.from_pretrained(path_or_config, add_pooling_layer=False, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def build_student(backbone: str, labels: tuple[str, ...], variant: VariantConfig, d_out: int | None = None,
                  hidden: int = 128, codes: int = 32, max_length: int = 128, pooling: str = "cls",
                  lexical_tables=None):
    """A fresh student on pretrained backbone weights, with its tokenizer.

    ``backbone`` is a folder or a name for :func:`relkd.models.resolve`; ``d_out`` is the rationale
    encoder's width (None: the backbone's width); ``lexical_tables`` adds the lexical head.
    """
    from transformers import AutoTokenizer

    from relkd.models import resolve

    path = resolve(backbone)
    model = _load_backbone(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    d_out = int(model.config.hidden_size) if d_out is None else int(d_out)
    return Student(model, labels, variant, d_out, hidden, codes, max_length, pooling, lexical_tables), tokenizer


def save_student(model: Student, tokenizer, folder: str | Path) -> Path:
    """Write the inference folder: weights, backbone config, tokenizer, relkd_student.json."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    model.backbone.config.save_pretrained(folder)
    tokenizer.model_max_length = model.max_length
    tokenizer.save_pretrained(folder)
    if model.lexical_tables is not None:
        model.lexical_tables.save(folder)
    (folder / STUDENT_FILE).write_text(json.dumps(model.describe(), indent=2, sort_keys=True) + "\n")
    return folder


def load_student(folder: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a student saved by :func:`save_student` (or an Avg. Ensemble saved by
    :func:`relkd.student.ensemble.save_ensemble`); returns (the model in eval mode, tokenizer)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    folder = Path(folder)
    meta_path = folder / STUDENT_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} has no {STUDENT_FILE}: it is not a student saved by save_student")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") is not None:  # an ensemble of students (relkd.student.ensemble)
        from relkd.student.ensemble import KIND, load_ensemble

        if meta["kind"] != KIND:
            raise ValueError(f"{meta_path} has kind {meta['kind']!r}; this code loads students and {KIND!r}")
        return load_ensemble(folder, meta, device)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path} has format_version {meta.get('format_version')!r}; this code reads "
                         f"{FORMAT_VERSION}: retrain the student or use the matching relkd version")
    backbone = _load_backbone(AutoConfig.from_pretrained(folder), from_config=True)
    tables = lexical.LexicalTables.load(folder) if meta.get("lexical") else None
    model = Student(backbone, tuple(meta["labels"]), VariantConfig(**meta["variant"]), meta["d_out"],
                    meta["hidden"], meta["codes"], meta["max_length"], meta.get("pooling", "cls"), tables)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.to(device).eval(), tokenizer


def tokenize_pairs(tokenizer, queries, titles, max_length: int, **kwargs):
    """Tokenise (query, title) pairs as two segments: "[CLS] q [SEP] t [SEP]", truncated to max_length."""
    return tokenizer(list(map(str, queries)), list(map(str, titles)), truncation=True, max_length=max_length,
                     **kwargs)
