"""The GPU check: what relkd claims of a GPU host, run in a few minutes on one GPU with models built from configs.

    python bench/gpu_check.py [--models DIR] [--device cuda|cpu] [--hidden 1024] [--layers 8]

1. Teacher SFT through relkd's Trainer in bf16 with gradient checkpointing (every row whole), then without it
   (the prefix-shared forward): steps, s/step, first and last loss, peak GPU memory of each; the two first losses
   must agree (the same computation).
2. Teacher DPO continuing that adapter (bf16, checkpointing): loss log 2 at the first step, peak memory.
3. The student (tiny BERT) trained on the GPU, exported to ONNX and checked against PyTorch: peak memory, the
   export's largest difference.

The teacher is a Llama built from a config (``--hidden``, ``--layers``) around the tiny:llama tokenizer; nothing is
downloaded. ``--models`` holds the tiny:llama and tiny:bert folders (bench/gpu_check.sh copies them from this
machine's relkd cache, since the GPU host has no PyPI weights). Beyond torch / transformers / peft / accelerate it
needs pydantic, onnx, onnxscript, onnxruntime, pandas, scikit-learn, pyyaml and tqdm (bench/gpu_check.sh lists the
wheels to carry). Results: bench/results/gpu_check.json (and .md); ``--device cpu`` runs the same steps on the CPU
(fp32, no peak memory) to check the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402


def _peak(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 20


def _reset(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def teacher_model(tiny_llama: Path, out: Path, hidden: int, layers: int) -> Path:
    """A Llama of `hidden` x `layers` built from a config with tiny:llama's tokenizer, saved to `out`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    heads = max(1, hidden // 64)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                         intermediate_size=hidden * 3, max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def sft_examples(n: int) -> list[dict]:
    head = ("You judge e-commerce search relevance. Read the query and the product title, think about what the "
            "shopper wants, then answer with one label.\n" * 12)
    labels = ["exact", "substitute", "complement", "irrelevant"]
    return [{"prompt": f"{head}Query: item {i} in blue\nTitle: product {i}, blue, 2 pack\n",
             "completion": f"Reasoning: the title names item {i} in the colour asked for.\nLabel: {labels[i % 4]}",
             "group": f"p{i % 2}"} for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="folder with tiny-llama/ and tiny-bert/ (default: resolve here)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--name", default="gpu_check", help="results file name (bench/results/NAME.json)")
    a = ap.parse_args()

    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the trainers pick the device from what torch sees
    from relkd.models import resolve
    from relkd.teacher.config import DPOSection, SFTSection
    from relkd.teacher.trainers import MetricsCallback, dpo, sft

    models = Path(a.models) if a.models else None
    tiny_llama = models / "tiny-llama" if models else Path(resolve("tiny:llama"))
    tiny_bert = models / "tiny-bert" if models else Path(resolve("tiny:bert"))
    gpu = device == "cuda"
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        teacher = teacher_model(tiny_llama, root / "teacher", a.hidden, a.layers)
        data = sft_examples(a.examples)
        sft_runs = {"SFT bf16 + gradient checkpointing": ("sft_ckpt", dict(gradient_checkpointing=True, bf16=gpu)),
                    "SFT bf16, prefix-shared forward": ("sft_prefix", dict(gradient_checkpointing=False, bf16=gpu))}
        first = {}
        for name, (folder, flags) in sft_runs.items():
            _reset(device)
            logs = []
            cfg = SFTSection(epochs=1, lr=2e-4, batch_size=8, max_length=1024, logging_steps=1, save_steps=None,
                             **flags)
            t = time.perf_counter()
            m = sft(str(teacher), data, root / folder, cfg,
                    callbacks=[MetricsCallback(lambda x, s: logs.append(x))])
            first[name] = m["first_loss"]
            rows.append({"check": name, "prefix_sharing": m["prefix_sharing"], "steps": m["steps"],
                         "s_per_step": m["runtime_s"] / m["steps"], "first_loss": m["first_loss"],
                         "last_loss": m["last_loss"], "peak_gpu_mib": _peak(device),
                         "wall_s": time.perf_counter() - t})
        _reset(device)
        dcfg = DPOSection(epochs=1, batch_size=4, max_length=1024, logging_steps=1, save_steps=None,
                          gradient_checkpointing=True, bf16=gpu)
        pairs = [{"prompt": e["prompt"], "chosen": e["completion"],
                  "rejected": "Reasoning: it is another product.\nLabel: irrelevant"} for e in data[:32]]
        t = time.perf_counter()
        m = dpo(str(teacher), root / "sft_ckpt", pairs, root / "dpo", dcfg)
        rows.append({"check": "DPO bf16 + gradient checkpointing", "prefix_sharing": m["prefix_sharing"],
                     "steps": m["steps"], "s_per_step": m["runtime_s"] / m["steps"], "first_loss": m["first_loss"],
                     "last_loss": m["last_loss"], "peak_gpu_mib": _peak(device), "wall_s": time.perf_counter() - t})
        rows.append(student_check(tiny_bert, root, device))
    agree = abs(first[list(sft_runs)[0]] - first[list(sft_runs)[1]])
    info = {"device": torch.cuda.get_device_name() if gpu else "cpu", "torch": torch.__version__,
            "teacher": f"Llama hidden {a.hidden} x {a.layers} layers (from a config)",
            "sft_first_loss_difference": agree, "dpo_first_loss_is_log2": abs(rows[2]["first_loss"] - 0.6931) < 1e-3}
    report(a.name, rows, ["check", "prefix_sharing", "steps", "s_per_step", "first_loss", "last_loss",
                          "peak_gpu_mib", "wall_s"], info)
    print(json.dumps(info))
    if agree > 0.05 or not info["dpo_first_loss_is_log2"]:
        raise SystemExit(f"GPU check failed: SFT first losses differ by {agree:.4f}, or DPO did not start at log 2")


def student_check(tiny_bert: Path, root: Path, device: str) -> dict:
    """The student trained on the device and exported to ONNX (checked against PyTorch)."""
    import pandas as pd

    from relkd.serving.export import export_onnx
    from relkd.student.config import StudentConfig, VariantConfig
    from relkd.student.model import InferenceWrapper
    from relkd.student.trainer import train_student

    nouns, other = ["shoe", "lamp", "phone", "chair"], ["kettle", "heater"]
    rows = [{"query": f"red {nouns[i % 4]}", "title": f"red {nouns[i % 4] if i % 2 == 0 else other[i % 2]} sale",
             "label": ["match", "mismatch"][i % 2]} for i in range(64)]
    train = pd.DataFrame(rows)
    _reset(device)
    t = time.perf_counter()
    cfg = StudentConfig(backbone=str(tiny_bert), max_length=24, epochs=2, batch_size=16, lexical=False)
    student, tokenizer, history = train_student(train, train.iloc[:16], ("match", "mismatch"), None, None,
                                                VariantConfig(extractor="gat", guidance=False), cfg, seed=7)
    peak = _peak(device)
    check = export_onnx(InferenceWrapper(student.cpu()), tokenizer, root / "student.onnx", cfg.max_length,
                        [(r["query"], r["title"]) for r in rows[:4]])
    return {"check": "student GAT trained, exported to ONNX", "prefix_sharing": None, "steps": len(history),
            "s_per_step": None, "first_loss": history[0]["train_loss"], "last_loss": history[-1]["train_loss"],
            "peak_gpu_mib": peak, "wall_s": time.perf_counter() - t,
            "onnx_max_abs_diff": check["max_abs_diff_logits"]}


if __name__ == "__main__":
    main()
