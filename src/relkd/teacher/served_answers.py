"""Answers from a serving engine's completion call: the rationale up to the label key, then the label on its own.

A serving engine (vLLM in-process, or any OpenAI-compatible server) has no logits processor of relkd's, so an
answer is written in two requests, each with the engine's own features:

1. the rationale: sampled with the prompt's decoding settings, stopped at a label key (``stop`` strings: "Label:",
   "Answer:", ... as ``parsing`` reads them), the key kept in the text;
2. the label: the text so far is continued with the label restricted to the label set by the engine's
   structured output (a choice among " <label>"; ``sampling.label_choice``), or, without it, up to the end of
   the line (``stop=["\\n"]``).

A key found inside a sentence ("the answer: ...") is not a label line (``parsing.awaits_label``): the rationale goes
on from there. An answer that reaches the token cap or the end of the sequence without a key is returned as written
(unparseable, as with the transformers engine). Every request is seeded from the run's seed and its own prompt.

A server that cannot say which stop string ended a completion (llama.cpp's servers report "stop" for the end of the
sequence too) is asked without stop strings: the rationale runs to the end of the sequence or the cap, and the text
is cut after its first label key (``parsing.label_key_end``) before the label is chosen.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from relkd.teacher.config import SamplingConfig
from relkd.teacher.engine import stable_seed
from relkd.teacher.parsing import awaits_label, cut_answer, label_key_end

# Every way parsing.py's label line can start ("Label:", "**Final answer:**", ...) contains one of these.
LABEL_STOPS = ("Label:", "label:", "LABEL:", "Answer:", "answer:", "ANSWER:")
LABEL_TOKENS = 16  # room for the label text after its key
MAX_ROUNDS = 4  # rationale requests per answer: a key inside a sentence costs one more


@dataclass
class Request:
    """One completion request: `n` samples of `prompt`'s continuation."""

    prompt: str
    n: int
    seed: int
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: Sequence[str] = ()
    choice: Sequence[str] | None = None  # the continuation must be one of these (structured output)


@dataclass
class Completion:
    """What the engine wrote: the text (with the stop string that ended it, if any) and its token count."""

    text: str
    tokens: int
    stopped_at: str | None = None  # the stop string that ended it
    finished: bool = False  # the end of the sequence (EOS) ended it


@dataclass
class _Answer:
    prompt: str
    seed: int
    text: str = ""
    used: int = 0
    rounds: int = 0
    done: bool = False
    pending: list = field(default_factory=list)


def answer(complete: Callable[[list[Request]], list[list[Completion]]], prompts: Sequence[str], n: int,
           sampling: SamplingConfig, seed: int, labels: Sequence[str] = (), choice: bool = True,
           stops: bool = True) -> list[list[str]]:
    """`n` answers per prompt (greedy: one, repeated), each ending at its first label line (``cut_answer``).
    ``complete(requests)`` runs a batch of requests on the engine (``Completion`` lists in request order). With
    ``sampling.label_choice``, `labels` and `choice` (the engine has structured output), the label is one of
    `labels`. `stops`: the engine says which stop string ended a completion (else none is asked for)."""
    if sampling.no_repeat_ngram:
        raise ValueError(f"teacher.sampling.no_repeat_ngram = {sampling.no_repeat_ngram} is a logits processor of "
                         "the transformers engine; a serving engine needs 0 (profiles/paper.yaml sets it)")
    greedy = sampling.temperature == 0
    per = 1 if greedy else n
    restrict = bool(sampling.label_choice and labels and choice)

    def ask(prompt: str, k: int, seed_: int, max_tokens: int, **kw) -> Request:
        return Request(prompt, k, seed_ % (1 << 31), max_tokens, sampling.temperature, sampling.top_p,
                       sampling.top_k, **kw)

    # The rationale of every sample: one request per prompt for its `per` samples.
    keys = LABEL_STOPS if stops else ()
    first = complete([ask(p, per, stable_seed(seed, [p]), sampling.max_new_tokens, stop=keys) for p in prompts])
    answers = [[_Answer(p, stable_seed(seed, [p, str(s)])) for s in range(per)] for p in prompts]
    todo = []
    for row, outs in zip(answers, first):
        for a, c in zip(row, outs):
            _take(a, c, sampling.max_new_tokens, stops, restrict)
            todo.append(a)
    while True:
        rationale = [a for a in todo if not a.done and not awaits_label(a.text)]
        label = [a for a in todo if not a.done and awaits_label(a.text)]
        if not rationale and not label:
            break
        requests = [ask(a.prompt + a.text, 1, stable_seed(a.seed, [a.text]), sampling.max_new_tokens - a.used,
                        stop=keys) for a in rationale]
        if restrict:
            requests += [ask(a.prompt + a.text, 1, stable_seed(a.seed, [a.text]), LABEL_TOKENS,
                             choice=[f" {lab}" for lab in labels]) for a in label]
        else:
            requests += [ask(a.prompt + a.text, 1, stable_seed(a.seed, [a.text]), LABEL_TOKENS, stop=["\n"])
                         for a in label]
        got = complete(requests)
        for a, outs in zip(rationale, got):
            _take(a, outs[0], sampling.max_new_tokens, stops, restrict)
        for a, outs in zip(label, got[len(rationale):]):
            a.text += outs[0].text.split("\n", 1)[0] + "\n"
            a.done = True
    out = []
    for row in answers:
        texts = [cut_answer(a.text) for a in row]
        out.append(texts * n if greedy else texts)
    return out


def _take(a: _Answer, c: Completion, cap: int, stops: bool, restrict: bool) -> None:
    """Add a rationale request's text to the answer; it is done when nothing more can be written (the end of the
    sequence, the token cap, no stop string, or too many rounds) unless it now awaits its label. Without stop
    strings, the label line the engine wrote is kept as written, or (a label to choose) cut after its key."""
    a.text += c.text
    a.used += c.tokens
    a.rounds += 1
    if not stops:
        end = label_key_end(a.text)
        if end is not None and restrict:
            a.text = a.text[:end]
            return  # it awaits its label
        a.done = True
        return
    if awaits_label(a.text):
        return
    if c.finished or c.stopped_at is None or a.used >= cap or a.rounds >= MAX_ROUNDS:
        a.done = True
