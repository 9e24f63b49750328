"""The vLLM engine, in-process on a GPU host: one ``LLM`` per process, each adapter a LoRA request of it.

vLLM reserves most of the GPU at start and does not reliably give it back on ``del``, so a process holds one engine
for its whole life: the stages that generate each build one (teacher_eval serves the few-shot, SFT and DPO teachers
from the same engine), and training runs in processes of its own (teacher_sft, teacher_dpo under `accelerate launch`).
Answers stop at their label line and the label is chosen from the label set with vLLM's own stop strings and
structured outputs (relkd.teacher.served_answers).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from relkd.teacher.config import SamplingConfig, TeacherConfig
from relkd.teacher.engine import cache_id, check_lengths, label_spans
from relkd.teacher.served_answers import Completion, Request, answer


class VLLMEngine:
    """One vLLM ``LLM`` over the base model, LoRA enabled up to the SFT adapter's rank."""

    def __init__(self, model_path: str, cfg: TeacherConfig):
        from vllm import LLM

        self.model_path, self.cfg = model_path, cfg
        self.llm = LLM(model=model_path, tensor_parallel_size=cfg.tensor_parallel_size, dtype=cfg.dtype,
                       enable_lora=True, max_lora_rank=max(16, cfg.sft.r), max_model_len=cfg.max_prompt_tokens
                       + cfg.sampling.max_new_tokens, seed=cfg.sampling.seed)
        self.tokenizer = self.llm.get_tokenizer()
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self._loras: dict[str, int] = {}

    def teacher(self, adapter: str | Path | None = None) -> "VLLMTeacher":
        lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            path = str(Path(adapter).resolve())
            rank = json.loads((Path(path) / "adapter_config.json").read_text())["r"]
            if rank > max(16, self.cfg.sft.r):
                raise ValueError(f"adapter {adapter} has LoRA rank {rank}, above the engine's max_lora_rank "
                                 f"{max(16, self.cfg.sft.r)} (teacher.sft.r); raise teacher.sft.r")
            lora_id = self._loras.setdefault(path, len(self._loras) + 1)
            lora = LoRARequest(f"adapter-{lora_id}", lora_id, path)
        return VLLMTeacher(self, lora, cache_id("vllm", self.dtype, self.model_path, adapter))


class VLLMTeacher:
    """The engine's base model with one LoRA adapter (or none)."""

    def __init__(self, engine: VLLMEngine, lora, cache_id_: str):
        self.engine, self.lora, self.cache_id = engine, lora, cache_id_
        self.tokenizer = engine.tokenizer

    def _complete(self, requests: list[Request]) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = [SamplingParams(
            n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k or 0, seed=r.seed, max_tokens=r.max_tokens,
            stop=list(r.stop) or None, include_stop_str_in_output=True,
            structured_outputs=StructuredOutputsParams(choice=list(r.choice)) if r.choice else None)
            for r in requests]
        outs = self.engine.llm.generate([r.prompt for r in requests], params, lora_request=self.lora, use_tqdm=False)
        return [[Completion(c.text, len(c.token_ids), c.stop_reason if isinstance(c.stop_reason, str) else None,
                            c.finish_reason == "stop" and not isinstance(c.stop_reason, str)) for c in o.outputs] for o in outs]

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingConfig, seed: int,
                 labels: Sequence[str] = ()) -> list[list[str]]:
        check_lengths(self.tokenizer(list(prompts))["input_ids"], prompts, self.engine.cfg.max_prompt_tokens)
        return answer(self._complete, prompts, n, sampling, seed, labels)

    def score_labels(self, prefixes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        from vllm import SamplingParams

        combos = label_spans(self.tokenizer, prefixes, labels, self.engine.cfg.max_prompt_tokens)
        params = SamplingParams(max_tokens=1, prompt_logprobs=0)  # the prompt token's own log-prob is always in
        outs = self.engine.llm.generate([{"prompt_token_ids": ids} for ids, _ in combos], params,
                                        lora_request=self.lora, use_tqdm=False)
        scores = [sum(pos[tok].logprob for pos, tok in zip(o.prompt_logprobs[-m:], ids[-m:]))
                  for o, (ids, m) in zip(outs, combos)]
        return np.asarray(scores).reshape(len(prefixes), len(labels))
