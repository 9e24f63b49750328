"""relkd.student.objectives: LRKD loss, CED-KD decoder, MKD BIO tags and CRF, CRSD InfoNCE."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from relkd.student.config import VariantConfig
from relkd.student.model import build_student
from relkd.student.objectives import (
    IGNORE,
    B,
    CRFHead,
    I,
    O,
    RationaleDecoder,
    bio_tags,
    crf_log_partition,
    crf_path_score,
    crf_viterbi,
    guidance_loss,
    info_nce,
    lrkd_loss,
)
from relkd.student.trainer import TrainingModule

LABELS = ("match", "mismatch", "accessory")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from relkd.models import resolve

    return AutoTokenizer.from_pretrained(resolve("tiny:bert"))


# ------------------------------------------------------------------------------------------ LRKD
def test_lrkd_loss_on_a_hand_computed_case():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    r = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    e_cot = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    ce = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    mse = (1 + 2) / 2  # squared L2 distances 1 and 2, averaged over the batch of 2
    assert guidance_loss(r, e_cot).item() == pytest.approx(mse)
    assert lrkd_loss(logits, y, r, e_cot, 0.1).item() == pytest.approx(ce + 0.1 * mse, abs=1e-6)
    assert lrkd_loss(logits, y, r, e_cot, 0.0).item() == pytest.approx(ce, abs=1e-6)


def test_guidance_names_a_width_mismatch():
    with pytest.raises(ValueError, match="d_out"):
        guidance_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def _backbone_grads(module, batch, loss_fn):
    module.zero_grad(set_to_none=True)
    loss_fn().backward()
    return {n: p.grad.clone() for n, p in module.student.backbone.named_parameters() if p.grad is not None}


def test_lambda_zero_gives_the_plain_cross_entropy_gradient(tokenizer):
    """The no-extractor path (logits = Linear(h_cls)): with lambda = 0 the training loss's backbone
    gradients are exactly those of plain CE; with lambda = 0.1 they are not."""
    torch.manual_seed(0)
    variant = VariantConfig(extractor="none", r_from_cls=True)
    student, tok = build_student("tiny:bert", LABELS, variant, d_out=24)
    student.eval()  # no dropout, so both losses see the same forward
    enc = tok(["red shoe", "usb cable"], ["red running shoe", "phone case"], padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([0, 2]), "e_cot": torch.randn(2, 24)}

    def plain_ce():
        return F.cross_entropy(student(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).logits,
                               batch["labels"])

    ref = _backbone_grads(TrainingModule(student, variant, lam=0.0), batch, plain_ce)
    zero = TrainingModule(student, variant, lam=0.0)
    got = _backbone_grads(zero, batch, lambda: zero(batch)["loss"])
    assert zero(batch)["guidance"].item() > 0  # the guidance term is computed, only weighted by 0
    assert ref.keys() == got.keys() and len(ref) > 10
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    guided = TrainingModule(student, variant, lam=0.1, guidance_into_backbone=True)  # the paper's rule
    moved = _backbone_grads(guided, batch, lambda: guided(batch)["loss"])
    assert any(not torch.allclose(ref[k], moved[k]) for k in ref)


# ---------------------------------------------------------------------------------------- CED-KD
def test_rationale_decoder_ignores_padding_and_is_uniform_at_zero_output():
    torch.manual_seed(0)
    V, d = 50, 16
    emb = torch.randn(V, d, requires_grad=True)
    dec = RationaleDecoder(d, hidden=8)
    h = torch.randn(2, d)
    ids = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    nll = dec(h, ids, mask, emb)
    # Extra padded columns (with any token id under a 0 mask) leave the NLL unchanged.
    ids2 = torch.cat([ids, torch.tensor([[33, 44], [11, 22]])], dim=1)
    mask2 = torch.cat([mask, torch.zeros(2, 2, dtype=torch.long)], dim=1)
    assert dec(h, ids2, mask2, emb).item() == pytest.approx(nll.item(), abs=1e-6)
    nll.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0  # tied to the backbone's embeddings
    assert not any(p is emb for p in dec.parameters())  # ... but does not own them
    with torch.no_grad():
        dec.up.weight.zero_()
        dec.up.bias.zero_()
    assert dec(h, ids, mask, emb).item() == pytest.approx(math.log(V), abs=1e-5)


# ------------------------------------------------------------------------------------------- MKD
def test_bio_tags_on_a_handmade_pair(tokenizer):
    query, title = "Nespresso capsules", "Original Nespresso coffee capsules, 50 pack"
    rationale = "The query wants nespresso capsules; the title offers coffee capsules for Nespresso (50 pack)."
    tags = bio_tags(query, title, rationale, tokenizer, max_length=64)
    tokens = tokenizer(query, title)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(tokens) == [
        "[CLS]", "nes", "##press", "##o", "capsule", "##s", "[SEP]",
        "original", "nes", "##press", "##o", "coffee", "capsule", "##s", ",", "50", "pack", "[SEP]"]
    assert tags == [IGNORE, B, I, I, I, I, IGNORE,
                    O, B, I, I, B, I, I, O, B, I, IGNORE]


def test_bio_tags_follow_truncation_and_tag_nothing_without_overlap(tokenizer):
    tags = bio_tags("red shoe", "blue kettle with a long cord", "nothing in common here", tokenizer, 8)
    assert len(tags) == 8
    assert tags == [IGNORE, O, O, IGNORE, O, O, O, IGNORE]


def _brute(em, start, trans, end):
    T = em.shape[-1]
    scores = {}
    for path in itertools.product(range(T), repeat=em.shape[0]):
        s = start[path[0]] + em[0, path[0]] + end[path[-1]]
        for t in range(1, len(path)):
            s = s + trans[path[t - 1], path[t]] + em[t, path[t]]
        scores[path] = s
    return scores


def test_crf_nll_and_viterbi_equal_brute_force():
    torch.manual_seed(0)
    crf = CRFHead(4, n_tags=3)
    with torch.no_grad():
        for p in (crf.start, crf.trans, crf.end):
            p.normal_()
    H = torch.randn(1, 3, 4)
    em = crf.emit(H)[0]
    scores = _brute(em, crf.start, crf.trans, crf.end)
    log_z = torch.logsumexp(torch.stack(list(scores.values())), dim=0)
    gold = (2, 0, 1)
    assert crf(H, torch.tensor([gold])).item() == pytest.approx((log_z - scores[gold]).item(), abs=1e-5)
    best = max(scores, key=lambda k: scores[k].item())
    assert crf.decode(H, torch.ones(1, 3))[0] == list(best)


def test_crf_skips_masked_positions_as_if_they_were_absent():
    """[CLS] q [SEP] t [SEP]: the -100 positions in the middle must not break the chain."""
    torch.manual_seed(1)
    start, trans, end = torch.randn(3), torch.randn(3, 3), torch.randn(3)
    em = torch.randn(1, 3, 3)
    gapped = torch.cat([torch.randn(1, 1, 3) * 9, em[:, :1], torch.randn(1, 1, 3) * 9, em[:, 1:],
                        torch.randn(1, 1, 3) * 9], dim=1)
    mask = torch.tensor([[False, True, False, True, True, False]])
    tags = torch.tensor([[IGNORE, 1, IGNORE, 2, 0, IGNORE]])
    full = torch.ones(1, 3, dtype=torch.bool)
    assert crf_log_partition(gapped, mask, start, trans, end).item() == pytest.approx(
        crf_log_partition(em, full, start, trans, end).item(), abs=1e-5)
    assert crf_path_score(gapped, tags, mask, start, trans, end).item() == pytest.approx(
        crf_path_score(em, torch.tensor([[1, 2, 0]]), full, start, trans, end).item(), abs=1e-5)
    compact = crf_viterbi(em, full, start, trans, end)[0]
    assert crf_viterbi(gapped, mask, start, trans, end)[0] == [IGNORE, compact[0], IGNORE, *compact[1:], IGNORE]


# ------------------------------------------------------------------------------------------ CRSD
def test_info_nce_on_a_hand_computed_2x2_case():
    z_plain = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_aug = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # cosine: row 0 (1, 1/sqrt2), row 1 (0, 1/sqrt2)
    s = math.sqrt(2)
    expected = (math.log(1 + math.exp(s - 2)) + math.log(1 + math.exp(-s))) / 2  # temperature 0.5
    assert info_nce(z_plain, z_aug, 0.5).item() == pytest.approx(expected, abs=1e-6)
    # One-directional: swapping the roles is a different loss here.
    assert info_nce(z_aug, z_plain, 0.5).item() != pytest.approx(expected, abs=1e-3)
