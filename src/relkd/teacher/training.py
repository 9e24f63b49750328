"""LoRA SFT and DPO of the teacher (peft), on CPU or GPU.

Both train with an own loop instead of trl's SFTTrainer / DPOTrainer: the examples of one prompt share hundreds
of tokens of instructions and worked examples and differ in the pair and the answer (tens of tokens each), so a
batch is drawn from one prompt and its shared tokens run once, their KV cache (gradient attached) feeding every
row (:func:`_completion_logits`); trl runs every example's whole prompt, and DPO's twice more (chosen, rejected,
and the reference's pass over both). The losses are the same functions (tests compare the SFT loss and its
gradients with the full-sequence loss, and check DPO's first step against the reference); on the embedded
catalogue an SFT step costs 3.6x less. trl stays for GRPO (teacher/grpo.py), which samples while it trains.

SFT trains a fresh LoRA adapter on prompt-completion examples, loss on the completion only (+ EOS, as trl).

DPO continues training that same adapter, and the reference is the SFT model exactly: the log-probabilities
of every chosen and rejected answer under the SFT adapter are computed once before the first step. The
alternatives were worse: a fresh DPO adapter with the adapter-disabled base as reference would pull towards the
untrained base, not the SFT model; merging SFT into the base and stacking a new DPO adapter on it gives the same
reference, but the final teacher would then be base + merged SFT + adapter, which must either be saved whole
(520 MB here, 28 GB for a 14B teacher) or rebuilt from two adapters, and vLLM serves one LoRA per request.
Continuing the adapter keeps the final teacher a single adapter over the untouched base:
``relkd.teacher.generation.load_teacher(model_path, dpo_adapter)``.

Only the adapter (and tokenizer) is saved, into a temporary folder renamed into place when complete.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import TrainerCallback

from relkd.teacher.config import DPOSection, SFTSection


class MetricsCallback(TrainerCallback):
    """Hands the trainer's numeric logs (loss, lr, DPO rewards, ...) to ``log(metrics, step)`` each time the
    trainer logs (every logging_steps, or at each epoch end); pass ``relkd.tracking.log_metrics``."""

    def __init__(self, log: Callable[[dict, int], object], prefix: str = ""):
        self.log = log
        self.prefix = prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        numeric = {f"{self.prefix}{k}": float(v) for k, v in (logs or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self.log(numeric, state.global_step)


def _device_args(logging_steps: int | None) -> dict:
    """Trainer arguments that differ between a CPU host and a GPU host (trl defaults assume a GPU)."""
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


def _load_base(model_path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gpu = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if gpu else torch.float32)
    return model.to("cuda" if gpu else "cpu"), tokenizer


def _save_adapter(model, tokenizer, out_dir: str | Path) -> None:
    """Write the trained adapter ("default" only: not trl's frozen "ref" copy) and the tokenizer, so a
    half-written folder never sits at `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, selected_adapters=["default"])
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def warmup_steps(n_examples: int, batch_size: int, grad_accum: int, epochs: float, ratio: float) -> int:
    """Warmup as a whole number of optimiser steps, rounded down: transformers reads a float `warmup_steps`
    below 1 as a share of the steps but rounds it up, so a 0.1 warmup on a 1-step run made its only step
    one at learning rate 0 (DPO then changed nothing). Rounded down, a run shorter than 1 / ratio steps
    has no warmup."""
    steps = math.ceil(math.ceil(n_examples / batch_size) / grad_accum * epochs)
    return int(ratio * steps)


def train_summary(trainer, n: int, keys: Sequence[str]) -> dict:
    """What a trl run logged, condensed: steps, epochs, train_loss, runtime, and for every key in `keys`
    (plus "loss") its first, last and mean logged value."""
    return summarise(trainer.state.log_history, trainer.state.global_step, trainer.state.epoch, n, keys)


def summarise(history: Sequence[dict], steps: int, epochs: float, n: int, keys: Sequence[str]) -> dict:
    """:func:`train_summary` of a log history (trl's ``log_history`` layout: one dict per logging step, then
    one holding ``train_loss`` and ``train_runtime``)."""
    out = {"n_examples": n, "steps": steps, "epochs": epochs}
    for h in history:
        if "train_loss" in h:
            out["train_loss"] = h["train_loss"]
            out["runtime_s"] = h.get("train_runtime")
    for k in ("loss", *keys):
        vals = [h[k] for h in history if "train_loss" not in h and isinstance(h.get(k), (int, float))]
        if vals:
            out[f"first_{k}"], out[f"last_{k}"], out[f"mean_{k}"] = vals[0], vals[-1], sum(vals) / len(vals)
    return out


def trainable_snapshot(model) -> dict:
    """Copies of the parameters the optimiser updates (the LoRA adapter), to measure how far training moved them."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def weight_change(before: dict, model) -> dict:
    """How far training moved the trainable weights: the L2 norm of the change, relative to the norm
    before, and the share of tensors that changed at all. A stage whose `adapter_delta_norm` is 0 learned
    nothing, whatever its loss says."""
    import torch

    now = dict(model.named_parameters())
    diff = [now[n].detach() - p for n, p in before.items()]
    delta = float(torch.sqrt(sum((d.double() ** 2).sum() for d in diff))) if diff else 0.0
    base = float(torch.sqrt(sum((p.double() ** 2).sum() for p in before.values()))) if before else 0.0
    return {"adapter_delta_norm": delta, "adapter_delta_rel": delta / base if base else math.inf if delta else 0.0,
            "adapter_tensors_changed": sum(bool(d.abs().max() > 0) for d in diff) / max(len(diff), 1)}


def _require_change(change: dict, stage: str, lr: float, key: str) -> None:
    if not change["adapter_delta_norm"] > 0:
        raise RuntimeError(f"{stage} left the adapter's weights unchanged (learning rate {lr}, "
                           f"{change['adapter_tensors_changed']:.0%} of tensors moved): it learned nothing; "
                           f"check {key}.lr and that warmup leaves at least one step at a non-zero rate")


def over_length(tokenizer, examples: Sequence[dict], max_length: int) -> list[int]:
    """Positions of the examples whose prompt + completion is over `max_length` tokens: SFT would cut them
    before their label line (the answer format it teaches)."""
    return [i for i, e in enumerate(examples)
            if len(tokenizer(e["prompt"] + e["completion"])["input_ids"]) > max_length]


def tokenize_examples(tokenizer, examples: Sequence[dict]) -> list[tuple[list[int], int]]:
    """(token ids of prompt + completion + EOS, where the completion starts) per example, as trl tokenises a
    prompt-completion pair: the completion starts where the prompt's own tokenisation and the whole one part."""
    from relkd.teacher.generation import _parting

    out = []
    for e in examples:
        prompt = tokenizer(e["prompt"])["input_ids"]
        full = tokenizer(e["prompt"] + e["completion"] + tokenizer.eos_token)["input_ids"]
        out.append((full, _parting(prompt, full)))
    return out


def prompt_batches(groups: Sequence, batch_size: int, seed: int) -> list[list[int]]:
    """One epoch's batches: the positions of each group (examples under one prompt) shuffled and cut into
    batches of `batch_size`, then the batches of all groups shuffled together (seeded)."""
    import random

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


def _completion_logits(model, rows: Sequence[tuple[Sequence[int], int]], pad_id: int):
    """(logits, targets) over the completion positions of `rows` ((ids, completion start) each): logits
    (rows, K, vocab) float32 and targets (rows, K), -100 where a position predicts no completion token.

    The rows' common prefix (within their prompts) runs once; its KV cache, gradient attached, is repeated
    for every row, and each row's own tokens follow it left-padded (``[prefix][padding][own tokens]``,
    positions from the mask), as the teacher is asked at inference. Only the completion positions are
    projected onto the vocabulary."""
    import torch

    from relkd.teacher.generation import shared_prefix

    ids = [list(r[0]) for r in rows]
    shared = min(shared_prefix(ids), min(start for _, start in rows) - 1)
    device = next(model.parameters()).device
    if shared > 0:
        cache = model(input_ids=torch.tensor([ids[0][:shared]], device=device), use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(rows))
    else:
        from transformers import DynamicCache

        shared, cache = 0, DynamicCache()
    own = [r[shared:] for r in ids]
    width = max(len(o) for o in own)
    keep = max(len(r) - start for r, (_, start) in zip(ids, rows)) + 1  # the last prompt token and the completion
    input_ids = torch.tensor([[pad_id] * (width - len(o)) + o for o in own], device=device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(o)) + [1] * len(o) for o in own], device=device)
    targets = torch.full((len(rows), keep), -100, dtype=torch.long, device=device)
    for i, (r, (_, start)) in enumerate(zip(ids, rows)):
        n = len(r) - start  # completion tokens, the last `n` of the row, each predicted one position earlier
        targets[i, keep - 1 - n:keep - 1] = torch.tensor(r[start:], device=device)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, shared:],
                   past_key_values=cache, use_cache=True, logits_to_keep=keep).logits.float()
    return logits, targets


def shared_prefix_loss(model, rows: Sequence[tuple[Sequence[int], int]], pad_id: int):
    """Mean cross-entropy over the completion tokens of `rows` ((ids, completion start) each), and the share of
    them the model's argmax gets right (:func:`_completion_logits`: the shared prefix runs once)."""
    import torch

    logits, targets = _completion_logits(model, rows, pad_id)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100)
    scored = targets != -100
    return loss, (logits.argmax(-1)[scored] == targets[scored]).float().mean()


def completion_logps(model, rows: Sequence[tuple[Sequence[int], int]], pad_id: int):
    """The summed log-probability of each row's completion tokens, shape (rows,) (the shared prefix runs once)."""
    import torch

    logits, targets = _completion_logits(model, rows, pad_id)
    scored = targets != -100
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (logp * scored).sum(-1)


def _train_loop(model, plan: Sequence[Sequence[Sequence[int]]], cfg, n_examples: int, batch_step: Callable,
                desc: str, log: Callable[[dict, int], object] | None) -> tuple[list[dict], int]:
    """AdamW over the LoRA weights (transformers' defaults: no weight decay, gradients clipped at 1.0), the
    `cfg.lr_scheduler` schedule with whole warmup steps, `cfg.grad_accum` batches a step. ``plan`` holds each
    epoch's batches (positions); ``batch_step(batch) -> (loss, {name: float})``. Every ``cfg.logging_steps``
    steps (or at each epoch's end) the named values are averaged into one history entry (with learning_rate
    and epoch) and handed to ``log(entry, step)``. Returns (history + a last entry with train_loss and
    train_runtime, optimiser steps), trl's log_history layout."""
    import time

    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    n_batches = sum(len(p) for p in plan)
    steps = math.ceil(n_batches / cfg.grad_accum)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_training_steps=steps, num_warmup_steps=warmup_steps(
        n_examples, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.warmup_ratio))
    history, window, losses, step, seen, started = [], [], [], 0, 0, time.time()
    with tqdm(total=steps, desc=desc, unit="step") as bar:
        for epoch, batches in enumerate(plan):
            for k, batch in enumerate(batches):
                loss, values = batch_step(batch)
                (loss / cfg.grad_accum).backward()
                window.append(values)
                losses.append(values["loss"])
                seen += 1
                if seen % cfg.grad_accum and seen != n_batches:
                    continue
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.3f}")
                if (step % cfg.logging_steps == 0) if cfg.logging_steps else k == len(batches) - 1:
                    entry = {key: sum(w[key] for w in window) / len(window) for key in window[0]}
                    entry.update(learning_rate=scheduler.get_last_lr()[0], epoch=epoch + (k + 1) / len(batches))
                    history.append(entry)
                    window = []
                    if log is not None:
                        log(entry, step)
    history.append({"train_loss": sum(losses) / len(losses), "train_runtime": time.time() - started})
    return history, step


def _epoch_plan(groups: Sequence, batch_size: int, epochs: float, seed: int) -> list[list[list[int]]]:
    """Each epoch's batches (:func:`prompt_batches`, reshuffled per epoch); a fractional last epoch keeps the
    first share of its batches."""
    whole = math.ceil(epochs)
    plan = [prompt_batches(groups, batch_size, seed + e) for e in range(whole)]
    if epochs != whole:
        plan[-1] = plan[-1][:math.ceil(len(plan[-1]) * (epochs - whole + 1))]
    return plan


def _refuse_over_length(tokenizer, texts: Sequence[dict], max_length: int, what: str, key: str) -> None:
    cut = over_length(tokenizer, texts, max_length)
    if cut:
        longest = max(len(tokenizer(texts[i]["prompt"] + texts[i]["completion"])["input_ids"]) for i in cut)
        raise ValueError(f"{len(cut)} of {len(texts)} {what} are longer than {key}.max_length = {max_length} "
                         f"tokens (longest {longest}): their answers, label line last, would be cut; leave them "
                         f"out (over_length), raise {key}.max_length or shorten the prompt")


def sft(model_path: str, examples: Sequence[dict], out_dir: str | Path, cfg: SFTSection,
        log: Callable[[dict, int], object] | None = None) -> dict:
    """LoRA SFT on ``[{"prompt": str, "completion": str[, "group": prompt name]}, ...]`` (a batch holds one
    group's examples; see the module docstring); saves the adapter to `out_dir`; returns metrics (train_loss,
    first/last logged loss and mean_token_accuracy, steps, how far the adapter moved, ...). ``log(metrics,
    step)`` gets loss, mean_token_accuracy, learning_rate and epoch every ``cfg.logging_steps`` steps (or
    once per epoch)."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    if not examples:
        raise ValueError("sft() got no examples: the consistency filter kept nothing; check the few-shot "
                         "accuracy, or enable teacher.sft.label_hinted_fallback")
    bad = [i for i, e in enumerate(examples) if not (e.get("prompt") and e.get("completion"))]
    if bad:
        raise ValueError(f"SFT examples {bad[:5]} lack a non-empty 'prompt' or 'completion'")
    model, tokenizer = _load_base(model_path)
    _refuse_over_length(tokenizer, examples, cfg.max_length, "SFT examples", "teacher.sft")
    rows = tokenize_examples(tokenizer, examples)
    set_seed(cfg.seed)  # the LoRA init
    model = get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                             target_modules=cfg.target_modules, bias="none", task_type="CAUSAL_LM"))
    model.train()

    def batch_step(batch):
        loss, accuracy = shared_prefix_loss(model, [rows[i] for i in batch], tokenizer.pad_token_id)
        return loss, {"loss": loss.item(), "mean_token_accuracy": accuracy.item()}

    before = trainable_snapshot(model)
    plan = _epoch_plan([e.get("group", "") for e in examples], cfg.batch_size, cfg.epochs, cfg.seed)
    history, steps = _train_loop(model, plan, cfg, len(examples), batch_step, "SFT", log)
    metrics = {**summarise(history, steps, cfg.epochs, len(examples), ("mean_token_accuracy",)),
               **weight_change(before, model)}
    if not math.isfinite(metrics.get("train_loss", math.nan)):
        raise FloatingPointError(f"SFT loss is {metrics.get('train_loss')}; lower teacher.sft.lr ({cfg.lr})")
    _require_change(metrics, "SFT", cfg.lr, "teacher.sft")
    _save_adapter(model, tokenizer, out_dir)
    return metrics


DPO_KEYS = ("rewards/accuracies", "rewards/margins", "rewards/chosen")


def dpo(model_path: str, sft_adapter: str | Path, pairs: Sequence[dict], out_dir: str | Path, cfg: DPOSection,
        log: Callable[[dict, int], object] | None = None) -> dict:
    """DPO (the sigmoid loss of Rafailov et al., trl's default) on ``[{"prompt", "chosen", "rejected"}, ...]``,
    continuing the SFT adapter; the reference is the SFT model exactly: its log-probabilities of every chosen
    and rejected answer are computed once before the first step, with the adapter as loaded. Dropout is off
    (trl's ``disable_dropout``), so at the first step the policy is the reference (rewards 0, loss log 2).
    A batch's pairs share the unified prompt, which runs once for its chosen and rejected rows. Saves the
    adapter to `out_dir`; returns metrics (train_loss, first/last rewards/accuracies and rewards/margins, ...);
    ``log(metrics, step)`` as in :func:`sft`, with trl's names (rewards/chosen, rewards/rejected, ...)."""
    import torch
    from peft import PeftModel
    from transformers import set_seed

    if not pairs:
        raise ValueError("dpo() got no preference pairs: the conflict set had no sample with both a correct "
                         "and a wrong rationale; raise teacher.pairs.n_pairs_set or teacher.pairs.k")
    bad = [i for i, p in enumerate(pairs) if not all(p.get(k) for k in ("prompt", "chosen", "rejected"))]
    if bad:
        raise ValueError(f"preference pairs {bad[:5]} lack a non-empty 'prompt', 'chosen' or 'rejected'")
    base, tokenizer = _load_base(model_path)
    texts = [{"prompt": p["prompt"], "completion": p[side]} for p in pairs for side in ("chosen", "rejected")]
    _refuse_over_length(tokenizer, texts, cfg.max_length, "preference answers", "teacher.dpo")
    rows = tokenize_examples(tokenizer, texts)  # pair i: rows 2i (chosen) and 2i + 1 (rejected)
    model = PeftModel.from_pretrained(base, str(sft_adapter), is_trainable=True)
    model.eval()  # no dropout: the policy equals the reference until the first update
    plan = _epoch_plan([""] * len(pairs), cfg.batch_size, cfg.epochs, cfg.seed)
    pad = tokenizer.pad_token_id

    def logps(batch):
        return completion_logps(model, [rows[2 * i + side] for side in (0, 1) for i in batch], pad)

    with torch.no_grad():
        ref = torch.zeros(2 * len(pairs))
        for batch in plan[0]:
            got = logps(batch)
            ref[[2 * i for i in batch]], ref[[2 * i + 1 for i in batch]] = got[:len(batch)], got[len(batch):]

    def batch_step(batch):
        got = logps(batch)
        chosen = cfg.beta * (got[:len(batch)] - ref[[2 * i for i in batch]])
        rejected = cfg.beta * (got[len(batch):] - ref[[2 * i + 1 for i in batch]])
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        return loss, {"loss": loss.item(), "rewards/chosen": chosen.mean().item(),
                      "rewards/rejected": rejected.mean().item(),
                      "rewards/accuracies": (chosen > rejected).float().mean().item(),
                      "rewards/margins": (chosen - rejected).mean().item()}

    set_seed(cfg.seed)
    before = trainable_snapshot(model)
    history, steps = _train_loop(model, plan, cfg, len(pairs), batch_step, "DPO", log)
    metrics = {**summarise(history, steps, cfg.epochs, len(pairs), DPO_KEYS), **weight_change(before, model)}
    if not math.isfinite(metrics.get("train_loss", math.nan)):
        raise FloatingPointError(f"DPO loss is {metrics.get('train_loss')}; lower teacher.dpo.lr ({cfg.lr})")
    _require_change(metrics, "DPO", cfg.lr, "teacher.dpo")
    _save_adapter(model, tokenizer, out_dir)
    return metrics
