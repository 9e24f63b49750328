"""Teacher SFT and DPO steps: transformers' Trainer (relkd.teacher.trainers) versus the own loop it replaced (git
88cee54), on the embedded teacher, the same examples and settings, alternating which runs first.

    python bench/teacher_trainer.py [--model pypi:SmolLM2-135M-Instruct] [--examples 48] [--pairs 24] [--repeats 2]

The examples are built as teacher_sft_data builds them (embedded catalogue pairs, 40% under a perspective prompt
with its shots, the rest under the unified prompt; a label-hinted-length rationale and the label line). The old loop
is read from git (``--reference``) into a temporary module, so the comparison needs no copy of it in the tree.
Both run with LoRA dropout 0, so the final adapters must be equal (max |difference| is reported): the speed
comparison is between two implementations of the same computation.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def reference_module(commit: str, folder: Path):
    """The old relkd.teacher.training (and the generation helpers it used) at `commit`, importable as ref_training."""
    import importlib

    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout

    (folder / "ref_generation.py").write_text(show("src/relkd/teacher/generation.py"))
    (folder / "ref_training.py").write_text(show("src/relkd/teacher/training.py").replace(
        "from relkd.teacher.generation import", "from ref_generation import"))
    sys.path.insert(0, str(folder))
    return importlib.import_module("ref_training")


def examples(n: int, tokenizer) -> list[dict]:
    from relkd.data.catalogue import LABELS, generate_catalogue
    from relkd.data.config import CatalogueConfig
    from relkd.teacher.prompts import UNIFIED, draw_shots, load_perspective, load_perspectives
    from relkd.teacher.sft_data import posed, prompt_names

    pairs = generate_catalogue(CatalogueConfig(n_queries=n, pairs_per_query=1), seed=7)
    shots = draw_shots(generate_catalogue(CatalogueConfig(n_queries=8, pairs_per_query=1), seed=8), 1, 1)
    prompts = {UNIFIED: load_perspective(ROOT / "prompts" / f"{UNIFIED}.yaml"), **load_perspectives(ROOT / "prompts")}
    rationale = ("The query asks for a product of one brand and model; the title names the same category with "
                 "other attributes, so the shopper's need is only partly met.")
    train = pairs.set_index("pair_id", drop=False)
    chosen = [{"pair_id": p, "rationale": rationale, "label": y, "source": "label_hinted"}
              for p, y in zip(pairs["pair_id"], pairs["label"])]
    data = posed(tokenizer, chosen, train, prompts, LABELS, shots, prompt_names(len(chosen), None, 0.4, 13))
    return [{"prompt": d["prompt"], "completion": d["completion"], "group": d["group"]} for d in data]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pypi:SmolLM2-135M-Instruct")
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=24, help="DPO preference pairs (the embedded run has 22)")
    ap.add_argument("--reference", default="88cee54", help="git commit of the own loop")
    ap.add_argument("--name", default="teacher_trainer", help="results file name (bench/results/NAME.json)")
    a = ap.parse_args()

    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from relkd.models import resolve
    from relkd.teacher import trainers
    from relkd.teacher.config import DPOSection, SFTSection

    model = resolve(a.model)
    data = examples(a.examples, AutoTokenizer.from_pretrained(model))
    cfg = SFTSection(epochs=1, dropout=0.0, max_length=512, save_steps=None)  # the embedded recipe, no dropout
    rows, adapters = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        old = reference_module(a.reference, Path(scratch))
        runs = {"own loop (88cee54)": lambda out: old.sft(model, data, out, cfg),
                "transformers Trainer": lambda out: trainers.sft(model, data, out, cfg)}
        def timed(stage, name, r, call, out):
            t, cpu = time.perf_counter(), time.process_time()
            metrics = call(out)
            wall, cpu = time.perf_counter() - t, time.process_time() - cpu
            adapters[stage, name] = load_file(str(out / "adapter_model.safetensors"))
            rows.append({"stage": stage, "implementation": name, "repeat": r, "steps": metrics["steps"],
                         "train_s": metrics["runtime_s"], "s_per_step": metrics["runtime_s"] / metrics["steps"],
                         "wall_s": wall, "cpu_s": cpu, "cpu_s_per_step": cpu / metrics["steps"]})

        for r in range(a.repeats):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                timed("SFT", name, r, runs[name], Path(scratch) / f"{r}-{name[:3]}")
        # DPO continues one SFT adapter (the Trainer's, first repeat) on pairs of one prompt's answers: the chosen is
        # the example's answer, the rejected the next example's (another rationale and label), as teacher_pairs poses.
        sft_adapter = Path(scratch) / "0-tra"
        pairs = [{"prompt": d["prompt"], "chosen": d["completion"], "rejected": data[(i + 1) % len(data)]["completion"],
                  "group": d["group"]} for i, d in enumerate(data)
                 if data[(i + 1) % len(data)]["completion"] != d["completion"]][:a.pairs]
        dcfg = DPOSection(epochs=1, max_length=512, save_steps=None)
        druns = {"own loop (88cee54)": lambda out: old.dpo(model, sft_adapter, pairs, out, dcfg),
                 "transformers Trainer": lambda out: trainers.dpo(model, sft_adapter, pairs, out, dcfg)}
        for r in range(a.repeats):
            for name in (list(druns) if r % 2 == 0 else list(druns)[::-1]):
                timed("DPO", name, r, druns[name], Path(scratch) / f"dpo-{r}-{name[:3]}")
    # CPU seconds (all the process's threads) measure the work whatever else the machine runs; wall seconds too.
    summary = {}
    for stage in ("SFT", "DPO"):
        def mean(key, impl, stage=stage):
            return sum(x[key] for x in rows if (x["stage"], x["implementation"]) == (stage, impl)) / a.repeats

        new, ref = "transformers Trainer", "own loop (88cee54)"
        a_old, a_new = adapters[stage, ref], adapters[stage, new]
        summary[stage] = {
            "trainer_over_loop_cpu_per_step": mean("cpu_s_per_step", new) / mean("cpu_s_per_step", ref),
            "trainer_over_loop_wall_per_step": mean("s_per_step", new) / mean("s_per_step", ref),
            "trainer_over_loop_whole_call_wall": mean("wall_s", new) / mean("wall_s", ref),
            "adapter_max_abs_diff": max((a_old[k] - a_new[k]).abs().max().item() for k in a_old)}
        print(f"{stage}: Trainer / own loop per step: CPU {summary[stage]['trainer_over_loop_cpu_per_step']:.3f}, "
              f"wall {summary[stage]['trainer_over_loop_wall_per_step']:.3f}; whole call (loading, reference "
              f"log-probabilities, saving) {summary[stage]['trainer_over_loop_whole_call_wall']:.3f}; final adapters "
              f"differ by at most {summary[stage]['adapter_max_abs_diff']:.2e}")
    report(a.name, rows, ["stage", "implementation", "repeat", "steps", "train_s", "s_per_step", "cpu_s_per_step",
                          "wall_s"],
           {"model": a.model, "examples": len(data), "pairs": len(pairs), "sft_batch_size": cfg.batch_size,
            "dpo_batch_size": dcfg.batch_size, "reference": a.reference, **summary,
            "threads": torch.get_num_threads(), "load_average": os.getloadavg()})


if __name__ == "__main__":
    main()
