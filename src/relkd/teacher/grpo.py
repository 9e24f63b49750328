"""TaoSR1's third stage: difficulty-based dynamic sampling, then GRPO with rule rewards on the teacher.

Dynamic sampling. The current teacher answers each probed pair k times; a pair's pass rate is the share
of its answers whose parsed label is the gold one. Pairs it always gets right (pass rate 1) give every
completion in a GRPO group the same reward, hence zero advantage and no gradient; pairs it never gets
right (0) give no signal either and mostly teach noise. Only pairs strictly between 0 and 1 are kept.

Rewards (trl's reward-function signature: ``f(prompts, completions, **columns) -> list[float]``):

* ``correctness_reward``: 1.0 when ``parse(completion, labels).label`` equals the row's ``gold``, else 0.0
  (an unparseable answer is wrong, never guessed: the discriminative-hallucination check).
* ``format_reward``: ``weight`` when the answer follows the grammar (a non-empty rationale and a label
  line naming exactly one class), else 0.0.

GRPO continues the DPO LoRA adapter. With ``beta > 0`` and a PeftModel that already carries a trained
adapter, trl 1.16 copies it into a frozen "ref" adapter (``grpo_trainer.py``: ``model.add_adapter("ref",
...)``), so the KL term pulls towards the DPO teacher, not the base; only the "default" adapter is saved.
"""
from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

from transformers import TrainerCallback

from relkd.teacher.config import GRPOSection, SamplingConfig
from relkd.teacher.parsing import parse

REWARD_KEYS = ("reward", "reward_std", "rewards/correctness_reward/mean", "rewards/format_reward/mean",
               "frac_reward_zero_std", "kl")


def _text(completion) -> str:
    """A completion as text: trl passes strings for plain prompts, message lists for conversational ones."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")


def correctness_reward(prompts, completions, gold, labels: Sequence[str], **_) -> list[float]:
    """1.0 per completion whose parsed label equals the row's gold label, else 0.0."""
    return [1.0 if parse(_text(c), labels).label == g else 0.0 for c, g in zip(completions, gold, strict=True)]


def format_reward(prompts, completions, labels: Sequence[str], weight: float = 0.5, **_) -> list[float]:
    """`weight` per completion with a non-empty rationale and a parseable label line, else 0.0."""
    out = []
    for c in completions:
        a = parse(_text(c), labels)
        out.append(weight if a.label is not None and a.rationale else 0.0)
    return out


def make_rewards(labels: Sequence[str], format_weight: float = 0.5) -> list:
    """The two reward functions bound to the dataset's label set (partials keep trl's logged names:
    ``rewards/correctness_reward/mean``, ``rewards/format_reward/mean``)."""
    labels = tuple(labels)
    return [functools.partial(correctness_reward, labels=labels),
            functools.partial(format_reward, labels=labels, weight=format_weight)]


def pass_rates(records: Iterable[dict], key: str = "parsed_label") -> dict[Hashable, float]:
    """Per pair, the share of its judge() records whose `key` equals its gold label (the parsed label by
    default: the same rule as correctness_reward, so an unparseable answer counts as wrong)."""
    hits: dict[Hashable, list[int]] = {}
    for r in records:
        hits.setdefault(r["pair_id"], []).append(int(r[key] is not None and r[key] == r["gold"]))
    return {pid: sum(h) / len(h) for pid, h in hits.items()}


def dynamic_sample(rates: dict[Hashable, float]) -> list[Hashable]:
    """The pair ids whose pass rate is strictly between 0 and 1 (neither too easy nor hopeless), in the
    order of `rates`."""
    return [pid for pid, r in rates.items() if 0.0 < r < 1.0]


def _device_args(logging_steps: int | None) -> dict:
    """GRPOConfig arguments that differ between a CPU host and a GPU host (trl's defaults assume a GPU)."""
    import torch

    gpu = torch.cuda.is_available()
    return dict(
        use_cpu=not gpu,
        bf16=gpu and torch.cuda.is_bf16_supported(),
        activation_checkpointing=gpu,  # the new name of gradient_checkpointing (trl defaults it on)
        report_to="none",
        save_strategy="no",
        logging_strategy="epoch" if logging_steps is None else "steps",
        logging_steps=logging_steps or 10,
        dataloader_num_workers=0,
    )


def grpo(model_path: str, adapter: str | Path, examples: Sequence[dict], labels: Sequence[str],
         out_dir: str | Path, cfg: GRPOSection, sampling: SamplingConfig = SamplingConfig(),
         callbacks: Sequence[TrainerCallback] = ()) -> dict:
    """GRPO on ``[{"prompt": str, "gold": label}, ...]`` continuing the LoRA `adapter` (see the module
    docstring); rollouts sample with `sampling` (temperature, top_p, top_k; max_new_tokens is the
    completion budget). Saves the adapter (+ tokenizer) to `out_dir`; returns metrics (steps,
    train_loss, first/last/mean reward and per-function reward means, KL)."""
    if not examples:
        raise ValueError("grpo() got no examples: dynamic sampling kept no pair (every probed pair was always or "
                         "never right); raise teacher.grpo.n_pairs or teacher.grpo.k")
    bad = [i for i, e in enumerate(examples) if not e.get("prompt") or e.get("gold") not in labels]
    if bad:
        raise ValueError(f"GRPO examples {bad[:5]} lack a non-empty 'prompt' or a 'gold' label in {list(labels)}")
    if sampling.temperature <= 0:
        raise ValueError("GRPO needs sampled rollouts (a group of equal greedy answers has no advantage); "
                         f"teacher.sampling.temperature is {sampling.temperature}, set it > 0")
    from datasets import Dataset
    from peft import PeftModel
    from transformers import set_seed
    from trl import GRPOConfig, GRPOTrainer

    from relkd.teacher.adapters import load_base, save_adapter, train_summary

    base, tokenizer = load_base(model_path)
    model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    data = Dataset.from_list([{"prompt": e["prompt"], "gold": e["gold"]} for e in examples])
    with tempfile.TemporaryDirectory(prefix="relkd-grpo-") as scratch:
        args = GRPOConfig(
            output_dir=scratch,
            max_steps=cfg.max_steps if cfg.max_steps is not None else -1, num_train_epochs=cfg.epochs,
            learning_rate=cfg.lr, beta=cfg.beta, num_generations=cfg.num_generations,
            # trl counts the batch in completions: whole groups of num_generations per prompt.
            per_device_train_batch_size=cfg.batch_size * cfg.num_generations,
            gradient_accumulation_steps=cfg.grad_accum,
            max_completion_length=sampling.max_new_tokens,
            temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            seed=cfg.seed, **_device_args(cfg.logging_steps),
        )
        set_seed(cfg.seed)
        trainer = GRPOTrainer(model=model, reward_funcs=make_rewards(labels, cfg.format_weight), args=args,
                              train_dataset=data, processing_class=tokenizer, callbacks=list(callbacks))
        if cfg.beta > 0 and "ref" not in trainer.model.peft_config:
            raise RuntimeError("trl did not add the frozen 'ref' adapter, so the GRPO reference would be the base "
                               "model, not the DPO teacher; check the trl/peft versions (trl 1.16, peft>=0.20)")
        trainer.train()
    metrics = train_summary(trainer, len(examples), REWARD_KEYS)
    if not math.isfinite(metrics.get("train_loss", math.nan)):
        raise FloatingPointError(f"GRPO loss is {metrics.get('train_loss')}; lower teacher.grpo.lr ({cfg.lr})")
    save_adapter(trainer.model, tokenizer, out_dir)
    return metrics
