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
its structured output; the fields the OpenAI API leaves to each server are named by ``teacher.http.server`` (vLLM's
``structured_outputs.choice`` and ``stop_reason``, SGLang's ``regex`` and ``matched_stop``, llama.cpp's GBNF
``grammar``); see relkd.teacher.served_answers. Label scores are the log-probabilities the server reports for the
prompt's own tokens (``echo`` with ``logprobs``; vLLM and llama-cpp-python, not llama-server).
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


def structured_choice(server: str, choices: Sequence[str]) -> dict:
    """The request fields that restrict a completion to one of `choices`, in a server's own dialect."""
    if server == "vllm":
        return {"structured_outputs": {"choice": list(choices)}}
    if server == "sglang":
        return {"regex": "(" + "|".join(re.escape(c) for c in choices) + ")"}
    if server == "llama_cpp":
        quoted = " | ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in choices)
        return {"grammar": f"root ::= {quoted}"}
    raise ValueError(f"teacher.http.server {server!r} has no choice constraint; use vllm, sglang or llama_cpp")


def sampling_fields(server: str, top_k: int) -> dict:
    """Sampling fields beyond the OpenAI API's: top-k, and llama.cpp's own defaults (min_p 0.05, repeat_penalty 1.1)
    set back to plain sampling."""
    if server == "llama_cpp":
        return {"top_k": top_k or 0, "min_p": 0.0, "repeat_penalty": 1.0}
    return {"top_k": top_k or -1, **({"include_stop_str_in_output": True} if server == "vllm" else {})}


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
        self.sent = [0] * len(self.clients)  # requests each server was given
        self.lock = threading.Lock()
        self.slots = threading.Semaphore(cfg.concurrency * len(self.clients))

    def call(self, fn):
        """``fn(client)`` on the least busy server; a server that stays unreachable through the client's retries is
        an error naming it."""
        from openai import APIConnectionError

        with self.slots:
            with self.lock:
                i = min(range(len(self.busy)), key=self.busy.__getitem__)
                self.busy[i] += 1
                self.sent[i] += 1
            try:
                return fn(self.clients[i])
            except APIConnectionError as err:
                raise ConnectionError(f"no OpenAI-compatible server answered at {self.clients[i].base_url} "
                                      f"({err}); start it, or fix teacher.http.base_urls. Answers so far are "
                                      "cached: the same command resumes") from err
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
        self.server = engine.cfg.http.server

    def _one(self, r: Request) -> list[Completion]:
        extra = sampling_fields(self.server, r.top_k)
        if r.choice:
            extra.update(structured_choice(self.server, r.choice))
        n = 1 if self.server == "llama_cpp" else r.n  # llama.cpp answers one sample a request
        got = self.engine.fleet.call(lambda c: c.completions.create(
            model=self.name, prompt=r.prompt, n=n, temperature=r.temperature, top_p=r.top_p,
            max_tokens=max(1, r.max_tokens), seed=r.seed, stop=list(r.stop) or None, extra_body=extra))
        out = [self._completion(choice, r.stop) for choice in sorted(got.choices, key=lambda c: c.index)]
        while len(out) < r.n:  # the rest of the samples, one request each, seeded apart
            out += self._one(Request(**{**r.__dict__, "n": 1, "seed": (r.seed + len(out)) % (1 << 31)}))
        return out[:r.n]

    def _completion(self, choice, stop: Sequence[str]) -> Completion:
        """A choice as a Completion: its text with the stop string that ended it (vLLM keeps it in the text; SGLang
        names it in matched_stop), its token count."""
        text, matched = choice.text, None
        if choice.finish_reason == "stop" and stop:
            matched = next((s for s in stop if text.endswith(s)), None)
            said = getattr(choice, "matched_stop", None) or getattr(choice, "stop_reason", None)
            if matched is None and isinstance(said, str) and said in stop:
                text, matched = text + said, said
        tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return Completion(text, tokens, matched, choice.finish_reason == "stop" and matched is None)

    def _complete(self, requests: list[Request]) -> list[list[Completion]]:
        return list(self.engine.pool.map(self._one, requests))

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingConfig, seed: int,
                 labels: Sequence[str] = ()) -> list[list[str]]:
        check_lengths(self.tokenizer(list(prompts))["input_ids"], prompts, self.engine.cfg.max_prompt_tokens)
        return answer(self._complete, prompts, n, sampling, seed, labels, stops=self.server != "llama_cpp")

    def _prompt_logprobs(self, ids: list[int]) -> tuple[list[str], list[float | None]]:
        """(tokens, log-probabilities) the server echoes for the prompt `ids`, the generated token, if listed, after."""
        # Token ids where the server takes them (the exact tokens scored); llama-cpp-python takes text only, which
        # it tokenises with the same vocabulary.
        prompt = self.tokenizer.decode(ids) if self.server == "llama_cpp" else ids
        got = self.engine.fleet.call(lambda c: c.completions.create(
            model=self.name, prompt=prompt, max_tokens=1, temperature=0.0, echo=True, logprobs=0))
        lp = got.choices[0].logprobs
        return list(lp.tokens), list(lp.token_logprobs)

    def score_labels(self, prefixes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        """The summed log-probability of each label's tokens after each prefix, from the log-probabilities the
        server reports for the prompt's own tokens (``echo`` + ``logprobs``)."""
        combos = label_spans(self.tokenizer, prefixes, labels, self.engine.cfg.max_prompt_tokens)
        echoed = list(self.engine.pool.map(lambda c: self._prompt_logprobs(c[0]), combos))
        scores = []
        for (ids, m), (tokens, lp) in zip(combos, echoed):
            # The label's tokens end the echoed prompt, before the generated token when one is listed (an end of
            # sequence is not); found by their text, since a server may tokenise the chat template's special tokens
            # apart (llama-cpp-python echoes fewer tokens than the prompt has).
            want = [self.tokenizer.decode([i]) for i in ids[-m:]]
            end = next((e for e in (len(tokens), len(tokens) - 1) if e >= m and tokens[e - m:e] == want), None)
            if end is None or any(v is None for v in lp[end - m:end]):
                raise RuntimeError(f"the server's echoed prompt does not end with the label's tokens {want} ({self.name}, "
                                   f"got {tokens[-m - 1:]}); label scoring needs echo with logprobs on /v1/completions "
                                   "(vLLM, llama-cpp-python; llama-server ignores echo): set teacher.label_scores "
                                   "false and teacher.label_decision parse")
            scores.append(float(sum(lp[end - m:end])))
        return np.asarray(scores).reshape(len(prefixes), len(labels))
