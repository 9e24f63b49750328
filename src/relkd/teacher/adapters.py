"""The teacher's LoRA adapters around training: the base they train on, atomic saving, and proof that they moved."""
from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path


def load_base(model_path: str, dtype: str = "auto"):
    """The base causal LM (bfloat16 on a GPU with bf16, float32 otherwise, unless `dtype` names one) and its
    tokenizer (padding with EOS when the model has none), on the device this process trains on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if dtype == "auto":
        gpu = torch.cuda.is_available()
        torch_dtype = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
    return model, tokenizer


def save_adapter(model, tokenizer, out_dir: str | Path) -> None:
    """Write the trained adapter ("default" only: not trl's frozen "ref" copy) and the tokenizer, so a
    half-written folder never sits at `out_dir`."""
    from relkd.io import new_path

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_path(out_dir.parent, f".{out_dir.name}.", ".tmp", directory=True)  # the umask's permissions
    try:
        model.save_pretrained(tmp, selected_adapters=["default"])
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def disable_dropout(model) -> None:
    """Every dropout of `model` off (trl's disable_dropout_in_model): DPO's policy must equal its reference until
    the first update, and the reference log-probabilities are computed once."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def trainable_snapshot(model) -> dict:
    """Copies of the parameters the optimiser updates (the LoRA adapter), to measure how far training moved them."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def weight_change(before: dict, model) -> dict:
    """How far training moved the trainable weights: the L2 norm of the change, relative to the norm
    before, and the share of tensors that changed at all. A stage whose `adapter_delta_norm` is 0 learned
    nothing, whatever its loss says."""
    import torch

    now = dict(model.named_parameters())
    diff = [now[n].detach().float() - p.float() for n, p in before.items()]
    delta = float(torch.sqrt(sum((d.double() ** 2).sum() for d in diff))) if diff else 0.0
    base = float(torch.sqrt(sum((p.double() ** 2).sum() for p in before.values()))) if before else 0.0
    return {"adapter_delta_norm": delta, "adapter_delta_rel": delta / base if base else math.inf if delta else 0.0,
            "adapter_tensors_changed": sum(bool(d.abs().max() > 0) for d in diff) / max(len(diff), 1)}


def require_change(change: dict, stage: str, lr: float, key: str) -> None:
    """Fail loudly when training left the adapter where it started."""
    if not change["adapter_delta_norm"] > 0:
        raise RuntimeError(f"{stage} left the adapter's weights unchanged (learning rate {lr}, "
                           f"{change['adapter_tensors_changed']:.0%} of tensors moved): it learned nothing; "
                           f"check {key}.lr and that warmup leaves at least one step at a non-zero rate")


def require_finite(metrics: dict, stage: str, lr: float, key: str) -> None:
    """Fail loudly on a NaN or infinite training loss."""
    if not math.isfinite(metrics.get("train_loss", math.nan)):
        raise FloatingPointError(f"{stage} loss is {metrics.get('train_loss')}; lower {key}.lr ({lr})")


def summarise(history: Sequence[dict], steps: int, epochs: float, n: int, keys: Sequence[str]) -> dict:
    """What a Trainer run logged (its ``state.log_history``: one dict per logging step, then one holding
    ``train_loss`` and ``train_runtime``), condensed: steps, epochs, train_loss, runtime, and for every key in
    `keys` (plus "loss") its first, last and mean logged value."""
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


def train_summary(trainer, n: int, keys: Sequence[str]) -> dict:
    """:func:`summarise` of a finished Trainer."""
    return summarise(trainer.state.log_history, trainer.state.global_step, trainer.state.epoch, n, keys)


def folder_hash(folder: str | Path) -> str:
    """sha256 (16 hex digits) of a folder's files and their names: which adapter weights a run started from."""
    import hashlib

    root = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
