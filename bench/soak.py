"""Soak: concurrent scoring clients against one `relkd serve` for a bounded time; failures, latency, memory.

Starts the real `relkd serve` (tritonserver on 127.0.0.1) on a model repository, then N client processes
that each send scoring requests (the gRPC path `relkd score` uses, `batch` rows a request) until
`--duration` seconds or `--max-requests` requests, whichever comes first. Meanwhile the server's resident
memory (tritonserver + its python-backend stubs, VmRSS from /proc) is sampled. Finally Ctrl-C (SIGINT)
stops the server the way an operator does, and no process of it may be left.

    python bench/soak.py [--repo triton_repo] [--clients 4] [--duration 120] [--max-requests 20000]

Without --repo (or when it holds no model) the repository is the tests' tiny one: a tiny:bert student
built from its config and exported to ONNX, two versions (tests/test_serving_server.py, build_repository).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402


def rss_mb(pgid: int) -> dict:
    """Current resident memory (VmRSS, MB) of every live process of group `pgid`."""
    from relkd import procs

    out = {}
    for pid, _, state in procs.group_members(pgid) or []:
        if state == "Z":
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                out[pid] = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return out


def client(url: str, version: str, batch: int, duration: float, max_requests: int, seed: int, out: str) -> None:
    """One scoring client: requests of `batch` pairs until the time or the request budget is spent."""
    import numpy as np
    import tritonclient.grpc as module

    from relkd.data.config import CatalogueConfig
    from relkd.data.catalogue import generate_catalogue
    from relkd.serving.client import _Session, _infer_batch
    from relkd.serving.config import ScoreConfig

    df = generate_catalogue(CatalogueConfig(n_queries=200, pairs_per_query=3), seed=seed)
    queries, titles = df["query"].astype(str).tolist(), df["title"].astype(str).tolist()
    rng = np.random.default_rng(seed)
    session = _Session(module, url, 60.0, "relevance_student", version,
                       ScoreConfig(batch_size=batch, concurrency=1, retries=0, backoff=0.0, max_chars=10_000,
                                   explain=True))
    latencies, failures, rows = [], [], 0
    end = time.monotonic() + duration
    try:
        while time.monotonic() < end and len(latencies) + len(failures) < max_requests:
            idx = rng.choice(len(queries), batch, replace=False)
            t = time.perf_counter()
            try:
                got = _infer_batch(session, [queries[i] for i in idx], [titles[i] for i in idx])
                assert len(got["label"]) == batch, f"{len(got['label'])} labels for {batch} rows"
                latencies.append(time.perf_counter() - t)
                rows += batch
            except Exception as e:  # noqa: BLE001 - every failure is counted and its first few kept
                failures.append(f"{type(e).__name__}: {e}"[:300])
    finally:
        session.close()
    Path(out).write_text(json.dumps({"latencies_s": latencies, "failures": failures, "rows": rows}))


def start_serve(repo: Path, log: Path):
    """`relkd serve` in its own session (SIGINT reaches it alone); returns (proc, grpc url, server pid)."""
    proc = subprocess.Popen([sys.executable, "-m", "relkd.cli", "serve", "--repo", str(repo)], stdout=subprocess.PIPE,
                            stderr=open(log, "wb"), text=True, start_new_session=True)
    line = proc.stdout.readline()  # "tritonserver ready: HTTP h:p  gRPC h:p  (pid N); Ctrl-C stops it"
    m = re.search(r"gRPC (\S+)\s+\(pid (\d+)\)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"relkd serve did not come up: {line!r}\n{log.read_text()[-3000:]}")
    return proc, m.group(1), int(m.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=None, help="Triton model repository (default: build the tests' tiny one)")
    ap.add_argument("--version", default="1", help="model version the clients ask for")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds the clients send requests")
    ap.add_argument("--max-requests", type=int, default=20_000, help="per client")
    ap.add_argument("--batch", type=int, default=32, help="rows per request")
    ap.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    ap.add_argument("--name", default="soak")
    ap.add_argument("--client", nargs=6, metavar=("URL", "VERSION", "BATCH", "DURATION", "MAX", "SEED"),
                    help=argparse.SUPPRESS)  # internal: run as one client process
    ap.add_argument("--client-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        url, version, batch, duration, max_requests, seed = a.client
        return client(url, version, int(batch), float(duration), int(max_requests), int(seed), a.client_out)

    import numpy as np

    from relkd import procs

    work = Path(tempfile.mkdtemp(prefix="relkd-soak-"))
    repo = Path(a.repo) if a.repo else None
    source = f"repository {repo}"
    if repo is None or not any(repo.glob("*/config.pbtxt")):
        sys.path.insert(0, str(ROOT / "tests"))
        from test_serving_server import build_repository

        repo = build_repository(work, work / "student")["repo"]
        source = "the tests' tiny repository (tiny:bert from its config, exported to ONNX; versions 1 and 2)"
    serve, url, server_pid = start_serve(repo, work / "serve.log")
    samples = []

    def sample(t0):
        mem = rss_mb(server_pid)
        samples.append({"t_s": round(time.monotonic() - t0, 1), "total_mb": round(sum(mem.values()), 1),
                        "processes": len(mem)})

    try:
        t0 = time.monotonic()
        sample(t0)
        outs = [work / f"client{k}.json" for k in range(a.clients)]
        workers = [subprocess.Popen([sys.executable, __file__, "--client", url, a.version, str(a.batch),
                                     str(a.duration), str(a.max_requests), str(k), "--client-out", str(out)])
                   for k, out in enumerate(outs)]
        hard_stop = time.monotonic() + a.duration + 120  # a client stuck past its own bound is killed
        while any(w.poll() is None for w in workers):
            if time.monotonic() > hard_stop:
                for w in workers:
                    w.kill()
                break
            time.sleep(a.sample_every)
            sample(t0)
        sample(t0)
        wall = time.monotonic() - t0
    finally:
        serve.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
    time.sleep(1)
    left = [m for m in procs.group_members(server_pid) or [] if m[2] != "Z"]

    results = [json.loads(o.read_text()) if o.exists() else {"latencies_s": [], "failures": ["no result"], "rows": 0}
               for o in outs]
    lat = np.array([x for r in results for x in r["latencies_s"]]) * 1000
    failures = [f for r in results for f in r["failures"]]
    requests = len(lat) + len(failures)
    # Memory after warm-up (first sample past 10% of the run) against the end: growth, if any.
    warm = next((s for s in samples if s["t_s"] >= 0.1 * a.duration), samples[0])
    row = {"clients": a.clients, "batch": a.batch, "seconds": round(wall, 1), "requests": requests,
           "failed": len(failures), "rows_scored": sum(r["rows"] for r in results),
           "req_per_s": round(len(lat) / wall, 1),
           **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) if len(lat) else None for q in (50, 99)},
           "max_ms": round(float(lat.max()), 1) if len(lat) else None,
           "mem_start_mb": samples[0]["total_mb"], "mem_warm_mb": warm["total_mb"],
           "mem_end_mb": samples[-1]["total_mb"], "mem_max_mb": max(s["total_mb"] for s in samples),
           "serve_exit": serve.returncode, "left_after_stop": len(left)}
    columns = list(row)
    report(a.name, [row], columns, {"model": source, "duration_s": a.duration, "max_requests": a.max_requests,
                                    "memory_samples": samples, "first_failures": failures[:5],
                                    "latency_ms": {"mean": round(statistics.fmean(lat), 2) if len(lat) else None}})
    if failures or left:
        sys.exit(f"{len(failures)} failed request(s) {failures[:3]}; {len(left)} server process(es) left: {left}")


if __name__ == "__main__":
    main()
