"""Decoding helpers of the transformers engine: next-token choice and the logits processors an answer needs."""
from __future__ import annotations

from collections.abc import Sequence

from relkd.teacher.completions import parting
from relkd.teacher.config import SamplingConfig
from relkd.teacher.parsing import LABEL_KEY, awaits_label


def no_repeat(n: int, start: int):
    """A logits processor that bans the token completing an n-gram the answer (tokens from `start`) already
    holds: a small model's greedy loop ("x 1-1/4 in. x 1-1/4 in. ...") runs to the token cap without
    a label line. Unlike transformers' ``no_repeat_ngram_size`` it never looks at the prompt, whose worked
    examples hold the very "Label: <class>" n-grams an answer must repeat."""
    from transformers import LogitsProcessor

    class NoRepeatInAnswer(LogitsProcessor):
        def __call__(self, input_ids, scores):
            answer = input_ids[:, start:]
            if answer.shape[1] < n:
                return scores
            rows = answer.tolist()
            for b, row in enumerate(rows):
                tail = tuple(row[len(row) - n + 1:])
                banned = {row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i:i + n - 1]) == tail}
                if banned:
                    scores[b, list(banned)] = -float("inf")
            return scores

    return NoRepeatInAnswer()


def label_sequences(tokenizer, labels: Sequence[str]) -> list[tuple[int, ...]]:
    """The token ids an answer writes after its label key for each label: " <label>" and the newline that
    ends the line, tokenised in context (after LABEL_KEY, as a model writes them)."""
    head = tokenizer(LABEL_KEY)["input_ids"]
    return [tuple(full[parting(head, full):]) for full in tokenizer([f"{LABEL_KEY} {lab}\n" for lab in labels])["input_ids"]]


def label_choice(tokenizer, labels: Sequence[str], start: int):
    """A logits processor for sampling.label_choice: once a row's answer (tokens from `start`) awaits its
    label (parsing.awaits_label), only tokens that continue one of the labels' sequences stay possible,
    down to the newline that ends the line; before that point the row is left alone."""
    import torch
    from transformers import LogitsProcessor

    seqs = label_sequences(tokenizer, labels)

    class LabelChoice(LogitsProcessor):
        def __init__(self):
            self.marks: dict[int, int] = {}  # row -> answer length when its label began

        def select(self, keep: Sequence[int]) -> None:
            """The batch now holds only rows `keep` (in that order): their marks follow them."""
            self.marks = {new: self.marks[old] for new, old in enumerate(keep) if old in self.marks}

        def __call__(self, input_ids, scores):
            for b, row in enumerate(input_ids[:, start:].tolist()):
                mark = self.marks.get(b)
                if mark is None:
                    if not awaits_label(tokenizer.decode(row, skip_special_tokens=True)):
                        continue
                    self.marks[b] = mark = len(row)
                done = tuple(row[mark:])
                allowed = sorted({s[len(done)] for s in seqs if len(s) > len(done) and s[:len(done)] == done})
                if not allowed:
                    continue  # the line is complete: the stopping criterion ends the row
                keep = scores[b, allowed].clone()
                if torch.isinf(keep).all():  # another processor (no_repeat) banned every label token
                    keep.zero_()
                scores[b] = -float("inf")
                scores[b, allowed] = keep
            return scores

    return LabelChoice()


def pick(scores, sampling: SamplingConfig):
    """The next token of each row: the argmax when greedy; else a sample after temperature, top-k, then top-p
    (transformers' order), drawn among the top-k candidates only instead of sorting and sampling the whole
    vocabulary (the same distribution; the sort and multinomial over 49k entries were a fifth of a step)."""
    import torch

    if sampling.temperature == 0:
        return scores.argmax(dim=-1)
    scores = scores / sampling.temperature
    k = min(sampling.top_k or scores.shape[-1], scores.shape[-1])
    top, index = scores.topk(k, dim=-1)  # sorted, largest first
    probs = torch.softmax(top, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        before = probs.cumsum(dim=-1) - probs  # the mass of the better candidates
        probs = probs.masked_fill(before >= sampling.top_p, 0.0)  # the best candidate always stays
    choice = torch.multinomial(probs, 1)
    return index.gather(-1, choice).squeeze(-1)
