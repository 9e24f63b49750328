"""Teacher SFT step: transformers' Trainer (relkd.teacher.trainers) versus the own loop it replaced (git 88cee54),
on the embedded teacher, the same examples and settings, alternating which runs first.

    python bench/teacher_trainer.py [--model pypi:SmolLM2-135M-Instruct] [--examples 48] [--repeats 2]

The examples are built as teacher_sft_data builds them (embedded catalogue pairs, 40% under a perspective prompt
with its shots, the rest under the unified prompt; a label-hinted-length rationale and the label line). The old loop
is read from git (``--reference``) into a temporary module, so the comparison needs no copy of it in the tree.
Both run with LoRA dropout 0, so the final adapters must be equal (max |difference| is reported): the speed
comparison is between two implementations of the same computation.
"""
from __future__ import annotations

import argparse
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
    from relkd.teacher.sft_data import posed

    pairs = generate_catalogue(CatalogueConfig(n_queries=n, pairs_per_query=1), seed=7)
    shots = draw_shots(generate_catalogue(CatalogueConfig(n_queries=8, pairs_per_query=1), seed=8), 1, 1)
    prompts = {UNIFIED: load_perspective(ROOT / "prompts" / f"{UNIFIED}.yaml"), **load_perspectives(ROOT / "prompts")}
    rationale = ("The query asks for a product of one brand and model; the title names the same category with "
                 "other attributes, so the shopper's need is only partly met.")
    train = pairs.set_index("pair_id", drop=False)
    chosen = [{"pair_id": p, "rationale": rationale, "label": y, "source": "label_hinted"}
              for p, y in zip(pairs["pair_id"], pairs["label"])]
    data = posed(tokenizer, chosen, train, prompts, LABELS, shots, 0.4, 13)
    return [{"prompt": d["prompt"], "completion": d["completion"], "group": d["group"]} for d in data]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pypi:SmolLM2-135M-Instruct")
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--reference", default="88cee54", help="git commit of the own loop")
    ap.add_argument("--name", default="teacher_trainer", help="results file name (bench/results/NAME.json)")
    a = ap.parse_args()

    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from relkd.models import resolve
    from relkd.teacher import trainers
    from relkd.teacher.config import SFTSection

    model = resolve(a.model)
    data = examples(a.examples, AutoTokenizer.from_pretrained(model))
    cfg = SFTSection(epochs=1, dropout=0.0, max_length=512, save_steps=None)  # the embedded recipe, no dropout
    rows, adapters = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        old = reference_module(a.reference, Path(scratch))
        runs = {"own loop (88cee54)": lambda out: old.sft(model, data, out, cfg),
                "transformers Trainer": lambda out: trainers.sft(model, data, out, cfg)}
        for r in range(a.repeats):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                out = Path(scratch) / f"{r}-{name[:3]}"
                t = time.perf_counter()
                metrics = runs[name](out)
                wall = time.perf_counter() - t
                adapters[name] = load_file(str(out / "adapter_model.safetensors"))
                rows.append({"implementation": name, "repeat": r, "steps": metrics["steps"],
                             "train_s": metrics["runtime_s"], "s_per_step": metrics["runtime_s"] / metrics["steps"],
                             "wall_s": wall})
    mean = {n: sum(x["s_per_step"] for x in rows if x["implementation"] == n) / a.repeats for n in runs}
    new, ref = mean["transformers Trainer"], mean["own loop (88cee54)"]
    a_old, a_new = adapters["own loop (88cee54)"], adapters["transformers Trainer"]
    diff = max((a_old[k] - a_new[k]).abs().max().item() for k in a_old)
    report(a.name, rows, ["implementation", "repeat", "steps", "train_s", "s_per_step", "wall_s"],
           {"model": a.model, "examples": len(data), "batch_size": cfg.batch_size, "reference": a.reference,
            "trainer_over_loop": new / ref, "adapter_max_abs_diff": diff, "threads": torch.get_num_threads()})
    print(f"Trainer / own loop, s per step: {new / ref:.3f}; final adapters differ by at most {diff:.2e}")


if __name__ == "__main__":
    main()
