"""The Avg. Ensemble (paper Table 6 / appendix D.2): students whose class probabilities are averaged at inference.

One module, so it is saved, registered, exported to ONNX (one graph running every member on the same inputs) and
served like a single student: its logits are the log of the members' mean probability, so the softmax the served
model (and every evaluation) applies gives that mean exactly, and a calibration temperature rescales it like any
student's. The members share what a served model reads beside its graph: the tokenizer, max_length and, with
lexical heads, the lexical tables (students trained on one training split fit the same ones).

A saved ensemble folder holds ``relkd_student.json`` (``kind: avg_ensemble``, the labels, max_length and the member
names), the shared tokenizer (and ``lexical.json``) at its top, and each member's student folder under
``members/<name>/``; :func:`relkd.student.model.load_student` loads either kind.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from relkd.student.model import STUDENT_FILE, Student, StudentOutput

KIND = "avg_ensemble"
MEMBERS = "members"
FORMAT_VERSION = 1


class AvgEnsemble(nn.Module):
    """Students averaged: ``logits`` = log(mean_i softmax(logits_i)); ``r`` and ``h_cls`` = the members' side by side.

    Where serving and evaluation need a student it is one: ``labels``, ``max_length``, ``lexical_tables`` and
    ``lexical_features``, ``r_dim``, ``d_model`` and the forward signature are a student's."""

    def __init__(self, members: dict[str, Student]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {sorted(members)}")
        first = next(iter(members.values()))
        for name, m in members.items():
            if m.labels != first.labels or m.max_length != first.max_length:
                raise ValueError(f"member {name!r} has labels {m.labels} and max_length {m.max_length}, the first "
                                 f"{first.labels} and {first.max_length}: members must answer one label set from "
                                 "the same inputs")
            if _tables(m) != _tables(first):
                raise ValueError(f"member {name!r} has other lexical tables than the first: members must be trained "
                                 "on the same training split (one set of lexical features feeds them all)")
        self.names = list(members)
        self.members = nn.ModuleList(members.values())
        self.labels, self.max_length = first.labels, first.max_length
        self.lexical_tables = first.lexical_tables

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, lexical: torch.Tensor | None = None) -> StudentOutput:
        outs = [m(input_ids, attention_mask, token_type_ids, lexical) for m in self.members]
        logp = torch.stack([torch.log_softmax(o.logits.float(), dim=-1) for o in outs])
        mean_log_prob = torch.logsumexp(logp, dim=0) - math.log(len(outs))
        return StudentOutput(logits=mean_log_prob, h_cls=torch.cat([o.h_cls for o in outs], dim=-1),
                             r=torch.cat([o.r for o in outs], dim=-1), hidden=outs[0].hidden)

    def lexical_features(self, queries, titles):
        return self.members[0].lexical_features(queries, titles)

    @property
    def r_dim(self) -> int:
        return sum(m.r_dim for m in self.members)

    @property
    def d_model(self) -> int:
        return sum(m.d_model for m in self.members)

    def describe(self) -> dict:
        return {"format_version": FORMAT_VERSION, "kind": KIND, "labels": list(self.labels),
                "max_length": self.max_length, "members": self.names, "lexical": self.lexical_tables is not None}


def _tables(student: Student):
    return None if student.lexical_tables is None else student.lexical_tables.to_dict()


def save_ensemble(model: AvgEnsemble, tokenizer, folder: str | Path) -> Path:
    """Write the ensemble folder: each member's student folder under members/<name>/, the shared tokenizer, lexical
    tables and relkd_student.json (kind avg_ensemble) at the top."""
    from relkd.student.model import save_student

    folder = Path(folder)
    for name, member in zip(model.names, model.members):
        save_student(member, tokenizer, folder / MEMBERS / name)
    tokenizer.save_pretrained(folder)
    if model.lexical_tables is not None:
        model.lexical_tables.save(folder)
    (folder / STUDENT_FILE).write_text(json.dumps(model.describe(), indent=2, sort_keys=True) + "\n")
    return folder


def load_ensemble(folder: str | Path, meta: dict, device: str | torch.device = "cpu"):
    """The ensemble saved in `folder` (its relkd_student.json read as `meta`), with the shared tokenizer."""
    from transformers import AutoTokenizer

    from relkd.student.model import load_student

    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder}/{STUDENT_FILE} has ensemble format_version {meta.get('format_version')!r}; this "
                         f"code reads {FORMAT_VERSION}: rebuild the ensemble (the student_ensemble stage)")
    members = {name: load_student(Path(folder) / MEMBERS / name, device)[0] for name in meta["members"]}
    return AvgEnsemble(members).to(device).eval(), AutoTokenizer.from_pretrained(folder)
