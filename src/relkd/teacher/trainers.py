"""LoRA SFT and DPO of the teacher on transformers' Trainer, with relkd's prefix-shared forward in compute_loss.

The Trainer brings what a 14B run needs: DDP / FSDP / DeepSpeed from ``accelerate launch`` and its config,
gradient checkpointing and bf16 as flags, a checkpoint every ``save_steps`` steps and ``resume_from_checkpoint``,
and its callbacks (MLflow when a run is active). relkd adds what no library has:

* :class:`PromptGroupSampler`: every batch holds the examples of one prompt (the unified one or one perspective's),
  so their shared instructions and worked examples can run once;
* ``compute_loss`` scores a batch with :func:`relkd.teacher.completions.completion_logits`: the shared prefix's KV
  cache feeds every row (``prefix_sharing``; a CPU step on the embedded catalogue costs 3.6x less than running every
  row whole, as trl does), or every row whole where the engine forbids the cache (gradient checkpointing, FSDP,
  DeepSpeed).

SFT trains a fresh LoRA adapter on prompt-completion examples, loss on the completion only (+ EOS, as trl).

DPO continues that same adapter, and the reference is the SFT model exactly: the log-probabilities of every chosen
and rejected answer under the SFT adapter are computed once before the first step (trl's
``precompute_ref_log_probs``), dropout off (trl's ``disable_dropout``), so at the first step the policy is the
reference (rewards 0, loss log 2). The alternatives were worse: a fresh DPO adapter with the adapter-disabled base as
reference pulls towards the untrained base; merging SFT into the base and stacking a new adapter makes the final
teacher base + merged SFT + adapter (28 GB to save for a 14B teacher), and vLLM serves one LoRA per request.
Continuing the adapter keeps the final teacher a single adapter over the untouched base.

Only rank 0 saves the adapter (and tokenizer), into a temporary folder renamed into place when complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from relkd.teacher import adapters
from relkd.teacher.completions import (
    Row,
    completion_logits,
    completion_logps,
    completion_loss,
    refuse_over_length,
    tokenize_examples,
)
from relkd.teacher.config import DPOSection, SFTSection, TrainerSection

class MetricsCallback(TrainerCallback):
    """Hands the trainer's numeric logs (loss, lr, DPO rewards, ...) to ``log(metrics, step)`` each time the
    trainer logs, on the main process (for a caller's own sink; an active MLflow run gets them anyway)."""

    def __init__(self, log: Callable[[dict, int], object], prefix: str = ""):
        self.log = log
        self.prefix = prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        numeric = {f"{self.prefix}{k}": float(v) for k, v in (logs or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric and state.is_world_process_zero:
            self.log(numeric, state.global_step)


def prompt_batches(groups: Sequence, batch_size: int, seed: int) -> list[list[int]]:
    """One epoch's batches: the positions of each group (examples under one prompt) shuffled and cut into
    batches of `batch_size`, then the batches of all groups shuffled together (seeded)."""
    rng = random.Random(seed)
    by_group: dict = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    batches = []
    for g in sorted(by_group, key=str):
        members = by_group[g]
        rng.shuffle(members)
        batches += [members[k:k + batch_size] for k in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches


class PromptGroupSampler(torch.utils.data.Sampler):
    """A batch sampler whose batches each hold one prompt's examples (:func:`prompt_batches`, seeded by
    ``seed + epoch``). Under DDP, accelerate hands whole batches to the processes in turn, so a batch stays one
    prompt; the Trainer calls ``set_epoch``, so a resumed run draws the same batches as an uninterrupted one."""

    def __init__(self, groups: Sequence, batch_size: int, seed: int):
        self.groups, self.batch_size, self.seed, self.epoch = list(groups), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(prompt_batches(self.groups, self.batch_size, self.seed + self.epoch))

    def __len__(self) -> int:
        sizes: dict = {}
        for g in self.groups:
            sizes[g] = sizes.get(g, 0) + 1
        return sum(math.ceil(n / self.batch_size) for n in sizes.values())


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate(indices: list[int]) -> dict:
    return {"index": list(indices)}


class CompletionTrainer(Trainer):
    """SFT: mean cross-entropy over the completion tokens of a batch of one prompt's examples."""

    extra_keys = ("mean_token_accuracy",)

    def __init__(self, *args, rows: Sequence[Row], groups: Sequence, pad_id: int, prefix_sharing: bool, **kwargs):
        super().__init__(*args, train_dataset=_Items(len(groups)), data_collator=_collate, **kwargs)
        self.rows, self.groups, self.pad_id, self.prefix_sharing = list(rows), list(groups), pad_id, prefix_sharing
        self._extra: dict[str, list[float]] = {}

    def get_train_dataloader(self):
        sampler = PromptGroupSampler(self.groups, self.args.per_device_train_batch_size, self.args.seed)
        loader = torch.utils.data.DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                                             num_workers=self.args.dataloader_num_workers)
        return self.accelerator.prepare(loader)

    def _logits(self, model, rows: Sequence[Row]):
        inner = self.accelerator.unwrap_model(model) if self.prefix_sharing else None
        return completion_logits(model, rows, self.pad_id, self.prefix_sharing, prefix_model=inner)

    def _record(self, values: dict[str, torch.Tensor]) -> None:
        """Batch metrics, averaged over the processes now and over the steps at the next log (as trl does)."""
        for k, v in values.items():
            got = self.accelerator.gather_for_metrics(v.detach().float().reshape(1))
            self._extra.setdefault(k, []).append(got.mean().item())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits, targets = self._logits(model, [self.rows[i] for i in inputs["index"]])
        loss, accuracy = completion_loss(logits, targets)
        self._record({"mean_token_accuracy": accuracy})
        return (loss, logits) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (not the final summary): add the averages since the last one
            logs.update({k: sum(v) / len(v) for k, v in self._extra.items() if v})
            self._extra = {}
        super().log(logs, start_time)


class PreferenceTrainer(CompletionTrainer):
    """DPO (the sigmoid loss of Rafailov et al., trl's default): item i is pair i, rows 2i (chosen) and 2i + 1
    (rejected); ``ref`` holds the reference log-probabilities of every row."""

    extra_keys = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")

    def __init__(self, *args, beta: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.ref: torch.Tensor | None = None

    def pair_rows(self, pairs: Sequence[int]) -> list[Row]:
        """The batch's chosen rows, then its rejected rows (under one prompt, so one shared prefix)."""
        return [self.rows[2 * i + side] for side in (0, 1) for i in pairs]

    def precompute_reference(self, batches: Sequence[Sequence[int]]) -> None:
        """Every answer's log-probability under the model as it is now (the SFT adapter), dropout off; each
        process scores its share of `batches` and all processes get all of them."""
        from accelerate.utils import gather_object

        got: dict[int, float] = {}
        state = self.accelerator.state
        model = self.model.to(self.args.device)
        with torch.no_grad():
            for batch in list(batches)[state.process_index::state.num_processes]:
                logits, targets = completion_logits(model, self.pair_rows(batch), self.pad_id, self.prefix_sharing)
                values = completion_logps(logits, targets).tolist()
                for side in (0, 1):
                    got.update({2 * i + side: v for i, v in zip(batch, values[side * len(batch):])})
        merged = {k: v for part in gather_object([got]) for k, v in part.items()}
        self.ref = torch.tensor([merged[i] for i in range(len(self.rows))], dtype=torch.float32)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pairs = inputs["index"]
        logits, targets = self._logits(model, self.pair_rows(pairs))
        got = completion_logps(logits, targets)
        ref = self.ref.to(got.device)
        n = len(pairs)
        chosen = self.beta * (got[:n] - ref[[2 * i for i in pairs]])
        rejected = self.beta * (got[n:] - ref[[2 * i + 1 for i in pairs]])
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        self._record({"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
                      "rewards/accuracies": (chosen > rejected).float().mean(),
                      "rewards/margins": (chosen - rejected).mean()})
        return (loss, logits) if return_outputs else loss


def warmup_steps(n_batches: int, grad_accum: int, epochs: float, ratio: float) -> int:
    """Warmup as a whole number of optimiser steps, rounded down: transformers reads a float `warmup_steps`
    below 1 as a share of the steps but rounds it up, so a 0.1 warmup on a 1-step run made its only step
    one at learning rate 0 (DPO then changed nothing). Rounded down, a run shorter than 1 / ratio steps
    has no warmup. `grad_accum` counts the batches of one optimiser step over all processes."""
    steps = math.ceil(n_batches / grad_accum * epochs)
    return int(ratio * steps)


def _world_size() -> int:
    """Processes in this run, as the launcher (accelerate launch, torchrun) announced them; read before the
    Trainer sets up accelerate's state, which must first see TrainingArguments' use_cpu."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _distributed_engine() -> str | None:
    """'fsdp' / 'deepspeed' when `accelerate launch` set one up (their sharded modules forbid the prefix pass)."""
    import os

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    return None


def device_flags(cfg: TrainerSection) -> dict:
    """The Trainer flags that depend on the host: CPU or GPU, bf16, gradient checkpointing (None = on with a GPU),
    and whether the prefix-shared forward can run (``prefix_sharing`` None = unless checkpointing, FSDP or
    DeepSpeed forbid the KV cache it needs)."""
    gpu = torch.cuda.is_available()
    checkpointing = gpu if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    bf16 = (gpu and torch.cuda.is_bf16_supported()) if cfg.bf16 is None else cfg.bf16
    blocked = "gradient checkpointing" if checkpointing else _distributed_engine()
    if cfg.prefix_sharing and blocked:
        raise ValueError(f"prefix_sharing = true needs the KV cache in the training forward, which {blocked} "
                         "drops; set prefix_sharing to null (auto) or false")
    sharing = (not blocked) if cfg.prefix_sharing is None else cfg.prefix_sharing
    return {"use_cpu": not gpu, "bf16": bf16, "activation_checkpointing": checkpointing, "prefix_sharing": sharing}


def _report_to() -> list[str]:
    """MLflow when the stage has a run open (only rank 0 has one), else nothing."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        return []
    import mlflow

    return ["mlflow"] if mlflow.active_run() is not None else []


def training_arguments(cfg: TrainerSection, output_dir: str | Path, groups: Sequence, flags: dict) -> TrainingArguments:
    """TrainingArguments from a teacher training section: AdamW with no weight decay and gradients clipped at
    1.0 (the loop this replaced), the section's schedule with whole warmup steps, a checkpoint every
    ``cfg.save_steps`` steps (two kept), MLflow when a run is active."""
    return TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        warmup_steps=warmup_steps(len(PromptGroupSampler(groups, cfg.batch_size, cfg.seed)),
                                  cfg.grad_accum * _world_size(), cfg.epochs, cfg.warmup_ratio),
        seed=cfg.seed, use_cpu=flags["use_cpu"], bf16=flags["bf16"],
        activation_checkpointing=flags["activation_checkpointing"],
        activation_checkpointing_kwargs={"use_reentrant": False} if flags["activation_checkpointing"] else None,
        logging_strategy="epoch" if cfg.logging_steps is None else "steps", logging_steps=cfg.logging_steps or 10,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500, save_total_limit=2,
        report_to=_report_to(), remove_unused_columns=False, dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )


def run_fingerprint(model_path: str, rows: Sequence[Row], groups: Sequence, cfg: TrainerSection, start=None) -> str:
    """A name for one training run's checkpoints: the model, the adapter it starts from, the tokenised data and the
    settings that shape the trajectory, so a resume never continues a run of other data or settings."""
    payload = json.dumps([str(model_path), start, [list(map(int, r[0])) + [r[1]] for r in rows],
                          [str(g) for g in groups], cfg.model_dump(exclude={"logging_steps", "save_steps"})],
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _output_dir(checkpoints: str | Path | None, fingerprint: str):
    """The folder the Trainer writes to: ``checkpoints/<fingerprint>`` (kept: a rerun resumes from it), or a
    temporary one removed afterwards when the run keeps no checkpoints."""
    if checkpoints is None:
        with tempfile.TemporaryDirectory(prefix="relkd-trainer-") as scratch:
            yield Path(scratch)
        return
    run_dir = Path(checkpoints) / fingerprint
    run_dir.mkdir(parents=True, exist_ok=True)
    yield run_dir


def _train_and_check(trainer: CompletionTrainer, cfg: TrainerSection, key: str, out_dir) -> dict:
    """Train (resuming from the newest checkpoint of this run when there is one), prove the adapter moved and
    the loss is finite, save it on rank 0; the run's metrics. `key`: the config section's name (teacher.sft)."""
    stage = key.rsplit(".", 1)[-1].upper()
    last = get_last_checkpoint(trainer.args.output_dir) if cfg.save_steps else None
    before = adapters.trainable_snapshot(trainer.model)
    trainer.train(resume_from_checkpoint=last)
    metrics = {**adapters.train_summary(trainer, len(trainer.groups), type(trainer).extra_keys),
               **adapters.weight_change(before, trainer.model),
               "prefix_sharing": trainer.prefix_sharing, "processes": trainer.accelerator.num_processes,
               "resumed_from_step": int(Path(last).name.rsplit("-", 1)[-1]) if last else 0}
    adapters.require_finite(metrics, stage, cfg.lr, key)
    adapters.require_change(metrics, stage, cfg.lr, key)  # a resumed run too: "before" is the run's start
    if trainer.is_world_process_zero():
        adapters.save_adapter(trainer.model, trainer.processing_class, out_dir)
    trainer.accelerator.wait_for_everyone()
    return metrics


def sft(model_path: str, examples: Sequence[dict], out_dir: str | Path, cfg: SFTSection,
        checkpoints: str | Path | None = None, callbacks: Sequence[TrainerCallback] = ()) -> dict:
    """LoRA SFT on ``[{"prompt": str, "completion": str[, "group": prompt name]}, ...]`` (a batch holds one
    group's examples; see the module docstring); saves the adapter to `out_dir` (rank 0); returns metrics
    (train_loss, first/last logged loss and mean_token_accuracy, steps, how far the adapter moved, ...).
    With `checkpoints`, the Trainer saves every ``cfg.save_steps`` steps under ``checkpoints/<run fingerprint>``
    and a rerun resumes from the newest checkpoint there."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    if not examples:
        raise ValueError("sft() got no examples: the consistency filter kept nothing; check the few-shot "
                         "accuracy, or enable teacher.sft.label_hinted_fallback")
    bad = [i for i, e in enumerate(examples) if not (e.get("prompt") and e.get("completion"))]
    if bad:
        raise ValueError(f"SFT examples {bad[:5]} lack a non-empty 'prompt' or 'completion'")
    flags = device_flags(cfg)
    model, tokenizer = adapters.load_base(model_path)
    refuse_over_length(tokenizer, examples, cfg.max_length, "SFT examples", "teacher.sft")
    rows = tokenize_examples(tokenizer, examples)
    groups = [e.get("group", "") for e in examples]
    set_seed(cfg.seed)  # the LoRA init
    model = get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                             target_modules=cfg.target_modules, bias="none", task_type="CAUSAL_LM"))
    if flags["activation_checkpointing"]:
        model.enable_input_require_grads()  # the frozen embeddings' output must carry a gradient into the checkpoints
    with _output_dir(checkpoints, run_fingerprint(model_path, rows, groups, cfg)) as output_dir:
        trainer = CompletionTrainer(
            model=model, args=training_arguments(cfg, output_dir, groups, flags), rows=rows, groups=groups,
            pad_id=tokenizer.pad_token_id, prefix_sharing=flags["prefix_sharing"], processing_class=tokenizer,
            callbacks=list(callbacks))
        return _train_and_check(trainer, cfg, "teacher.sft", out_dir)


def dpo(model_path: str, sft_adapter: str | Path, pairs: Sequence[dict], out_dir: str | Path, cfg: DPOSection,
        checkpoints: str | Path | None = None, callbacks: Sequence[TrainerCallback] = ()) -> dict:
    """DPO on ``[{"prompt", "chosen", "rejected"[, "group"]}, ...]``, continuing the SFT adapter, the reference
    being the SFT model exactly (see the module docstring); a batch's pairs share one prompt, which runs once for
    its chosen and rejected rows. Saves the adapter to `out_dir`; returns metrics (train_loss, first/last
    rewards/accuracies and rewards/margins, ...); checkpoints and resume as in :func:`sft`."""
    from peft import PeftModel

    if not pairs:
        raise ValueError("dpo() got no preference pairs: the conflict set had no sample with both a correct "
                         "and a wrong rationale; raise teacher.pairs.n_pairs_set or teacher.pairs.k")
    bad = [i for i, p in enumerate(pairs) if not all(p.get(k) for k in ("prompt", "chosen", "rejected"))]
    if bad:
        raise ValueError(f"preference pairs {bad[:5]} lack a non-empty 'prompt', 'chosen' or 'rejected'")
    flags = device_flags(cfg)
    base, tokenizer = adapters.load_base(model_path)
    texts = [{"prompt": p["prompt"], "completion": p[side]} for p in pairs for side in ("chosen", "rejected")]
    refuse_over_length(tokenizer, texts, cfg.max_length, "preference answers", "teacher.dpo")
    rows = tokenize_examples(tokenizer, texts)  # pair i: rows 2i (chosen) and 2i + 1 (rejected)
    model = PeftModel.from_pretrained(base, str(sft_adapter), is_trainable=True)
    adapters.disable_dropout(model)  # the policy equals the reference until the first update
    if flags["activation_checkpointing"]:
        model.enable_input_require_grads()
    groups = [p.get("group", "") for p in pairs]
    fingerprint = run_fingerprint(model_path, rows, groups, cfg, start=adapters.folder_hash(sft_adapter))
    with _output_dir(checkpoints, fingerprint) as output_dir:
        trainer = PreferenceTrainer(
            model=model, args=training_arguments(cfg, output_dir, groups, flags), rows=rows, groups=groups,
            pad_id=tokenizer.pad_token_id, prefix_sharing=flags["prefix_sharing"], processing_class=tokenizer,
            callbacks=list(callbacks), beta=cfg.beta)
        trainer.precompute_reference(prompt_batches(groups, cfg.batch_size, cfg.seed))
        return _train_and_check(trainer, cfg, "teacher.dpo", out_dir)
