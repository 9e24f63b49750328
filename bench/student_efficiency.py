"""Student efficiency like the paper's Table 2: parameters and milliseconds per 100-pair batch for each
variant (torch eager, CPU, realistic catalogue pairs), with the extractor's overhead over `plain`; and the Avg.
Ensemble of Table 6 (three lrkd_gat students, probabilities averaged), whose cost against one LRKD student is the
paper's "competitive at a third of the cost".

    python bench/student_efficiency.py [--backbone pypi:all-MiniLM-L6-v2] [--repeats 10]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_roof, report  # noqa: E402

ENSEMBLE = "avg_ensemble (3 x lrkd_gat)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="pypi:all-MiniLM-L6-v2")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--head-repeats", type=int, default=200, help="timings of the read-out alone per variant")
    ap.add_argument("--name", default="student_efficiency", help="results file name (bench/results/NAME.json)")
    a = ap.parse_args()

    import torch

    from relkd.data.catalogue import LABELS, generate_catalogue
    from relkd.data.config import CatalogueConfig
    from relkd.student.config import named_variants
    from relkd.student.ensemble import AvgEnsemble
    from relkd.student.model import build_student, tokenize_pairs
    from relkd.teacher.prompts import PERSPECTIVES

    pairs = generate_catalogue(CatalogueConfig(n_queries=a.batch, pairs_per_query=1), seed=3).iloc[:a.batch]
    models = {}
    for name, variant in named_variants().items():
        model, tok = build_student(a.backbone, LABELS, variant, 384, 128, 32, a.max_length)
        enc = tokenize_pairs(tok, list(pairs["query"]), list(pairs["title"]), a.max_length, padding="max_length",
                             return_tensors="pt")
        models[name] = (model.eval(), (enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")))
    members = {p: build_student(a.backbone, LABELS, named_variants()["lrkd_gat"], 384, 128, 32, a.max_length)[0]
               for p in PERSPECTIVES}
    models[ENSEMBLE] = (AvgEnsemble(members).eval(), models["lrkd_gat"][1])
    # Round-robin: every round times each variant once, so slow drifts of the machine (other jobs,
    # clock changes) hit all variants alike; the median over rounds is reported.
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model, args in models.values():
            model(*args)
        for _ in range(a.repeats):
            for name, (model, args) in models.items():
                t = time.perf_counter()
                model(*args)
                times[name].append(time.perf_counter() - t)
        # The read-out alone (extractor + head on one batch's hidden states), timed many times: small and
        # steady, so its cost can be read far below the whole forward's round-to-round spread.
        plain_model, (ids, mask, types) = models["plain"]
        hidden = plain_model.backbone(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        single = {name: m for name, (m, _) in models.items() if name != ENSEMBLE}  # the ensemble has 3 read-outs
        heads = {name: [] for name in single}
        for model in single.values():
            model.read_out(hidden, mask)
        for _ in range(a.head_repeats):  # round-robin again
            for name, model in single.items():
                heads[name].append(_timed(lambda: model.read_out(hidden, mask)))
        read_out = {name: statistics.median(t) for name, t in heads.items()}
        read_out[ENSEMBLE] = sum(read_out["lrkd_gat"] for _ in members)
    rows = [{"variant": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
             "ms_per_100_pairs": 1000 * statistics.median(times[name]) * 100 / a.batch,
             "ms_spread": 1000 * (max(times[name]) - min(times[name])) * 100 / a.batch,
             "read_out_ms_per_100_pairs": 1000 * read_out[name] * 100 / a.batch}
            for name, (model, _) in models.items()]
    base = next(r for r in rows if r["variant"] == "plain")
    gat = next(r for r in rows if r["variant"] == "lrkd_gat")
    for r in rows:
        r["overhead_vs_plain"] = r["ms_per_100_pairs"] / base["ms_per_100_pairs"] - 1
        r["times_lrkd_gat"] = r["ms_per_100_pairs"] / gat["ms_per_100_pairs"]
        # extra read-out time over plain's, as a share of plain's whole forward
        r["read_out_overhead"] = (r["read_out_ms_per_100_pairs"] - base["read_out_ms_per_100_pairs"]) / base[
            "ms_per_100_pairs"]
    roof = matmul_roof()
    report(a.name, rows, ["variant", "params_M", "ms_per_100_pairs", "ms_spread", "overhead_vs_plain",
                                        "times_lrkd_gat",
                                        "read_out_ms_per_100_pairs", "read_out_overhead"],
           {"backbone": a.backbone, "batch": a.batch, "padded_to": a.max_length, "matmul_roof_gflops": roof})
    print(f"matmul roof: {roof:.0f} GFLOP/s (batch {a.batch}, padded to {a.max_length}, median of {a.repeats})")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
