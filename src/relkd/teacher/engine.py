"""Teacher inference engines: one per process, each adapter (SFT, DPO, final) a teacher it serves.

``make_engine(cfg, model_path)`` loads the engine ``teacher.backend`` names; ``engine.teacher(adapter)`` is the base
model with that LoRA adapter (None: the base alone), with two calls:

* ``generate(prompts, n, sampling, seed, labels=()) -> list[list[str]]``: ``n`` completions per prompt (only the
  new text, ending at the end of the answer's first label line: ``parsing.cut_answer``); greedy when
  ``sampling.temperature == 0`` (then the ``n`` copies are equal). Generation stops once the label line is
  complete, so ``max_new_tokens`` is only a cap for answers that never write one. With ``sampling.label_choice``
  and a label set, the label after the label key is one of `labels`.
* ``score_labels(prefixes, labels) -> np.ndarray``: the summed log-probability of ``" " + label`` after each
  prefix, shape ``(len(prefixes), len(labels))``. A prefix must not end with a space: ``"Label:"`` then
  ``" exact"``, because ``"Label: "`` tokenises its trailing space on its own and no longer lines up with
  the joined text.

and ``tokenizer`` (prompts are built with the model's chat template) and ``cache_id`` (backend, dtype, model and
adapter: what the generation cache keys on, so one engine never reads another's answers).

Engines: ``transformers`` (in-process, CPU or GPU; the reference, relkd.teacher.hf_backend), ``vllm`` (in-process on
a GPU host; adapters are LoRA requests of one engine), ``openai`` (a fleet of OpenAI-compatible servers over HTTP:
``vllm serve``, SGLang, llama.cpp's server; relkd's process owns no GPU).

Reproducibility. The transformers engine seeds each generate batch from ``seed`` and the batch's prompts, so the
same prompts in the same batches give the same samples however the work was split across calls or resumed (the
cache relies on this); the serving engines seed each prompt from ``seed`` and its text.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from relkd.teacher.completions import parting
from relkd.teacher.config import SamplingConfig, TeacherConfig


class Teacher(Protocol):
    tokenizer: object
    cache_id: str

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingConfig, seed: int,
                 labels: Sequence[str] = ()) -> list[list[str]]: ...

    def score_labels(self, prefixes: Sequence[str], labels: Sequence[str]) -> np.ndarray: ...


class Engine(Protocol):
    def teacher(self, adapter: str | Path | None = None) -> Teacher: ...


def label_distribution(scores: np.ndarray) -> np.ndarray:
    """Softmax of label log-likelihoods over the label axis (the last one): each row sums to 1."""
    scores = np.asarray(scores, dtype=np.float64)
    z = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def model_id(model_path: str, adapter_path: str | Path | None = None) -> str:
    """A stable name of the weights that produced an output: the model's name (the folder name for a local
    folder, whose names carry a recipe version) plus the sha256 of the adapter's files."""
    from relkd.teacher.adapters import folder_hash

    name = Path(model_path).name if Path(model_path).is_dir() else str(model_path)
    if adapter_path is None:
        return name
    root = Path(adapter_path)
    if not (root / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{root} is not a peft adapter folder (no adapter_config.json)")
    return f"{name}+adapter:{folder_hash(root)}"


def cache_id(backend: str, dtype: str, model_path: str, adapter_path: str | Path | None = None) -> str:
    """What the generation cache keys an engine's outputs on: backend, weights dtype, model and adapter."""
    return f"{backend}|{dtype}|{model_id(model_path, adapter_path)}"


def stable_seed(seed: int, texts: Sequence[str]) -> int:
    """A 63-bit seed from `seed` and `texts`, the same in every process and run."""
    h = hashlib.sha256(json.dumps([seed, list(texts)], ensure_ascii=False).encode())
    return int.from_bytes(h.digest()[:8], "big") & ((1 << 63) - 1)


def check_lengths(ids: list[list[int]], texts: Sequence[str], limit: int | None) -> list[list[int]]:
    """`ids` unchanged, or an error naming the first prompt over `limit` tokens and the knob."""
    for i, row in enumerate(ids):
        if limit and len(row) > limit:
            raise ValueError(
                f"prompt {i} has {len(row)} tokens, more than max_prompt_tokens={limit} "
                f"(starts {texts[i][:80]!r}); use fewer shots or raise teacher.max_prompt_tokens"
            )
    return ids


def label_spans(tokenizer, prefixes: Sequence[str], labels: Sequence[str],
                limit: int | None) -> list[tuple[list[int], int]]:
    """(token ids of prefix + " " + label, number of label tokens at the end) per prefix, then label."""
    bad = [p for p in prefixes if p.endswith(" ")]
    if bad:
        raise ValueError(f"prefix ends with a space ({bad[0][-40:]!r}); end it without one, the label is "
                         "scored as ' ' + label")
    combos = []
    prefix_ids = check_lengths(tokenizer(list(prefixes))["input_ids"], prefixes, limit)
    for p, pids in zip(prefixes, prefix_ids):
        for f in tokenizer([p + " " + lab for lab in labels])["input_ids"]:
            common = parting(pids, f)
            if common == len(f):
                raise ValueError(f"a label in {list(labels)} tokenises to nothing after prefix {p[-40:]!r}")
            combos.append((f, len(f) - common))
    return combos


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_backend(backend: str) -> str:
    """'auto' -> 'vllm' when vllm is importable and a GPU is visible, else 'transformers'; 'vllm' on a host
    without both is an error that says what to set."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "auto":
        return "vllm" if has_vllm and has_cuda() else "transformers"
    if backend == "vllm" and not (has_vllm and has_cuda()):
        raise RuntimeError(
            f"teacher.backend='vllm' but this host has {'no GPU' if has_vllm else 'no vllm package'}; "
            "set teacher.backend to 'transformers', 'openai' (a served fleet) or 'auto', or install the gpu extra "
            "on a GPU host (pip install 'relkd[gpu]')"
        )
    return backend


def make_engine(cfg: TeacherConfig, model_path: str) -> Engine:
    """The engine `cfg.backend` names, holding `model_path` (one per process: its teachers share it)."""
    backend = resolve_backend(cfg.backend)
    if backend == "vllm":
        from relkd.teacher.vllm_backend import VLLMEngine

        return VLLMEngine(model_path, cfg)
    if backend == "openai":
        from relkd.teacher.openai_backend import OpenAIEngine

        return OpenAIEngine(model_path, cfg)
    from relkd.teacher.hf_backend import TransformersEngine

    return TransformersEngine(model_path, cfg)
