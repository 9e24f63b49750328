"""The online A/B router in the path: its overhead per request, replay throughput, and a short soak.

1. Overhead: the same pairs sent one request each (one row, gRPC, one client), alternately through the router
   and straight to the version the router picked for that unit; p50 / p99 of both and their difference. With
   `--no-fsync-too` skipped; otherwise the same against a router that only flushes its log (online.fsync false),
   on a second server start, to show what the fsync per batch costs.
2. Replay throughput: `relkd replay`'s client (relkd.serving.replay) on the same server, 1 and 4 clients.
3. Soak: the replay client in rounds (fresh request ids each round) for `--soak` seconds with 4 clients, the
   server's resident memory (tritonserver + its stubs) sampled meanwhile; refused or failed requests counted.

    python bench/online_ab.py [--repo triton_repo] [--pairs 300] [--soak 60] [--name online_ab]

Without --repo (or with one that has no router) the repository is two stand-in versions of the embedded student:
the all-MiniLM-L6-v2 backbone of params.yaml with untrained heads (seeds 1 and 2), exported like `export` does
(ONNX, optimised, tokenizer inside), with the router of params.yaml's `ab` / `online` beside them. Speed does
not depend on the head's values.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_pairs, report  # noqa: E402
from soak import rss_mb  # noqa: E402


def stand_in_repo(work: Path, params) -> Path:
    """Two versions of a MiniLM student with untrained heads, exported as the export stage does, and the router."""
    import torch

    from relkd.data.catalogue import generate_catalogue
    from relkd.models import resolve
    from relkd.serving.export import export_onnx, optimize
    from relkd.serving.repository import write_config, write_version
    from relkd.serving.router import write_router
    from relkd.student.config import VariantConfig
    from relkd.student.model import InferenceWrapper, build_student, save_student

    s, e, t = params.student, params.export, params.triton
    labels = tuple(sorted(generate_catalogue(params.data.catalogue, seed=0)["label"].unique()))
    repo = work / "repo"
    for version in (1, 2):
        torch.manual_seed(version)
        model, tok = build_student(resolve(s.backbone), labels, VariantConfig(extractor="none", guidance=False),
                                   max_length=s.max_length)
        folder = save_student(model.eval(), tok, work / f"student{version}")
        onnx = work / f"v{version}.onnx"
        export_onnx(InferenceWrapper(model).eval(), tok, onnx, s.max_length,
                    [("usb cable", "Anker USB-C cable, 2 m"), ("red shoes", "Nike running shoe, red, size 10"),
                     ("desk lamp", "IKEA desk lamp, white, LED bulb included")])
        info = {"labels": list(labels), "max_length": s.max_length, "temperature": 1.0,
                "tier_thresholds": list(e.target_precisions),
                "relevance_weights": [float(e.relevance_weights.get(lab, 0.0)) for lab in labels],
                "intra_op_threads": e.intra_op_threads, "bucket_rows": e.bucket_rows,
                "registry": {"name": "bench", "version": version, "alias": ("champion", "challenger")[version - 1],
                             "variant": "plain"}}
        write_version(repo, t.model_name, version, optimize(onnx, work / f"v{version}.opt.onnx"), folder, info)
    write_config(repo, t.model_name, [1, 2], t.max_batch_size, t.preferred_batch_sizes, t.max_queue_delay_us,
                 t.instance_count)
    write_router(repo, {"champion": 1, "challenger": 2}, params.ab, params.online, t)
    return repo


def overhead(server, pairs, router: str, model: str, rounds: int = 1) -> dict:
    """Per-request latency through the router and straight to the version it picked, interleaved."""
    import numpy as np
    import tritonclient.grpc as g

    client = g.InferenceServerClient(server.grpc_url)

    def tensor(name, text):
        x = g.InferInput(name, [1, 1], "BYTES")
        x.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        return x

    via, direct = [], []
    try:
        for k, (q, t) in enumerate(pairs * rounds):
            unit = f"bench-{k}"
            t0 = time.perf_counter()
            r = client.infer(router, [tensor("QUERY", q), tensor("TITLE", t), tensor("UNIT_ID", unit)],
                             request_id=f"ovh-{k}")
            via.append(time.perf_counter() - t0)
            version = str(int(r.as_numpy("VERSION").ravel()[0]))
            t0 = time.perf_counter()
            client.infer(model, [tensor("QUERY", q), tensor("TITLE", t)], model_version=version)
            direct.append(time.perf_counter() - t0)
    finally:
        client.close()
    via, direct = np.array(via[10:]) * 1000, np.array(direct[10:]) * 1000  # the first few warm up
    out = {"requests": len(via)}
    for q in (50, 99):
        out[f"direct_p{q}_ms"] = round(float(np.percentile(direct, q)), 2)
        out[f"router_p{q}_ms"] = round(float(np.percentile(via, q)), 2)
        out[f"overhead_p{q}_ms"] = round(out[f"router_p{q}_ms"] - out[f"direct_p{q}_ms"], 2)
    return out


def write_batch(path: Path, pairs, tag: str, users: int = 300) -> Path:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(len(tag))
    pd.DataFrame({"query": [q for q, _ in pairs], "title": [t for _, t in pairs],
                  "unit_id": [f"user-{k}" for k in rng.integers(0, users, len(pairs))],
                  "request_id": [f"{tag}-{i}" for i in range(len(pairs))]}).to_parquet(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=None, help="an exported repository with the router (default: build stand-ins)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pairs", type=int, default=300, help="pairs of the overhead and replay measurements")
    ap.add_argument("--soak", type=float, default=60.0, help="seconds of the soak")
    ap.add_argument("--no-fsync-too", action="store_true", help="skip the router-without-fsync row")
    ap.add_argument("--name", default="online_ab")
    a = ap.parse_args()

    from relkd.config import load_params
    from relkd.serving.replay import replay_file
    from relkd.serving.router import write_router
    from relkd.serving.server import triton

    params = load_params(a.params)
    o, t = params.online, params.triton
    work = Path(tempfile.mkdtemp(prefix="relkd-bench-online-"))
    repo = Path(a.repo) if a.repo else None
    source = f"repository {repo}"
    if repo is None or not (repo / o.router_name / "config.pbtxt").exists():
        repo = stand_in_repo(work, params)
        source = (f"stand-ins: {params.student.backbone} (max_length {params.student.max_length}), untrained heads, "
                  "versions 1 and 2, optimised fp32 ONNX")
    pairs = load_pairs(None, a.pairs, "query", "title")
    load = {"loadavg_start": os.getloadavg()}
    rows, soak_row, samples = [], None, []
    with triton(repo, exposures=work / "exposures", timeout=t.start_timeout) as server:
        rows.append({"measure": f"overhead, fsync {o.fsync}", **overhead(server, pairs, o.router_name, t.model_name)})
        for clients in (1, 4):
            batch = write_batch(work / f"replay{clients}.parquet", pairs, f"rp{clients}")
            r = replay_file(batch, work / f"rp{clients}", server.grpc_url,
                            o.model_copy(update={"rate": 0, "concurrency": clients}), progress=False)
            rows.append({"measure": f"replay, {clients} client(s)", "requests": r["sent"],
                         "requests_per_s": round(r["requests_per_s"], 1), "answered": r["answered"],
                         "refused": r["refused"]})
        # Soak: rounds of the replay until the time is spent; memory sampled by a thread.
        stop, t0 = threading.Event(), time.monotonic()

        def sampler():
            while not stop.is_set():
                samples.append({"t_s": round(time.monotonic() - t0, 1),
                                "total_mb": round(sum(rss_mb(server.pid).values()), 1)})
                stop.wait(2.0)

        watcher = threading.Thread(target=sampler)
        watcher.start()
        sent = answered = refused = failed = 0
        k = 0
        while time.monotonic() - t0 < a.soak:
            try:
                r = replay_file(write_batch(work / f"soak{k}.parquet", pairs, f"soak{k}"), work / f"soak{k}",
                                server.grpc_url, o.model_copy(update={"rate": 0, "concurrency": 4}), progress=False)
                sent, answered, refused = sent + r["sent"], answered + r["answered"], refused + r["refused"]
            except Exception as e:  # noqa: BLE001 - a failed round is counted, the soak goes on
                failed += 1
                print(f"soak round {k} failed: {e}", file=sys.stderr)
            k += 1
        stop.set()
        watcher.join()
        wall = time.monotonic() - t0
        half = [s for s in samples if s["t_s"] >= wall / 2]
        soak_row = {"measure": f"soak {wall:.0f} s, 4 clients", "requests": sent,
                    "requests_per_s": round(sent / wall, 1), "answered": answered, "refused": refused,
                    "failed_rounds": failed, "mem_start_mb": samples[0]["total_mb"],
                    "mem_mid_mb": half[0]["total_mb"] if half else None, "mem_end_mb": samples[-1]["total_mb"],
                    "mem_max_mb": max(s["total_mb"] for s in samples)}
        rows.append(soak_row)
    if not a.no_fsync_too:  # the same router, flushing only, in a copy of the repository
        copy = work / "repo-nofsync"
        shutil.copytree(repo, copy)
        versions = json.loads((repo / o.router_name / "1" / "router.json").read_text())["versions"]
        write_router(copy, versions, params.ab, o.model_copy(update={"fsync": False}), t)
        with triton(copy, exposures=work / "exposures-nofsync", timeout=t.start_timeout) as server:
            rows.append({"measure": "overhead, fsync False", **overhead(server, pairs, o.router_name, t.model_name)})
    load["loadavg_end"] = os.getloadavg()
    columns = ["measure", "requests", "direct_p50_ms", "router_p50_ms", "overhead_p50_ms", "direct_p99_ms",
               "router_p99_ms", "overhead_p99_ms", "requests_per_s", "answered", "refused", "failed_rounds",
               "mem_start_mb", "mem_mid_mb", "mem_end_mb", "mem_max_mb"]
    report(a.name, rows, columns, {"model": source, "load": load, "memory_samples": samples,
                                   "note": "one row per request, gRPC; overhead interleaves router and direct calls"})
    if soak_row and (soak_row["refused"] or soak_row["failed_rounds"]):
        sys.exit(f"soak: {soak_row['refused']} refused, {soak_row['failed_rounds']} failed rounds")


if __name__ == "__main__":
    main()
