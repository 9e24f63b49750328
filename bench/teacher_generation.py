"""Teacher generation throughput: one-at-a-time versus batched rationales/s and tokens/s (transformers;
vLLM too when it is installed and a GPU is visible).

    python bench/teacher_generation.py [--model pypi:SmolLM2-135M-Instruct] [--n 32] [--batch 32]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_roof, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pypi:SmolLM2-135M-Instruct")
    ap.add_argument("--n", type=int, default=32, help="prompts")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--single", type=int, default=8, help="prompts timed one at a time")
    ap.add_argument("--name", default="teacher_generation", help="results file name (bench/results/NAME.json)")
    a = ap.parse_args()

    import torch

    from relkd.data.catalogue import LABELS, generate_catalogue
    from relkd.data.config import CatalogueConfig
    from relkd.models import resolve
    from relkd.teacher.config import SamplingConfig, TeacherConfig
    from relkd.teacher.engine import make_engine, resolve_backend
    from relkd.teacher.judge import prompts_for
    from relkd.teacher.prompts import PERSPECTIVES, load_perspectives

    pairs = generate_catalogue(CatalogueConfig(n_queries=a.n, pairs_per_query=1), seed=7)
    root = Path(__file__).resolve().parents[1]
    persp = load_perspectives(root / "prompts")[PERSPECTIVES[0]]
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=a.max_new_tokens, k=1)
    rows = []
    engines = ["transformers"] + (["vllm"] if resolve_backend("auto") == "vllm" else [])
    for engine in engines:
        cfg = TeacherConfig(model=a.model, backend=engine, batch_size=a.batch)
        backend = make_engine(cfg, resolve(a.model)).teacher()
        prompts = prompts_for(backend.tokenizer, persp, pairs, LABELS)
        tok = backend.tokenizer

        def timed(batch: list[str], size: int) -> tuple[float, int]:
            t = time.perf_counter()
            outs = []
            for i in range(0, len(batch), size):
                outs += backend.generate(batch[i:i + size], 1, sampling, seed=1)
            dt = time.perf_counter() - t
            return dt, sum(len(tok(o[0])["input_ids"]) for o in outs)

        backend.generate(prompts[:2], 1, sampling, seed=0)  # warm-up
        if engine == "transformers":
            backend.share_prefix = False  # one prompt alone: nothing to share
            dt, ntok = timed(prompts[:a.single], 1)
            rows.append({"engine": engine, "mode": "one at a time", "prompts": a.single,
                         "rationales_per_s": a.single / dt, "tokens_per_s": ntok / dt})
        # transformers: the plain left-padded batch, then the shared-prefix KV cache (the pipeline's default)
        for share in ([False, True] if engine == "transformers" else [None]):
            if share is not None:
                backend.share_prefix = share
            dt, ntok = timed(prompts, a.batch)
            mode = f"batched x{a.batch}" + {None: "", False: ", left-padded", True: ", shared prefix"}[share]
            rows.append({"engine": engine, "mode": mode, "prompts": len(prompts),
                         "rationales_per_s": len(prompts) / dt, "tokens_per_s": ntok / dt})
    single = next((r["rationales_per_s"] for r in rows if r["mode"] == "one at a time"), None)
    for r in rows:
        r["speedup_vs_single"] = r["rationales_per_s"] / single if single else None
    roof = matmul_roof(device="cuda" if torch.cuda.is_available() else "cpu")
    report(a.name, rows, ["engine", "mode", "prompts", "rationales_per_s", "tokens_per_s",
                                        "speedup_vs_single"],
           {"model": a.model, "max_new_tokens": a.max_new_tokens, "matmul_roof_gflops": roof,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"})
    print(f"matmul roof: {roof:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
