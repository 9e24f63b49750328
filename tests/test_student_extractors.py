"""relkd.student.extractors: the appendix A formulas, their widths, and padding invariance."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from relkd.student.extractors import GATExtractor, MLPExtractor, PolyExtractor, make_extractor

KINDS = ["mlp", "poly", "gat"]


def _inputs(seed=0, batch=3, length=6, d=16):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(batch, length, d, generator=g)
    M = torch.ones(batch, length, dtype=torch.long)
    M[1, 4:] = 0
    M[2, 2:] = 0
    return H, M


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d_out", [16, 24])
def test_output_has_the_rationale_encoder_width(kind, d_out):
    torch.manual_seed(0)
    H, M = _inputs()
    r = make_extractor(kind, 16, d_out, hidden=8, codes=4)(H, M)
    assert r.shape == (3, d_out)
    assert torch.isfinite(r).all()


@pytest.mark.parametrize("kind", KINDS)
def test_padding_never_changes_the_output(kind):
    torch.manual_seed(0)
    ext = make_extractor(kind, 16, 24, hidden=8, codes=4).eval()
    H, M = _inputs()
    r = ext(H, M)
    # Append 5 padding positions holding huge arbitrary states, and scramble the existing padded ones.
    extra = torch.randn(3, 5, 16) * 1e3
    M2 = torch.cat([M, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    H2 = torch.cat([H, extra], dim=1)
    H2[M2 == 0] = torch.randn(int((M2 == 0).sum()), 16) * 1e3
    r2 = ext(H2, M2.bool())  # bool or 0/1 masks alike
    assert torch.allclose(r, r2, atol=1e-6, rtol=0)
    # A sequence alone gives what it gives in a padded batch.
    alone = ext(H[2:3, :2], M[2:3, :2])
    assert torch.allclose(alone, r[2:3], atol=1e-6, rtol=0)


def test_mlp_is_the_masked_mean_of_a_per_token_mlp():
    torch.manual_seed(0)
    ext = MLPExtractor(16, 24, hidden=8)
    H, M = _inputs()
    r = ext(H, M)
    for b in range(3):
        n = int(M[b].sum())
        assert torch.allclose(r[b], ext.mlp(H[b, :n]).mean(0), atol=1e-6)
    assert [m.out_features for m in ext.mlp if isinstance(m, torch.nn.Linear)] == [8, 24]


def test_poly_matches_equations_12_13():
    torch.manual_seed(0)
    ext = PolyExtractor(16, 16, codes=4)
    assert isinstance(ext.proj, torch.nn.Identity)  # equal widths: exactly the paper's formula
    H, M = _inputs()
    r = ext(H, M)
    for b in range(3):
        n = int(M[b].sum())
        A = torch.softmax(H[b, :n] @ ext.codes.T / math.sqrt(16), dim=0)  # (n, K), over tokens
        assert torch.allclose(r[b], (A.T @ H[b, :n]).mean(0), atol=1e-6)
    assert isinstance(PolyExtractor(16, 24, codes=4).proj, torch.nn.Linear)


def test_gat_matches_the_concatenation_formula():
    """e_ij = LeakyReLU(a^T [W h_i ; W h_j]) written out with the concatenation, token by token."""
    torch.manual_seed(0)
    ext = GATExtractor(16, 24, hidden=8)
    H, M = _inputs()
    r = ext(H, M)
    a = torch.cat([ext.a_src, ext.a_dst])
    for b in range(3):
        n = int(M[b].sum())
        Wh = ext.W(H[b, :n])
        e = torch.stack([torch.stack([F.leaky_relu(a @ torch.cat([Wh[i], Wh[j]]), 0.2) for j in range(n)])
                         for i in range(n)])
        nodes = F.elu(torch.softmax(e, dim=1) @ Wh)
        assert torch.allclose(r[b], ext.out(nodes.mean(0)), atol=1e-5)


def test_unknown_extractor_is_named():
    with pytest.raises(ValueError, match="'lstm'"):
        make_extractor("lstm", 16, 16)
