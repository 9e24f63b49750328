"""Student losses: LRKD's guidance loss, and the training-only heads of the CED-KD, MKD and CRSD baselines.

None of the modules here is part of the saved student: the CED-KD decoder, the MKD CRF head and the
CRSD augmented view only shape the encoder during training and are dropped for inference.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

IGNORE = -100  # label of positions no loss looks at (special tokens, padding)
O, B, I = 0, 1, 2
BIO = ("O", "B", "I")


# ------------------------------------------------------------------------------------------- LRKD
def guidance_loss(r: torch.Tensor, e_cot: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's ||r - e_cot||^2 (eq. 8): the squared L2 distance summed over the width, averaged over the
    batch (over the rows whose ``weight`` is 1 when given: pairs without a teacher rationale have no target).
    The trainer puts both sides on the unit sphere first (``guidance_normalize``), so the loss is
    2 - 2 cos(r, e_cot) in [0, 4] for any width and lambda = 0.1 weighs it against a CE of ~log(C) as the
    paper's unit-norm BGE-M3 targets intend. (Dividing by the width, as F.mse_loss does, shrank it 384-fold;
    leaving r unnormalised made it act on raw states of norm ~8, up to 68 at initialisation.)"""
    if r.shape != e_cot.shape:
        raise ValueError(f"r has shape {tuple(r.shape)} but e_cot has {tuple(e_cot.shape)}: the extractor's "
                         "d_out must equal the rationale encoder's width")
    per_row = (r - e_cot.to(r.dtype)).pow(2).sum(dim=-1)
    if weight is None:
        return per_row.mean()
    weight = weight.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def lrkd_loss(logits: torch.Tensor, y: torch.Tensor, r: torch.Tensor, e_cot: torch.Tensor,
              lam: float) -> torch.Tensor:
    """L = CE(z, y) + lambda * L_guide (paper 3.3.2)."""
    return F.cross_entropy(logits, y) + lam * guidance_loss(r, e_cot)


# ----------------------------------------------------------------------------------------- CED-KD
class RationaleDecoder(nn.Module):
    """CED-KD's auxiliary decoder: a 1-layer GRU (hidden 128) that reconstructs the rationale's tokens
    from h_cls, with teacher forcing. Input and output embeddings are tied to the backbone's word
    embedding matrix E (V x d_model), passed in at each call rather than held, so that E stays a
    backbone parameter and nothing of the backbone is duplicated in this module's state dict:
    inputs are E[x] projected down to the hidden size; logits are (up(o)) E^T."""

    def __init__(self, d_model: int, hidden: int = 128):
        super().__init__()
        self.down = nn.Linear(d_model, hidden)
        self.init = nn.Linear(d_model, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.up = nn.Linear(hidden, d_model)

    def forward(self, h_cls: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                embeddings: torch.Tensor) -> torch.Tensor:
        """Mean NLL of ids[:, 1:] given ids[:, :-1] and h_cls; ids is "[CLS] rationale [SEP]" padded."""
        inp, tgt = ids[:, :-1], ids[:, 1:].masked_fill(~mask[:, 1:].bool(), IGNORE)
        h0 = torch.tanh(self.init(h_cls)).unsqueeze(0)
        out, _ = self.gru(self.down(F.embedding(inp, embeddings)), h0)
        scored = tgt != IGNORE  # only these positions meet the vocabulary (padding was most of the logits)
        return F.cross_entropy(self.up(out[scored]) @ embeddings.T, tgt[scored])


# -------------------------------------------------------------------------------------------- MKD
def _normalise(tokenizer, text: str) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    return text.lower()


def _is_word(w: str) -> bool:
    return any(ch.isalnum() for ch in w)


def _rationale_words(tokenizer, rationale: str) -> list[str]:
    """The rationale split into words the way the tokenizer splits its input (so "iPhone-12" gives the
    same words on both sides), normalised and lowercased."""
    text = _normalise(tokenizer, rationale)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.pre_tokenizer is not None:
        words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
    else:
        words = re.findall(r"\w+|[^\w\s]", text)
    return [w.lstrip("\u2581").lower() for w in words]


def bio_tags(query: str, title: str, rationale: str, tokenizer, max_length: int) -> list[int]:
    """MKD's token-level BIO tags over the input "[CLS] query [SEP] title [SEP]" (tokenised exactly as
    ``tokenizer(query, title, truncation=True, max_length=max_length)``, which the tags align with).

    Word pieces are grouped into words; words are normalised and lowercased. Within each segment, the
    longest run of consecutive input words that occurs contiguously in the rationale is taken
    greedily from left to right: its first piece is B, every following piece of the span I. Words
    without a letter or digit never match (punctuation would link unrelated words). Other pieces are
    O; special tokens are -100 (ignored by the CRF).
    """
    enc = tokenizer(query, title, truncation=True, max_length=max_length, return_offsets_mapping=True)
    seq_ids, word_ids, offsets = enc.sequence_ids(), enc.word_ids(), enc["offset_mapping"]
    texts = (query, title)
    tags = [IGNORE if s is None else O for s in seq_ids]

    words: list[tuple[int, list[int]]] = []  # (segment, token positions) per input word
    for pos, (s, w) in enumerate(zip(seq_ids, word_ids)):
        if s is None or w is None:
            continue
        if words and words[-1][0] == s and word_ids[words[-1][1][-1]] == w:
            words[-1][1].append(pos)
        else:
            words.append((s, [pos]))

    r_words = _rationale_words(tokenizer, rationale)
    grams: set[tuple[str, ...]] = set()
    for n in range(1, min(len(r_words), len(words)) + 1):  # no span is longer than the input
        grams.update(tuple(r_words[i:i + n]) for i in range(len(r_words) - n + 1))

    for seg in (0, 1):
        seg_words = [pos for s, pos in words if s == seg]
        text = [_normalise(tokenizer, texts[seg][offsets[p[0]][0]:offsets[p[-1]][1]]) for p in seg_words]
        i = 0
        while i < len(seg_words):
            n = 0
            while (i + n < len(seg_words) and _is_word(text[i + n])
                   and tuple(text[i:i + n + 1]) in grams):
                n += 1
            if n == 0:
                i += 1
                continue
            span = [p for piece in seg_words[i:i + n] for p in piece]
            tags[span[0]] = B
            for p in span[1:]:
                tags[p] = I
            i += n
    return tags


def crf_log_partition(emissions, mask, start, trans, end) -> torch.Tensor:
    """log Z per sequence by the forward algorithm. ``mask`` (B, L) may have gaps (the [SEP] between
    query and title): masked steps are skipped, so transitions link consecutive valid positions."""
    batch, length, _ = emissions.shape
    alpha = emissions.new_zeros(batch, emissions.shape[-1])
    started = torch.zeros(batch, dtype=torch.bool, device=emissions.device)
    for t in range(length):
        m = mask[:, t]
        first = start + emissions[:, t]
        step = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + emissions[:, t]
        new = torch.where(started.unsqueeze(1), step, first)
        alpha = torch.where(m.unsqueeze(1), new, alpha)
        started = started | m
    return torch.logsumexp(alpha + end, dim=1)


def crf_path_score(emissions, tags, mask, start, trans, end) -> torch.Tensor:
    """Unnormalised score of the given tag paths (valid positions only)."""
    batch, length, _ = emissions.shape
    score = emissions.new_zeros(batch)
    prev = torch.zeros(batch, dtype=torch.long, device=emissions.device)
    started = torch.zeros(batch, dtype=torch.bool, device=emissions.device)
    for t in range(length):
        m = mask[:, t]
        y = tags[:, t].clamp(min=0)
        e = emissions[:, t].gather(1, y.unsqueeze(1)).squeeze(1)
        add = torch.where(started, trans[prev, y], start[y]) + e
        score = score + torch.where(m, add, torch.zeros_like(add))
        prev = torch.where(m, y, prev)
        started = started | m
    return score + end[prev]


def crf_viterbi(emissions, mask, start, trans, end) -> list[list[int]]:
    """Best tag path per sequence, aligned to the input (-100 at masked positions)."""
    batch, length, n_tags = emissions.shape
    score = emissions.new_zeros(batch, n_tags)
    started = torch.zeros(batch, dtype=torch.bool, device=emissions.device)
    keep = torch.arange(n_tags, device=emissions.device).expand(batch, n_tags)
    history = []
    for t in range(length):
        m = mask[:, t]
        best, idx = (score.unsqueeze(2) + trans).max(dim=1)
        new = torch.where(started.unsqueeze(1), best + emissions[:, t], start + emissions[:, t])
        # Where nothing is decided at this step (masked, or the first valid position) the backpointer
        # keeps the tag, so backtracking walks straight through gaps.
        history.append(torch.where((m & started).unsqueeze(1), idx, keep))
        score = torch.where(m.unsqueeze(1), new, score)
        started = started | m
    cur = (score + end).argmax(dim=1)
    paths = torch.full((batch, length), IGNORE, dtype=torch.long, device=emissions.device)
    for t in range(length - 1, -1, -1):
        paths[:, t] = torch.where(mask[:, t], cur, paths[:, t])
        cur = history[t].gather(1, cur.unsqueeze(1)).squeeze(1)
    return paths.tolist()


class CRFHead(nn.Module):
    """MKD's tagging head: linear emissions over the token states and a linear-chain CRF (start,
    transition and end scores) over the BIO tags; NLL by the forward algorithm, Viterbi decoding."""

    def __init__(self, d_model: int, n_tags: int = len(BIO)):
        super().__init__()
        self.emit = nn.Linear(d_model, n_tags)
        self.start = nn.Parameter(torch.zeros(n_tags))
        self.trans = nn.Parameter(torch.zeros(n_tags, n_tags))
        self.end = nn.Parameter(torch.zeros(n_tags))

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood over sequences with at least one tagged position; tags of -100
        (special tokens, padding) are skipped."""
        mask = tags != IGNORE
        has = mask.any(dim=1)
        nll = (crf_log_partition(emissions, mask, self.start, self.trans, self.end)
               - crf_path_score(emissions, tags, mask, self.start, self.trans, self.end))
        return nll[has].sum() / has.sum().clamp(min=1)

    def forward(self, H: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        return self.nll(self.emit(H), tags)

    def decode(self, H: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        return crf_viterbi(self.emit(H), mask.bool(), self.start, self.trans, self.end)


# ------------------------------------------------------------------------------------------- CRSD
def augment_title(title: str, rationale: str, sep_token: str) -> str:
    """CRSD's reasoning-augmented second segment: "[CLS] q [SEP] t [SEP] rationale [SEP]"."""
    return f"{title} {sep_token} {rationale}"


def info_nce(z_plain: torch.Tensor, z_aug: torch.Tensor, temperature: float) -> torch.Tensor:
    """One-directional InfoNCE: each plain representation (the query) must pick its own augmented
    representation among the batch's (the keys), by cosine similarity / temperature.

    One direction because the augmented view plays the teacher (seed 003: the same student under
    "reasoning-augmented" input teaches itself under "standard" input); the caller passes z_aug
    detached, so only the plain view is pulled and the rationale-reading view is not dragged
    towards the rationale-free one.
    """
    q = F.normalize(z_plain, dim=-1)
    k = F.normalize(z_aug, dim=-1)
    logits = q @ k.T / temperature
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))
