"""Teacher inference engines: sample rationales and score label words, with transformers or vLLM.

Both backends give the same two calls:

* ``generate(prompts, n, sampling, seed) -> list[list[str]]``: ``n`` completions per prompt (only the new
  text, cut at the end of the answer's first label line: ``parsing.cut_answer``); greedy when
  ``sampling.temperature == 0`` (then the ``n`` copies are equal). A row stops generating once its label
  line is complete, so ``max_new_tokens`` is only a cap for answers that never write one.
* ``score_labels(prefixes, labels) -> np.ndarray``: the summed log-probability of ``" " + label`` after each
  prefix, shape ``(len(prefixes), len(labels))``. A prefix must not end with a space: ``"Label:"`` then
  ``" exact"``, because ``"Label: "`` tokenises its trailing space on its own and no longer lines up with
  the joined text.

Reproducibility. The transformers backend seeds each generate batch from ``seed`` and the batch's prompts,
so the same prompts in the same batches give the same samples however the work was split across calls
or resumed (the cache relies on this); vLLM seeds each prompt from ``seed`` and its text.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from relkd.teacher.config import SamplingConfig, TeacherConfig
from relkd.teacher.parsing import LABEL_KEY, answer_end, awaits_label, cut_answer


class Backend(Protocol):
    def generate(
        self, prompts: Sequence[str], n: int, sampling: SamplingConfig, seed: int, labels: Sequence[str] = ()
    ) -> list[list[str]]: ...

    def score_labels(self, prefixes: Sequence[str], labels: Sequence[str]) -> np.ndarray: ...


def label_distribution(scores: np.ndarray) -> np.ndarray:
    """Softmax of label log-likelihoods over the label axis (the last one): each row sums to 1."""
    scores = np.asarray(scores, dtype=np.float64)
    z = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def model_id(model_path: str, adapter_path: str | Path | None = None) -> str:
    """A stable name of the weights that produced an output, for cache keys: the model's name (the folder
    name for a local folder, whose names carry a recipe version) plus the sha256 of the adapter's files."""
    name = Path(model_path).name if Path(model_path).is_dir() else str(model_path)
    if adapter_path is None:
        return name
    root = Path(adapter_path)
    if not (root / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{root} is not a peft adapter folder (no adapter_config.json)")
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return f"{name}+adapter:{h.hexdigest()[:16]}"


def _stable_seed(seed: int, texts: Sequence[str]) -> int:
    h = hashlib.sha256(json.dumps([seed, list(texts)], ensure_ascii=False).encode())
    return int.from_bytes(h.digest()[:8], "big") & ((1 << 63) - 1)


def _check_lengths(ids: list[list[int]], texts: Sequence[str], limit: int | None) -> list[list[int]]:
    for i, row in enumerate(ids):
        if limit and len(row) > limit:
            raise ValueError(
                f"prompt {i} has {len(row)} tokens, more than max_prompt_tokens={limit} "
                f"(starts {texts[i][:80]!r}); use fewer shots or raise teacher.max_prompt_tokens"
            )
    return ids


def _parting(head: Sequence[int], full: Sequence[int]) -> int:
    """Where the tokenisations of a text and of that text plus a continuation part: the continuation's tokens
    start there (as trl finds completions), since a merge at the seam can re-tokenise the text's last token."""
    common = 0
    while common < min(len(head), len(full)) and head[common] == full[common]:
        common += 1
    return common


def _label_spans(tokenizer, prefixes: Sequence[str], labels: Sequence[str],
                 limit: int | None) -> list[tuple[list[int], int]]:
    """(token ids of prefix + " " + label, number of label tokens at the end) per prefix, then label."""
    bad = [p for p in prefixes if p.endswith(" ")]
    if bad:
        raise ValueError(f"prefix ends with a space ({bad[0][-40:]!r}); end it without one, the label is "
                         "scored as ' ' + label")
    combos = []
    prefix_ids = _check_lengths(tokenizer(list(prefixes))["input_ids"], prefixes, limit)
    for p, pids in zip(prefixes, prefix_ids):
        for f in tokenizer([p + " " + lab for lab in labels])["input_ids"]:
            common = _parting(pids, f)
            if common == len(f):
                raise ValueError(f"a label in {list(labels)} tokenises to nothing after prefix {p[-40:]!r}")
            combos.append((f, len(f) - common))
    return combos


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def torch_dtype(dtype: str):
    """'auto' is bfloat16 on a GPU and float32 on CPU (bf16 matmuls on CPU are slow and lossy here)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if _cuda() else torch.float32
    return getattr(torch, dtype)


def load_teacher(model_path: str, adapter_path: str | Path | None = None, dtype: str = "auto"):
    """Base model (+ a peft adapter merged in, for speed) and its tokenizer, ready for inference.

    The tokenizer pads on the left (batched generation needs every prompt to end at the same position)
    and pads with EOS when the model has no pad token.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(dtype))
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
    model.to("cuda" if _cuda() else "cpu").eval()
    return model, tokenizer


def shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    limit = min(len(r) for r in rows) - 1
    k = 0
    while k < limit and all(r[k] == rows[0][k] for r in rows):
        k += 1
    return k


def _no_repeat(n: int, start: int):
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
    return [tuple(full[_parting(head, full):]) for full in tokenizer([f"{LABEL_KEY} {lab}\n" for lab in labels])["input_ids"]]


def _label_choice(tokenizer, labels: Sequence[str], start: int):
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


@functools.cache
def _buffered_layer_class():
    """A transformers ``DynamicLayer`` whose keys and values live in a preallocated buffer (grown by doubling):
    a decode step writes its token in place and attends to a view, instead of ``torch.cat`` copying the whole
    cache every step (a tenth of a CPU decode step at 32 rows x 400 positions). Defined on first use, so
    importing this module does not import transformers."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        def __init__(self, room: int = 64):
            super().__init__()
            self.room, self.length = room, 0

        def _hold(self, keys, values) -> None:
            b, h, n, d = keys.shape
            self._k, self._v = keys.new_empty((b, h, n + self.room, d)), values.new_empty((b, h, n + self.room, d))
            self._k[:, :, :n], self._v[:, :, :n] = keys, values
            self.length, self.dtype, self.device, self.is_initialized = n, keys.dtype, keys.device, True
            self._view()

        def _view(self) -> None:
            self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

        @classmethod
        def of(cls, layer, room: int):
            """The same cached states as `layer` (a DynamicLayer), with room for `room` more positions."""
            out = cls(room)
            if layer.get_seq_length() > 0:
                out._hold(layer.keys, layer.values)
            return out

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized or self.length == 0:
                self._hold(key_states, value_states)
                return self.keys, self.values
            end = self.length + key_states.shape[-2]
            if end > self._k.shape[-2]:
                grow = max(end, 2 * self._k.shape[-2]) - self._k.shape[-2]
                pad = (0, 0, 0, grow)
                self._k, self._v = torch.nn.functional.pad(self._k, pad), torch.nn.functional.pad(self._v, pad)
            self._k[:, :, self.length:end], self._v[:, :, self.length:end] = key_states, value_states
            self.length = end
            self._view()
            return self.keys, self.values

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.length:
                self._k, self._v = self._k.repeat_interleave(repeats, 0), self._v.repeat_interleave(repeats, 0)
                self._view()

        def batch_select_indices(self, indices) -> None:
            if self.length:
                self._k, self._v = self._k[indices], self._v[indices]
                self._view()

    return BufferedLayer


def _pick(scores, sampling: SamplingConfig):
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


class TransformersBackend:
    """transformers models in left-padded batches, decoded by its own loop (``_decode``); the CPU path and the
    reference implementation.

    Shared prefix: the prompts of one batch share their perspective's instructions and shots (hundreds of
    tokens), then differ in the pair (tens). With ``share_prefix`` the shared tokens are run once per batch
    and their KV cache is copied to every row, laid out as ``[prefix][padding][own tokens]`` (the padding
    masked, positions from the mask), so prefill costs one prefix plus the rows' own tokens instead of
    every row's whole prompt: the same idea as vLLM's prefix caching. Batches sharing fewer than
    ``min_shared`` tokens take the plain left-padded path.
    """

    def __init__(self, model_path: str, adapter_path: str | Path | None = None, dtype: str = "auto",
                 batch_size: int = 16, max_prompt_tokens: int | None = None, share_prefix: bool = True,
                 min_shared: int = 16):
        self.model, self.tokenizer = load_teacher(model_path, adapter_path, dtype)
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.share_prefix = share_prefix
        self.min_shared = min_shared
        self.device = self.model.device

    def _prefix_cache(self, prefix: Sequence[int], copies: int):
        """The KV cache of `prefix` run once, repeated for `copies` rows."""
        import torch

        with torch.inference_mode():
            cache = self.model(input_ids=torch.tensor([list(prefix)], device=self.device),
                               use_cache=True).past_key_values
        cache.batch_repeat_interleave(copies)
        return cache

    def _prefix_batch(self, rows: Sequence[Sequence[int]], shared: int, copies: int):
        """(ids, mask, cache) for generate: the shared prefix's KV cache repeated for every row x copies,
        each row's own tokens right-aligned after the prefix, the gap masked."""
        import torch

        cache = self._prefix_cache(rows[0][:shared], len(rows) * copies)
        own = [list(r[shared:]) for r in rows]
        width = max(len(o) for o in own)
        pad, prefix = self.tokenizer.pad_token_id, list(rows[0][:shared])
        ids = torch.tensor([prefix + [pad] * (width - len(o)) + o for o in own], device=self.device)
        mask = torch.tensor([[1] * shared + [0] * (width - len(o)) + [1] * len(o) for o in own], device=self.device)
        return ids.repeat_interleave(copies, 0), mask.repeat_interleave(copies, 0), cache

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return _check_lengths(self.tokenizer(list(texts))["input_ids"], texts, self.max_prompt_tokens)

    def _left_pad(self, rows: Sequence[Sequence[int]]):
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return ids, mask

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingConfig, seed: int,
                 labels: Sequence[str] = ()) -> list[list[str]]:
        """n answers per prompt, each cut at its first complete label line; with sampling.label_choice and
        a label set, the label on that line is one of `labels`."""
        import torch

        greedy = sampling.temperature == 0
        per = 1 if greedy else n
        out: list[list[str]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start:start + self.batch_size])
            rows = self._encode(batch)
            shared = shared_prefix(rows) if self.share_prefix else 0
            cuda = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda), torch.inference_mode():  # leave the caller's RNG alone
                torch.manual_seed(_stable_seed(seed, batch))
                answers = self._decode(rows, shared if shared >= self.min_shared else 0, per, sampling, labels)
            texts = [cut_answer(t) for t in self.tokenizer.batch_decode(answers, skip_special_tokens=True)]
            for i in range(len(batch)):
                got = texts[i * per:(i + 1) * per]
                out.append(got * n if greedy else got)
        return out

    def _decode(self, rows: Sequence[Sequence[int]], shared: int, per: int, sampling: SamplingConfig,
                labels: Sequence[str]) -> list[list[int]]:
        """The new tokens of every row x `per` copies. One prefill (the `shared` prefix once, when given), then
        one token a step for the rows still writing: a row leaves the batch (and its KV cache) as soon as its
        label line is complete, it writes EOS, or it reaches the cap, so a batch costs its answers' tokens,
        not its longest answer times its rows (transformers ``generate`` runs every row to the longest)."""
        import torch

        buffered = _buffered_layer_class()
        if shared:
            ids, mask, cache = self._prefix_batch(rows, shared, per)
            feed = ids[:, shared:]
            cache.layers = [buffered.of(layer, feed.shape[1] + sampling.max_new_tokens) for layer in cache.layers]
        else:
            from transformers import DynamicCache

            ids, mask = self._left_pad(rows)
            ids, mask, cache = ids.repeat_interleave(per, 0), mask.repeat_interleave(per, 0), DynamicCache()
            cache.layer_class_to_replicate = lambda: buffered(sampling.max_new_tokens)
            feed = ids
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=feed, attention_mask=mask, position_ids=pos[:, -feed.shape[1]:],
                            past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        nxt_pos = pos[:, -1] + 1
        processors = [_no_repeat(sampling.no_repeat_ngram, 0)] if sampling.no_repeat_ngram else []
        if sampling.label_choice and labels:
            processors.append(_label_choice(self.tokenizer, labels, 0))
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos if eos is not None else self.tokenizer.eos_token_id])
        alive = list(range(len(feed)))
        answers: list[list[int]] = [[] for _ in alive]
        written = torch.empty(len(alive), 0, dtype=torch.long, device=self.device)  # the alive rows' answers
        for step in range(sampling.max_new_tokens):
            scores = logits.float()
            for proc in processors:
                scores = proc(written, scores)
            tokens = _pick(scores, sampling)
            written = torch.cat([written, tokens[:, None]], dim=1)
            keep = []
            for i, (row, tok) in enumerate(zip(alive, tokens.tolist())):
                if tok in eos:
                    continue
                answers[row].append(tok)
                if answer_end(self.tokenizer.decode(answers[row], skip_special_tokens=True)) is None:
                    keep.append(i)
            if not keep or step + 1 == sampling.max_new_tokens:
                break
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, nxt_pos, tokens, written = mask[index], nxt_pos[index], tokens[index], written[index]
                alive = [alive[i] for i in keep]
                for proc in processors:
                    if hasattr(proc, "select"):
                        proc.select(keep)
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            logits = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=nxt_pos[:, None],
                                past_key_values=cache, use_cache=True).logits[:, -1]
            nxt_pos = nxt_pos + 1
        return answers

    def score_labels(self, prefixes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        """One forward pass per batch of prefixes scores every label: each row holds its own tokens (after the
        batch's shared prefix, whose KV cache is run once) and then every label's tail side by side, each tail
        attending to the row and to itself only (a tree of continuations under a 4D mask). The prefix is a
        whole prompt plus a rationale, the labels a few tokens each, so this costs about one prefill of the
        rows, with no copy of their KV cache per label and the vocabulary projected only at the tails."""
        import torch

        combos = _label_spans(self.tokenizer, prefixes, labels, self.max_prompt_tokens)
        n_lab = len(labels)
        scores = np.empty((len(prefixes), n_lab))
        for start in range(0, len(prefixes), self.batch_size):
            rows = range(start, min(start + self.batch_size, len(prefixes)))
            full = [[combos[i * n_lab + j][0] for j in range(n_lab)] for i in rows]
            # The shared part of a prefix's tokenisations; each label's tail (>= 1 token) follows it.
            heads = []
            for fs in full:
                k = min(len(f) for f in fs) - 1
                while any(f[:k] != fs[0][:k] for f in fs):
                    k -= 1
                heads.append(fs[0][:k])
            with torch.inference_mode():
                logp, spans = self._tail_logprobs(heads, [[f[len(h):] for f in fs] for h, fs in zip(heads, full)])
            for r, i in enumerate(rows):
                for j, (where, tail) in enumerate(spans[r]):
                    m = combos[i * n_lab + j][1]  # label tokens: the last m of the tail
                    scores[i, j] = sum(logp[r, where[q], tail[q]].item() for q in range(len(tail) - m, len(tail)))
        return scores

    def _tail_logprobs(self, heads: Sequence[Sequence[int]], tails: Sequence[Sequence[Sequence[int]]]):
        """Log-probabilities of every tail token after its row's head, in one forward pass.

        Layout per row: ``[shared prefix: KV cache][own head tokens, left-padded][tail 1][tail 2]...[padding]``.
        Returns (logp, spans): logp (rows, kept positions, vocab), and per row and tail (the kept position that
        predicts each of its tokens, the tail's tokens)."""
        import torch
        from transformers import DynamicCache

        shared = shared_prefix(heads) if self.share_prefix else 0
        shared = shared if shared >= self.min_shared else 0
        own = [list(h[shared:]) for h in heads]
        width_own = max(len(o) for o in own)
        width_tail = max(sum(len(t) for t in ts) for ts in tails)
        width, n = width_own + width_tail, len(heads)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((n, width), pad, dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        see = torch.zeros((n, width, shared + width), dtype=torch.bool)  # query -> key
        see[:, :, :shared] = True
        spans = []
        for r, (o, ts) in enumerate(zip(own, tails)):
            first = width_own - len(o)  # own tokens right-aligned before the tails
            ids[r, first:width_own] = torch.tensor(o, dtype=torch.long)
            pos[r, first:width_own] = shared + torch.arange(len(o))
            own_keys = shared + torch.arange(first, width_own)
            for q in range(first, width_own):
                see[r, q, shared + first:shared + q + 1] = True
            at, row_spans = width_own, []
            for t in ts:
                ids[r, at:at + len(t)] = torch.tensor(t, dtype=torch.long)
                pos[r, at:at + len(t)] = shared + len(o) + torch.arange(len(t))
                for q in range(len(t)):
                    see[r, at + q, own_keys] = True
                    see[r, at + q, shared + at:shared + at + q + 1] = True
                # Kept positions start at the head's last token, which predicts every tail's first token;
                # tail token q > 0 is predicted at tail token q - 1.
                row_spans.append(([0] + [at + q - 1 - (width_own - 1) for q in range(1, len(t))], list(t)))
                at += len(t)
            spans.append(row_spans)
        idx = torch.arange(width)
        see[:, idx, shared + idx] = True  # every position sees itself: padding rows never attend to nothing
        if shared:
            cache = self._prefix_cache(heads[0][:shared], n)
        else:
            cache = DynamicCache()
        keep = width - (width_own - 1)  # the head's last position and every tail position
        logits = self.model(input_ids=ids.to(self.device), attention_mask=see[:, None].to(self.device),
                            position_ids=pos.to(self.device), past_key_values=cache, use_cache=True,
                            logits_to_keep=keep).logits
        return torch.log_softmax(logits.float(), dim=-1).cpu(), spans


class VLLMBackend:
    """vLLM on a GPU host: the same calls and outputs as TransformersBackend (not runnable on CPU)."""

    def __init__(self, model_path: str, adapter_path: str | Path | None = None, tensor_parallel_size: int = 1,
                 dtype: str = "auto", max_prompt_tokens: int | None = None):
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        rank = 16
        if adapter_path is not None:
            rank = max(rank, json.loads((Path(adapter_path) / "adapter_config.json").read_text())["r"])
        self.llm = LLM(model=model_path, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                       enable_lora=adapter_path is not None, max_lora_rank=rank)
        self.max_prompt_tokens = max_prompt_tokens
        self.lora = LoRARequest("teacher", 1, str(adapter_path)) if adapter_path is not None else None
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingConfig, seed: int,
                 labels: Sequence[str] = ()) -> list[list[str]]:
        from vllm import SamplingParams

        _check_lengths(self.tokenizer(list(prompts))["input_ids"], prompts, self.max_prompt_tokens)
        if sampling.no_repeat_ngram:
            raise ValueError(f"teacher.sampling.no_repeat_ngram = {sampling.no_repeat_ngram} is applied by the "
                             "transformers backend only; set it to 0 with teacher.backend vllm (profiles/paper.yaml does)")
        if sampling.label_choice and labels:
            raise ValueError("teacher.sampling.label_choice = true is applied by the transformers backend only; set "
                             "it to false with teacher.backend vllm (profiles/paper.yaml does)")
        greedy = sampling.temperature == 0
        params = [
            SamplingParams(n=1 if greedy else n, temperature=sampling.temperature, top_p=sampling.top_p,
                           top_k=sampling.top_k or -1, max_tokens=sampling.max_new_tokens,
                           seed=_stable_seed(seed, [p]) % (1 << 31))
            for p in prompts
        ]
        outs = self.llm.generate(list(prompts), params, lora_request=self.lora, use_tqdm=False)
        return [[cut_answer(c.text) for c in o.outputs] * (n if greedy else 1) for o in outs]

    def score_labels(self, prefixes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        from vllm import SamplingParams

        combos = _label_spans(self.tokenizer, prefixes, labels, self.max_prompt_tokens)
        params = SamplingParams(max_tokens=1, prompt_logprobs=1)  # the prompt token's own log-prob is always in
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in combos], params, lora_request=self.lora,
                                 use_tqdm=False)
        scores = [sum(pos[tok].logprob for pos, tok in zip(o.prompt_logprobs[-m:], ids[-m:]))
                  for o, (ids, m) in zip(outs, combos)]
        return np.asarray(scores).reshape(len(prefixes), len(labels))


def resolve_backend(backend: str) -> str:
    """'auto' -> 'vllm' when vllm is importable and a GPU is visible, else 'transformers'."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "auto":
        return "vllm" if has_vllm and _cuda() else "transformers"
    if backend == "vllm" and not (has_vllm and _cuda()):
        raise RuntimeError(
            f"teacher.backend='vllm' but this host has {'no GPU' if has_vllm else 'no vllm package'}; "
            "set teacher.backend to 'transformers' or 'auto', or install the gpu extra on a GPU host "
            "(pip install 'relkd[gpu]')"
        )
    return backend


def make_backend(cfg: TeacherConfig, model_path: str, adapter_path: str | Path | None = None) -> Backend:
    """The engine `cfg.backend` names, loaded with `model_path` (+ adapter)."""
    if resolve_backend(cfg.backend) == "vllm":
        return VLLMBackend(model_path, adapter_path, cfg.tensor_parallel_size, cfg.dtype, cfg.max_prompt_tokens)
    return TransformersBackend(model_path, adapter_path, cfg.dtype, cfg.batch_size, cfg.max_prompt_tokens)
