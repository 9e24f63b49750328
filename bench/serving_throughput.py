"""Student scoring throughput, in process and end to end through Triton, side by side in one run.

In process: torch eager padded to 64 (the baseline), torch with length buckets, onnxruntime fp32 padded
to 64 and bucketed, onnxruntime int8 (dynamic: the encoder's weight MatMuls per channel, per tensor, and the
whole graph per tensor) bucketed, with argmax agreement against torch fp32. Through Triton: the exported
model repository served by the real tritonserver, scored over HTTP and gRPC at batch 1, 32 and the served
batch, with and without the explanation output, and the python backend's steps timed in process (the
breakdown). Achieved GFLOP/s are counted on real (unpadded) tokens and put beside the machine's measured
matmul roofs (fp32, and int8 MatMulInteger for the integer rows).

    python bench/serving_throughput.py --student models/student/lrkd_gat/seed13 --repo triton_repo \\
        [--pairs 600] [--csv FILE --query-col search_term --title-col product_title]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import int8_matmul_roof, load_pairs, matmul_roof, report  # noqa: E402


def flops_per_token(model) -> float:
    """2 x parameters touched per token (embeddings excluded): the dense-layer cost of one token."""
    enc = model.backbone
    n = sum(p.numel() for name, p in enc.named_parameters() if "embeddings" not in name)
    return 2.0 * n


def timed(fn, repeats: int) -> float:
    fn()
    return min(_once(fn) for _ in range(repeats))


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def backend_breakdown(version_dir: Path, pairs, batch: int) -> dict:
    """Where a Triton request's time goes inside the python backend, step by step, in process: the served
    version's own model.py (TritonPythonModel, its onnxruntime session and thread settings) on the batches the
    client sends (rows sorted by length, `batch` a request). Seconds per 1000 pairs for each step."""
    from relkd.serving.triton_model import TritonPythonModel, encode, relevance, run_bucketed

    model = TritonPythonModel()
    model.initialize({"model_repository": str(version_dir.parent), "model_version": version_dir.name})
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    batches = [[pairs[i] for i in order[k:k + batch]] for k in range(0, len(order), batch)]
    steps = dict.fromkeys(["tokenise (tokenizers) and lexical features, in the stub",
                           "onnxruntime, logits only",
                           "onnxruntime, logits + latent", "softmax, score, tier", "explanation lookup"], 0.0)
    names = list(steps)
    for _ in range(2):  # the first pass warms up; the second is measured
        for key in names:
            steps[key] = 0.0
        for b in batches:
            t0 = time.perf_counter()
            feed = encode(model.tok, [q for q, _ in b], [t for _, t in b], model.input_names, model.int_dtype,
                          model.lexical)
            t1 = time.perf_counter()
            logits = run_bucketed(model.session, ["logits"], feed, model.bucket_rows)[0]
            t2 = time.perf_counter()
            both = run_bucketed(model.session, model.output_names, feed, model.bucket_rows)
            t3 = time.perf_counter()
            relevance(logits, model.info)
            t4 = time.perf_counter()
            model._nearest(both[1] if len(both) > 1 else None, len(b))
            t5 = time.perf_counter()
            for key, dt in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                steps[key] += dt
    return {k: 1000 * v / len(pairs) for k, v in steps.items()}


def build_repo(student_dir: str, fp32_onnx: Path, params, work: Path, labels, max_length: int) -> Path:
    """A one-version model repository from a saved student, for a student that no `export` stage served (e.g.
    one trained by bench/quality.py): the optimised fp32 graph export serves, temperature 1 and the tier cuts
    at the export's target precisions read as scores (speed does not depend on them), no explanation index."""
    from relkd.serving.export import optimize
    from relkd.serving.repository import write_config, write_version

    e, t = params.export, params.triton
    info = {"labels": list(labels), "max_length": max_length, "temperature": 1.0,
            "tier_thresholds": list(e.target_precisions),
            "relevance_weights": [float(e.relevance_weights.get(lab, 0.0)) for lab in labels],
            "intra_op_threads": e.intra_op_threads, "bucket_rows": e.bucket_rows, "optimized_for": "cpu",
            "registry": {"name": "bench", "version": 1, "alias": "champion", "variant": "bench"}}
    repo = work / "repo"
    write_version(repo, t.model_name, 1, optimize(fp32_onnx, work / "fp32.opt.onnx"), student_dir, info)
    write_config(repo, t.model_name, [1], t.max_batch_size, t.preferred_batch_sizes, t.max_queue_delay_us,
                 t.instance_count)
    return repo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, help="a saved student folder (models/student/<v>/seed<N>)")
    ap.add_argument("--repo", default="triton_repo", help="exported Triton model repository; 'build' builds a one-version repository from --student "
                    "(a student no export stage served); 'none' skips the Triton rows")
    ap.add_argument("--model-name", default="relevance_student")
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--csv", default=None, help="pairs from a CSV or Parquet file (e.g. data/prepared/valid.parquet with --query-col query "
                    "--title-col title) instead of generated catalogue pairs")
    ap.add_argument("--calibration", default=None, help="pairs for static int8 calibration, CSV/Parquet with query "
                    "and title columns (e.g. data/prepared/train.parquet); default: generated catalogue pairs")
    ap.add_argument("--calibration-pairs", type=int, default=256)
    ap.add_argument("--query-col", default="search_term")
    ap.add_argument("--title-col", default="product_title")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--params", default="params.yaml", help="for triton.max_batch_size (the served batch)")
    ap.add_argument("--name", default="serving_throughput", help="results file name (bench/results/NAME.json)")
    a = ap.parse_args()

    import numpy as np
    import torch

    from relkd.serving.export import calibration_batches, export_onnx, quantize_int8, score_pairs, tokenize
    from relkd.student.model import InferenceWrapper, load_student

    from relkd.config import load_params

    params = load_params(a.params)
    served_batch = params.triton.max_batch_size  # the largest request the server takes
    pairs = load_pairs(a.csv, a.pairs, a.query_col, a.title_col)
    # Static quantisation's activation ranges come from other pairs than those measured (the training split).
    calibration_pairs = load_pairs(a.calibration, a.calibration_pairs, "query", "title", seed=6)
    model, tok = load_student(a.student)
    wrapper = InferenceWrapper(model).eval()
    max_len = model.max_length  # travels with the saved student
    ids, _ = tokenize(tok, pairs, max_len)
    real_tokens = sum(len(x) for x in ids)
    fpt = flops_per_token(model)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="relkd-bench-"))
    fp32 = work / "fp32.onnx"
    samples = sorted(pairs, key=lambda p: len(p[0]) + len(p[1]))
    export_onnx(wrapper, tok, fp32, max_len, [samples[0], samples[len(samples) // 2], samples[-1]])
    # Integer routes: dynamic int8 of the encoder's weight MatMuls only (the default of export; embeddings,
    # LayerNorms, attention products, extractor and head stay fp32), per channel and per tensor, and the
    # whole graph per tensor (per channel, onnxruntime refuses the GAT extractor's attention vectors).
    # Static QDQ: activation ranges fixed from calibration pairs (min/max), encoder weight MatMuls per channel.
    calibration = calibration_batches(tok, calibration_pairs, max_len, lexical_tables=model.lexical_tables)
    int8_routes = []
    for label, kwargs in (("dynamic, encoder only, per-channel", {"scope": "encoder", "per_channel": True}),
                          ("dynamic, encoder only, per-tensor", {"scope": "encoder", "per_channel": False}),
                          ("dynamic, whole graph, per-tensor", {"scope": "all", "per_channel": False}),
                          (f"static QDQ ({len(calibration_pairs)} calibration pairs), encoder only, per-channel",
                           {"scope": "encoder", "per_channel": True, "calibration": calibration})):
        kind = "static" if "calibration" in kwargs else "dynamic"
        path = quantize_int8(fp32, work / f"int8-{kind}-{kwargs['scope']}-{kwargs['per_channel']}.onnx", **kwargs)
        int8_routes.append((f"onnxruntime int8 {label}, length buckets", path, True))
    ref = None
    with torch.inference_mode():
        for name, model_or_path, buckets in [("torch eager, padded to 64", wrapper, False),
                                             ("torch eager, length buckets", wrapper, True),
                                             ("onnxruntime fp32, padded to 64", fp32, False),
                                             ("onnxruntime fp32, length buckets", fp32, True),
                                             *int8_routes,
                                             (f"onnxruntime fp32, length buckets, batch {served_batch}", fp32, True),
                                             *[(f"{n}, batch {served_batch}", m, b) for n, m, b in int8_routes]]:
            out = {}
            batch = served_batch if name.endswith(f", batch {served_batch}") else 100

            def run():
                out["logits"] = score_pairs(model_or_path, tok, pairs, max_len, batch_size=batch, buckets=buckets,
                                            lexical_tables=model.lexical_tables)[0]
            dt = timed(run, a.repeats)
            if ref is None:
                ref = out["logits"].argmax(1)
            rows.append({"path": name, "pairs_per_s": len(pairs) / dt,
                         "gflops_real_tokens": real_tokens * fpt / dt / 1e9,
                         "agreement_vs_torch_fp32": float((out["logits"].argmax(1) == ref).mean())})
    base = rows[0]["pairs_per_s"]
    memory, breakdown = None, {}
    if a.repo == "build":
        a.repo = str(build_repo(a.student, fp32, params, work, model.labels, max_len))
    if a.repo and Path(a.repo, a.model_name).is_dir():
        from relkd.serving.client import score_frame
        from relkd.serving.server import triton
        import pandas as pd

        version = sorted((p.name for p in Path(a.repo, a.model_name).iterdir() if p.name.isdigit()), key=int)[-1]
        frame = pd.DataFrame({"query": [q for q, _ in pairs], "title": [t for _, t in pairs]})
        breakdown = backend_breakdown(Path(a.repo, a.model_name, version), pairs, served_batch)
        with triton(a.repo) as server:
            runs = [(protocol, port, bs, True, 2) for protocol, port in (("http", server.http_port),
                                                                         ("grpc", server.grpc_port))
                    for bs in (1, 32, served_batch)]
            runs += [("grpc", server.grpc_port, served_batch, False, c) for c in (2, 1)]
            for protocol, port, bs, explain, concurrency in runs:
                n = len(frame) if bs > 1 else min(len(frame), 100)
                sub = frame.iloc[:n]
                cfg = params.score.model_copy(update={"protocol": protocol, "batch_size": bs,
                                                      "concurrency": concurrency, "explain": explain})
                dt = timed(lambda: score_frame(sub, f"127.0.0.1:{port}", cfg, a.model_name, version,
                                               progress=False), 1)
                what = "" if explain else f", no explanation, concurrency {concurrency}"
                rows.append({"path": f"Triton {protocol}, batch {bs} (v{version}){what}", "pairs_per_s": n / dt,
                             "gflops_real_tokens": None, "agreement_vs_torch_fp32": None})
                if bs == served_batch and protocol == "grpc":
                    breakdown[f"Triton gRPC end to end{what or ', with explanation, concurrency 2'}"] = 1000 * dt / n
            memory = server.peak_rss_mb()
    roof, int8_roof = matmul_roof(), int8_matmul_roof()
    same_batch = next(r["pairs_per_s"] for r in rows if r["path"] == f"onnxruntime fp32, length buckets, batch {served_batch}")
    fp32_buckets = next(r["pairs_per_s"] for r in rows if r["path"] == "onnxruntime fp32, length buckets")
    for r in rows:
        if r["path"].startswith("Triton") and f"batch {served_batch} " in r["path"]:
            r["vs_in_process_same_batch"] = r["pairs_per_s"] / same_batch
        r["vs_torch_padded"] = r["pairs_per_s"] / base
        integer = "int8" in r["path"]
        if integer:
            r["vs_fp32_buckets"] = r["pairs_per_s"] / (same_batch if r["path"].endswith(f", batch {served_batch}")
                                                       else fp32_buckets)
        # int8 rows against the integer roof (their MatMuls run on it), fp32 rows against the fp32 one
        r["roof_share"] = r["gflops_real_tokens"] / (int8_roof if integer else roof) if r["gflops_real_tokens"] else None
    report(a.name, rows, ["path", "pairs_per_s", "vs_torch_padded", "vs_fp32_buckets", "gflops_real_tokens",
                          "roof_share", "agreement_vs_torch_fp32", "vs_in_process_same_batch"],
           {"student": a.student, "pairs": len(pairs), "data": a.csv or "catalogue",
            "server_peak_rss_mb": memory, "mean_real_tokens": real_tokens / len(pairs),
            "gflop_per_real_token": fpt / 1e9, "matmul_roof_gflops": roof, "int8_matmul_roof_gops": int8_roof,
            "triton_breakdown": breakdown})
    for step, seconds in breakdown.items():
        print(f"  {step}: {seconds:.2f} s per 1000 pairs")
    print(f"matmul roof {roof:.0f} GFLOP/s, int8 {int8_roof:.0f} GOP/s; {len(pairs)} pairs, "
          f"mean {real_tokens / len(pairs):.1f} real tokens")


if __name__ == "__main__":
    main()
