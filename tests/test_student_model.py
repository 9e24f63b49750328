"""relkd.student.model: the student's heads and widths, save/load, and what stays out of the inference folder."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from relkd.student.config import StudentConfig, named_variants
from relkd.student.model import (
    STUDENT_FILE,
    WEIGHTS_FILE,
    InferenceWrapper,
    Student,
    build_student,
    load_student,
    save_student,
)
from relkd.student.trainer import TrainingModule

LABELS = ("strongly relevant", "brand mismatch", "accessory mismatch")
D_OUT = 24  # the rationale encoder's width; tiny:bert is 32 wide, so the projection is exercised


def _batch(tok):
    return tok(["red shoe", "usb c cable 2m"], ["red running shoe size 42", "phone case"], padding=True,
               return_tensors="pt")


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from relkd.models import resolve

    return AutoTokenizer.from_pretrained(resolve("tiny:bert"))


def _student(name, d_out=D_OUT, seed=0):
    torch.manual_seed(seed)
    return build_student("tiny:bert", LABELS, named_variants()[name], d_out=d_out, hidden=8, codes=4,
                         max_length=32)


@pytest.mark.parametrize("name,head_in,r_dim", [
    ("plain", 32, 32), ("lrkd_mlp", 32 + D_OUT, D_OUT), ("lrkd_poly", 32 + D_OUT, D_OUT),
    ("lrkd_gat", 32 + D_OUT, D_OUT), ("no_extractor", 32, D_OUT),
])
def test_heads_and_widths(tok, name, head_in, r_dim):
    model, _ = _student(name)
    model.eval()
    enc = _batch(tok)
    out = model(**enc)
    assert out.logits.shape == (2, len(LABELS))
    assert out.h_cls.shape == (2, 32) and out.hidden.shape[:2] == enc["input_ids"].shape
    assert out.r.shape == (2, r_dim) and model.r_dim == r_dim
    assert model.head.in_features == head_in
    assert not hasattr(model.backbone, "pooler") or model.backbone.pooler is None
    if name == "plain":
        assert torch.equal(out.r, out.h_cls)
    if name == "no_extractor":  # logits from h_cls alone; r is the guidance projection of h_cls
        assert torch.allclose(out.logits, model.head(out.h_cls))
        assert torch.allclose(out.r, model.guide_proj(out.h_cls))


def test_no_extractor_uses_h_cls_itself_when_widths_match(tok):
    model, _ = _student("no_extractor", d_out=32)
    model.eval()
    out = model(**_batch(tok))
    assert isinstance(model.guide_proj, torch.nn.Identity)
    assert torch.equal(out.r, out.h_cls)


@pytest.mark.parametrize("name", ["lrkd_gat", "lrkd_poly", "no_extractor"])
def test_save_load_gives_identical_logits(tmp_path, tok, name):
    model, tokenizer = _student(name)
    with torch.no_grad():  # move the head off its init so a silent re-init would show
        model.head.weight.add_(0.5)
    model.eval()
    enc = _batch(tok)
    before = model(**enc)
    save_student(model, tokenizer, tmp_path / "student")
    meta = json.loads((tmp_path / "student" / STUDENT_FILE).read_text())
    assert meta["labels"] == list(LABELS) and meta["d_out"] == D_OUT and meta["max_length"] == 32
    assert meta["variant"] == named_variants()[name].model_dump()
    loaded, tok2 = load_student(tmp_path / "student")
    assert not loaded.training and loaded.labels == LABELS and loaded.max_length == 32
    enc2 = tok2(["red shoe", "usb c cable 2m"], ["red running shoe size 42", "phone case"], padding=True,
                return_tensors="pt")
    assert torch.equal(enc2["input_ids"], enc["input_ids"])
    after = loaded(**enc2)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.r, after.r)


def test_load_names_a_folder_that_is_not_a_student(tmp_path):
    with pytest.raises(FileNotFoundError, match=STUDENT_FILE):
        load_student(tmp_path)


@pytest.mark.parametrize("name,aux_attr", [("ced_kd", "decoder"), ("mkd", "crf")])
def test_training_only_heads_stay_out_of_the_inference_folder(tmp_path, name, aux_attr):
    model, tokenizer = _student(name)
    cfg = StudentConfig()
    training = TrainingModule(model, named_variants()[name], cfg.lam_for(named_variants()[name]))
    aux = getattr(training, aux_attr)
    assert aux is not None and sum(p.numel() for p in aux.parameters()) > 0
    assert any(k.startswith(f"{aux_attr}.") for k in training.state_dict())
    save_student(model, tokenizer, tmp_path / "s")
    saved = load_file(str(tmp_path / "s" / WEIGHTS_FILE))
    assert set(saved) == set(model.state_dict())
    assert not any(aux_attr in k or "gru" in k or "trans" in k for k in saved)
    wrapper_params = {id(p) for p in InferenceWrapper(model).parameters()}
    assert not wrapper_params & {id(p) for p in aux.parameters()}
    assert wrapper_params == {id(p) for p in model.parameters()}
    loaded, _ = load_student(tmp_path / "s")
    assert not any(isinstance(m, (torch.nn.GRU,)) for m in loaded.modules())


def test_inference_wrapper_returns_logits_and_r(tok):
    model, _ = _student("lrkd_gat")
    model.eval()
    enc = _batch(tok)
    logits, r = InferenceWrapper(model)(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    out = model(**enc)
    assert torch.equal(logits, out.logits) and torch.equal(r, out.r)


def test_a_student_needs_two_labels():
    backbone = _student("plain")[0].backbone
    with pytest.raises(ValueError, match="at least 2 labels"):
        Student(backbone, ("only",), named_variants()["plain"], d_out=32)
