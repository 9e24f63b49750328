"""Log-probabilities of prompt + completion examples: tokenised as trl does, scored with a shared prompt prefix run once.

The teacher's training examples are (prompt, completion) pairs whose prompts share hundreds of tokens of
instructions and worked examples and differ in the pair and the answer (tens of tokens each). Two ways to score a
batch, with the same values (tests/test_teacher_training.py holds them equal):

* ``share_prefix=True``: the rows' common prefix runs once; its KV cache, gradient attached, is repeated for every
  row, and each row's own tokens follow it left-padded (``[prefix][padding][own tokens]``, positions from the mask),
  as the teacher is asked at inference. On the embedded catalogue an SFT step costs 3.6x less than running every
  row's whole prompt. It needs the model's KV cache in the training forward, which transformers drops under
  gradient checkpointing, and two forwards of one module, which FSDP and DeepSpeed ZeRO-3 do not allow.
* ``share_prefix=False``: every row runs whole, right-padded (trl's way); the LM head projects the completion
  positions only.
"""
from __future__ import annotations

from collections.abc import Sequence

Row = tuple[Sequence[int], int]  # (token ids of prompt + completion + EOS, where the completion starts)


def parting(head: Sequence[int], full: Sequence[int]) -> int:
    """Where the tokenisations of a text and of that text plus a continuation part: the continuation's tokens
    start there (as trl finds completions), since a merge at the seam can re-tokenise the text's last token."""
    common = 0
    while common < min(len(head), len(full)) and head[common] == full[common]:
        common += 1
    return common


def shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    limit = min(len(r) for r in rows) - 1
    k = 0
    while k < limit and all(r[k] == rows[0][k] for r in rows):
        k += 1
    return k


def tokenize_examples(tokenizer, examples: Sequence[dict]) -> list[Row]:
    """(token ids of prompt + completion + EOS, where the completion starts) per example, as trl tokenises a
    prompt-completion pair: the completion starts where the prompt's own tokenisation and the whole one part."""
    out = []
    for e in examples:
        prompt = tokenizer(e["prompt"])["input_ids"]
        full = tokenizer(e["prompt"] + e["completion"] + tokenizer.eos_token)["input_ids"]
        out.append((full, parting(prompt, full)))
    return out


def over_length(tokenizer, examples: Sequence[dict], max_length: int) -> list[int]:
    """Positions of the examples whose prompt + completion is over `max_length` tokens: training would cut them
    before their label line (the answer format it teaches)."""
    return [i for i, e in enumerate(examples)
            if len(tokenizer(e["prompt"] + e["completion"])["input_ids"]) > max_length]


def refuse_over_length(tokenizer, texts: Sequence[dict], max_length: int, what: str, key: str) -> None:
    """Raise, naming the count, the longest and the knob, when any example is over `max_length` tokens."""
    cut = over_length(tokenizer, texts, max_length)
    if cut:
        longest = max(len(tokenizer(texts[i]["prompt"] + texts[i]["completion"])["input_ids"]) for i in cut)
        raise ValueError(f"{len(cut)} of {len(texts)} {what} are longer than {key}.max_length = {max_length} "
                         f"tokens (longest {longest}): their answers, label line last, would be cut; leave them "
                         f"out (over_length), raise {key}.max_length or shorten the prompt")


def _targets(rows: Sequence[Row], keep: int, device):
    """(rows, keep) completion targets right-aligned so that column j is predicted at kept position j; -100
    where a kept position predicts no completion token (the rows' last `keep` positions are the kept ones)."""
    import torch

    targets = torch.full((len(rows), keep), -100, dtype=torch.long, device=device)
    for i, (ids, start) in enumerate(rows):
        n = len(ids) - start  # completion tokens: the row's last `n`, each predicted one position earlier
        targets[i, keep - 1 - n:keep - 1] = torch.tensor(list(ids[start:]), device=device)
    return targets


def prefix_shared_logits(model, rows: Sequence[Row], pad_id: int, prefix_model=None):
    """(logits, targets) over the completion positions of `rows`: logits (rows, K, vocab) float32 and targets
    (rows, K), -100 where a position predicts no completion token. The rows' common prefix (within their prompts)
    runs once through `prefix_model` (default `model`; a DDP-wrapped model passes its inner module, so that one
    wrapped forward is prepared for one backward); its KV cache, gradient attached, feeds every row."""
    import torch
    from transformers import DynamicCache

    ids = [list(r[0]) for r in rows]
    shared = min(shared_prefix(ids), min(start for _, start in rows) - 1)
    device = next(model.parameters()).device
    if shared > 0:
        cache = (prefix_model or model)(input_ids=torch.tensor([ids[0][:shared]], device=device),
                                        use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(rows))
    else:
        shared, cache = 0, DynamicCache()
    own = [r[shared:] for r in ids]
    width = max(len(o) for o in own)
    keep = max(len(r) - start for r, (_, start) in zip(ids, rows)) + 1  # the last prompt token and the completion
    input_ids = torch.tensor([[pad_id] * (width - len(o)) + o for o in own], device=device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(o)) + [1] * len(o) for o in own], device=device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                   use_cache=True, logits_to_keep=keep).logits.float()
    return logits, _targets(rows, keep, device)


def full_sequence_logits(model, rows: Sequence[Row], pad_id: int):
    """:func:`prefix_shared_logits` with every row run whole (left-padded, no cache): what a trainer without prefix
    sharing computes; the path under gradient checkpointing, FSDP and DeepSpeed."""
    import torch

    device = next(model.parameters()).device
    width = max(len(ids) for ids, _ in rows)
    keep = max(len(ids) - start for ids, start in rows) + 1
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids, _ in rows], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in rows], device=device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                   logits_to_keep=keep).logits.float()
    return logits, _targets(rows, keep, device)


def completion_logits(model, rows: Sequence[Row], pad_id: int, share_prefix: bool = True, prefix_model=None):
    """(logits, targets) of `rows`' completions, by :func:`prefix_shared_logits` or :func:`full_sequence_logits`."""
    if share_prefix:
        return prefix_shared_logits(model, rows, pad_id, prefix_model)
    return full_sequence_logits(model, rows, pad_id)


def completion_loss(logits, targets):
    """Mean cross-entropy over the completion tokens, and the share of them the model's argmax gets right."""
    import torch

    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100)
    scored = targets != -100
    return loss, (logits.argmax(-1)[scored] == targets[scored]).float().mean()


def completion_logps(logits, targets):
    """The summed log-probability of each row's completion tokens, shape (rows,)."""
    import torch

    scored = targets != -100
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (logp * scored).sum(-1)
