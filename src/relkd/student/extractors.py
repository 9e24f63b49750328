"""Latent reasoning extractors R(H, M) -> r (the paper's appendix A): MLP, Poly-encoder, GAT.

Every extractor maps token states ``H`` (B, L, d_model) and a mask ``M`` (B, L) of valid tokens to
``r`` (B, d_out). Padding is masked everywhere: the hidden values at padded positions never reach
the output (masked means, -inf attention scores, zero weights after softmax).

Width. ``d_out`` is the rationale encoder's width (384 for all-MiniLM-L6-v2, 1024 for BGE-M3), so the
guidance loss MSE(r, e_cot) compares vectors of the same width with no extra module. The paper
writes e_cot in R^d although BGE-M3 (1024) and multilingual BERT (768) differ; it does not say where
the projection sits. Here the extractor's final linear layer is that projection:

* MLP: d_model -> hidden -> d_out (its second layer);
* Poly-encoder: the attended mean stays in d_model (formula 13), then Linear(d_model, d_out); the
  identity when the widths are equal, which is exactly the paper's formula;
* GAT: W projects d_model -> hidden (the paper's hidden size 128), then Linear(hidden, d_out).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _valid(mask: torch.Tensor) -> torch.Tensor:
    return mask.to(torch.bool)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, L, k) over the valid positions of mask (B, L). Padded rows are zeroed with
    ``where`` rather than multiplied, so an inf/nan hidden value at padding cannot leak in."""
    valid = _valid(mask).unsqueeze(-1)
    total = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1)
    count = valid.sum(dim=1).clamp(min=1).to(x.dtype)
    return total / count


class MLPExtractor(nn.Module):
    """Appendix A, eqs. 10-11: a 2-layer MLP on each token, then masked mean pooling.

    The second layer is affine, so the mean of its outputs is the layer applied to the mean of its
    inputs: pooling before it gives the same r with that layer run once per pair instead of per token."""

    def __init__(self, d_model: int, d_out: int, hidden: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, H: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        first, act, second = self.mlp
        return second(masked_mean(act(first(H)), M))


class PolyExtractor(nn.Module):
    """Appendix A, eqs. 12-13: K learned context codes attend over the valid tokens; r is the mean of
    the K attended vectors, projected to d_out when the widths differ. (The mean of the K attended
    vectors is computed as one attention-weighted sum with the K weights averaged: the same vector.)"""

    def __init__(self, d_model: int, d_out: int, codes: int = 32):
        super().__init__()
        self.codes = nn.Parameter(torch.randn(codes, d_model) * d_model**-0.5)
        self.proj = nn.Identity() if d_out == d_model else nn.Linear(d_model, d_out)
        self.scale = 1.0 / math.sqrt(d_model)

    def attention(self, H: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """(B, L, K): each code's softmax over the valid tokens (0 on padding, whatever H holds there)."""
        scores = H @ self.codes.T * self.scale  # (B, L, K)
        return torch.softmax(scores.masked_fill(~_valid(M).unsqueeze(-1), float("-inf")), dim=1)  # over tokens

    def forward(self, H: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        valid = _valid(M).unsqueeze(-1)  # (B, L, 1)
        # padding zeroed: its weight is 0, and 0 * (a non-finite padded state) would not be
        H = torch.where(valid, H, torch.zeros((), dtype=H.dtype, device=H.device))
        # mean_k (A_k^T H) = (mean_k A_k)^T H: one weighted sum of the tokens instead of K of them
        return self.proj((self.attention(H, M).mean(dim=2).unsqueeze(1) @ H).squeeze(1))


class GATExtractor(nn.Module):
    """Appendix A, eqs. 14-16: one graph-attention layer over the fully connected graph of valid tokens,
    then the mean over valid nodes.

    e_ij = LeakyReLU(a^T [W h_i ; W h_j]) is computed as a_1^T W h_i + a_2^T W h_j (the same number,
    without materialising the (L, L, 2*hidden) concatenation); the (B, L, L) score matrix is fine for
    L <= 128. h'_i = ELU(sum_j softmax_j(e_ij) W h_j) as in the GAT paper; W maps to the hidden size
    and a final linear layer maps to d_out.
    """

    def __init__(self, d_model: int, d_out: int, hidden: int = 128, negative_slope: float = 0.2):
        super().__init__()
        self.W = nn.Linear(d_model, hidden, bias=False)
        self.a_src = nn.Parameter(torch.empty(hidden))
        self.a_dst = nn.Parameter(torch.empty(hidden))
        bound = 1.0 / math.sqrt(hidden)
        nn.init.uniform_(self.a_src, -bound, bound)
        nn.init.uniform_(self.a_dst, -bound, bound)
        self.negative_slope = negative_slope
        self.out = nn.Linear(hidden, d_out)

    def forward(self, H: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        valid = _valid(M)
        H = torch.where(valid.unsqueeze(-1), H, torch.zeros((), dtype=H.dtype, device=H.device))
        Wh = self.W(H)  # (B, L, hidden)
        e = (Wh @ self.a_src).unsqueeze(2) + (Wh @ self.a_dst).unsqueeze(1)  # (B, L_i, L_j)
        e = F.leaky_relu(e, self.negative_slope)
        e = e.masked_fill(~valid.unsqueeze(1), float("-inf"))  # only valid neighbours j
        alpha = torch.softmax(e, dim=-1)
        nodes = F.elu(alpha @ Wh)  # (B, L, hidden)
        return self.out(masked_mean(nodes, valid))


def make_extractor(kind: str, d_model: int, d_out: int, hidden: int = 128, codes: int = 32) -> nn.Module:
    """The extractor named by a variant's ``extractor`` knob (mlp, poly, gat)."""
    if kind == "mlp":
        return MLPExtractor(d_model, d_out, hidden)
    if kind == "poly":
        return PolyExtractor(d_model, d_out, codes)
    if kind == "gat":
        return GATExtractor(d_model, d_out, hidden)
    raise ValueError(f"unknown extractor {kind!r}; choose mlp, poly or gat ('none' builds no extractor)")
