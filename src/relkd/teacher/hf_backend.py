"""The transformers engine: the teacher in left-padded batches, decoded by its own loop; the CPU path and the reference."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from relkd.teacher.completions import shared_prefix
from relkd.teacher.config import SamplingConfig, TeacherConfig
from relkd.teacher.engine import cache_id, check_lengths, has_cuda, label_spans, stable_seed
from relkd.teacher.hf_decoding import label_choice, no_repeat, pick
from relkd.teacher.kv_cache import buffered_layer_class
from relkd.teacher.parsing import answer_end, cut_answer


def torch_dtype(dtype: str):
    """'auto' is bfloat16 on a GPU and float32 on CPU (bf16 matmuls on CPU are slow and lossy here)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if has_cuda() else torch.float32
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
    model.to("cuda" if has_cuda() else "cpu").eval()
    return model, tokenizer


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
        self.cache_id = cache_id("transformers", str(self.model.dtype).removeprefix("torch."), model_path,
                                 adapter_path)

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
        return check_lengths(self.tokenizer(list(texts))["input_ids"], texts, self.max_prompt_tokens)

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
                torch.manual_seed(stable_seed(seed, batch))
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

        buffered = buffered_layer_class()
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
        processors = [no_repeat(sampling.no_repeat_ngram, 0)] if sampling.no_repeat_ngram else []
        if sampling.label_choice and labels:
            processors.append(label_choice(self.tokenizer, labels, 0))
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos if eos is not None else self.tokenizer.eos_token_id])
        alive = list(range(len(feed)))
        answers: list[list[int]] = [[] for _ in alive]
        written = torch.empty(len(alive), 0, dtype=torch.long, device=self.device)  # the alive rows' answers
        for step in range(sampling.max_new_tokens):
            scores = logits.float()
            for proc in processors:
                scores = proc(written, scores)
            tokens = pick(scores, sampling)
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

        combos = label_spans(self.tokenizer, prefixes, labels, self.max_prompt_tokens)
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


class TransformersEngine:
    """The transformers engine of one process: each teacher loads the base with its adapter merged in (a second
    or two for the embedded teacher; the previous one is freed when its caller drops it)."""

    def __init__(self, model_path: str, cfg: TeacherConfig):
        self.model_path, self.cfg = model_path, cfg

    def teacher(self, adapter: str | Path | None = None) -> TransformersBackend:
        return TransformersBackend(self.model_path, adapter, self.cfg.dtype, self.cfg.batch_size,
                                   self.cfg.max_prompt_tokens)
