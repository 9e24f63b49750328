"""The teacher served by a fleet of OpenAI-compatible servers (`vllm serve`, SGLang, llama.cpp's server) over HTTP.

relkd's process owns no GPU: prompts go to the servers of ``teacher.http.base_urls`` through the official ``openai``
client's completions API (raw prompts: relkd renders the chat template itself, as for the in-process engines),
each request to the server with the fewest requests in flight, at most ``concurrency`` per server, retried with
exponential backoff on connection errors, 429 and 5xx. The generation cache in front of it makes a killed stage
resume where it stopped, so an annotation of millions of pairs is a series of cached batches.

A LoRA adapter is a served model of its own name: ``teacher.http.adapters`` maps an adapter folder's name to it
(default: the folder's name, e.g. ``vllm serve BASE --enable-lora --lora-modules sft=models/teacher/sft``). The
servers must serve the adapter files of this run: the cache keys name the adapter's hash, which relkd cannot check
on a remote server.

Answers stop at their label line with the server's stop strings, and the label is restricted to the label set with
its structured output (``teacher.http.structured_output``: vLLM's ``structured_outputs.choice``, SGLang's
``regex``, llama.cpp's GBNF ``grammar``); see relkd.teacher.served_answers. Label scores are the log-probabilities
the server reports for the prompt's own tokens (``echo`` with ``logprobs``).
"""
from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from relkd.teacher.config import HTTPConfig, SamplingConfig, TeacherConfig
from relkd.teacher.engine import check_lengths, label_spans, model_id
from relkd.teacher.served_answers import Completion, Request, answer


def structured_choice(dialect: str, choices: Sequence[str]) -> dict:
    """The request fields that restrict a completion to one of `choices`, in a server's own dialect."""
    if dialect == "vllm":
        return {"structured_outputs": {"choice": list(choices)}}
    if dialect == "sglang":
        return {"regex": "(" + "|".join(re.escape(c) for c in choices) + ")"}
    if dialect == "llama_cpp":
        quoted = " | ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in choices)
        return {"grammar": f"root ::= {quoted}"}
    raise ValueError(f"teacher.http.structured_output {dialect!r} has no choice constraint; use vllm, sglang or "
                     "llama_cpp, or set teacher.sampling.label_choice to false")


class _Fleet:
    """The servers, each with its own client and a count of requests in flight; a call goes to the least busy."""

    def __init__(self, cfg: HTTPConfig):
        from openai import OpenAI

        if not cfg.base_urls:
            raise ValueError("teacher.backend 'openai' needs teacher.http.base_urls (e.g. ['http://gpu-1:8000/v1'], "
                             "the servers' OpenAI-compatible base URLs)")
        key = os.environ.get(cfg.api_key_env) or "none"
        # The client's own retries (exponential backoff on connection errors, 408/409/429 and 5xx).
        self.clients = [OpenAI(base_url=url, api_key=key, timeout=cfg.timeout, max_retries=cfg.retries)
                        for url in cfg.base_urls]
        self.busy = [0] * len(self.clients)
        self.lock = threading.Lock()
        self.slots = threading.Semaphore(cfg.concurrency * len(self.clients))

    def call(self, fn):
        """``fn(client)`` on the least busy server."""
        with self.slots:
            with self.lock:
                i = min(range(len(self.busy)), key=self.busy.__getitem__)
                self.busy[i] += 1
            try:
                return fn(self.clients[i])
            finally:
                with self.lock:
                    self.busy[i] -= 1


class OpenAIEngine:
    """The fleet, the local tokenizer that renders prompts, and a thread pool sized to the fleet."""

    def __init__(self, model_path: str, cfg: TeacherConfig):
        from transformers import AutoTokenizer

        self.model_path, self.cfg = model_path, cfg
        self.fleet = _Fleet(cfg.http)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.pool = ThreadPoolExecutor(max_workers=cfg.http.concurrency * len(cfg.http.base_urls))

    def served_name(self, adapter: str | Path | None) -> str:
        """The model name a request asks for: the adapter's served name, or the base model's."""
        if adapter is None:
            return self.cfg.http.served_model or self.cfg.model
        folder = Path(adapter).name
        return self.cfg.http.adapters.get(folder, folder)

    def teacher(self, adapter: str | Path | None = None) -> "OpenAITeacher":
        name = self.served_name(adapter)
        return OpenAITeacher(self, name, f"openai|{name}|{model_id(self.model_path, adapter)}")


class OpenAITeacher:
    """One served model (the base, or the base with one LoRA adapter) of the fleet."""

    def __init__(self, engine: OpenAIEngine, name: str, cache_id: str):
        self.engine, self.name, self.cache_id = engine, name, cache_id
        self.tokenizer = engine.tokenizer

    def _one(self, r: Request) -> list[Completion]:
        extra = {"top_k": r.top_k or -1, "include_stop_str_in_output": True}
        if r.choice:
            extra.update(structured_choice(self.engine.cfg.http.structured_output, r.choice))
        got = self.engine.fleet.call(lambda c: c.completions.create(
            model=self.name, prompt=r.prompt, n=r.n, temperature=r.temperature, top_p=r.top_p,
            max_tokens=max(1, r.max_tokens), seed=r.seed, stop=list(r.stop) or None, extra_body=extra))
        out = []
        for choice in sorted(got.choices, key=lambda c: c.index):
            text, stop = choice.text, None
            if choice.finish_reason == "stop" and r.stop:
                # The string that stopped it: in the text when the server keeps it (vLLM), else the server says
                # which (vLLM's stop_reason, llama.cpp's stopping_word) and it is put back.
                stop = next((s for s in r.stop if text.endswith(s)), None)
                said = getattr(choice, "stop_reason", None) or getattr(choice, "stopping_word", None)
                if stop is None and isinstance(said, str) and said in r.stop:
                    text, stop = text + said, said
            tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            out.append(Completion(text, tokens, stop, choice.finish_reason == "stop" and stop is None))
        while len(out) < r.n:  # a server that ignores n (one choice back): ask again for the rest
            out += self._one(Request(**{**r.__dict__, "n": 1, "seed": r.seed + len(out)}))
        return out[:r.n]

    def _complete(self, requests: list[Request]) -> list[list[Completion]]:
        return list(self.engine.pool.map(self._one, requests))

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingConfig, seed: int,
                 labels: Sequence[str] = ()) -> list[list[str]]:
        check_lengths(self.tokenizer(list(prompts))["input_ids"], prompts, self.engine.cfg.max_prompt_tokens)
        restrict = self.engine.cfg.http.structured_output != "none"
        return answer(self._complete, prompts, n, sampling, seed, labels, choice=restrict)

    def _prompt_logprobs(self, ids: list[int]) -> list[float | None]:
        got = self.engine.fleet.call(lambda c: c.completions.create(
            model=self.name, prompt=ids, max_tokens=1, temperature=0.0, echo=True, logprobs=1))
        return list(got.choices[0].logprobs.token_logprobs)

    def score_labels(self, prefixes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        """The summed log-probability of each label's tokens after each prefix, from the log-probabilities the
        server reports for the prompt's own tokens (``echo`` + ``logprobs``)."""
        combos = label_spans(self.tokenizer, prefixes, labels, self.engine.cfg.max_prompt_tokens)
        logps = list(self.engine.pool.map(lambda c: self._prompt_logprobs(c[0]), combos))
        scores = []
        for (ids, m), lp in zip(combos, logps):
            tail = lp[len(ids) - m:len(ids)]
            if len(tail) != m or any(v is None for v in tail):
                raise RuntimeError(f"the server returned {len(lp)} prompt log-probabilities for {len(ids)} tokens "
                                   f"({self.name}); label scoring needs echo with logprobs on /v1/completions")
            scores.append(float(sum(tail)))
        return np.asarray(scores).reshape(len(prefixes), len(labels))

