"""How long a `relkd score` server outlives its client: kill -9 (the watchdog's job) and SIGTERM (a clean stop).

Each trial starts `relkd score` on a generated batch with its own tritonserver (the tests' tiny two-version
repository), waits for its first shard, then either kills the client with SIGKILL (nothing of ours runs: the
watchdog beside the server's group notices the dead parent, sends SIGTERM to the group and SIGKILL
`watchdog_grace` seconds later) or sends it SIGTERM (the command stops its server and waits for the group).
Measured: seconds from the signal until no process of that server (tritonserver, its python-backend stubs)
runs, polled every 20 ms from /proc; for SIGTERM also the processes still running when the command returned.
`--load N` keeps N busy-looping processes running meanwhile (a loaded machine; they stop with the trial).

    python bench/stop_cleanup.py [--trials 5] [--load 0] [--name stop_cleanup]
"""
from __future__ import annotations

import argparse
import os
import shutil
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


def server_processes(marker: str) -> list[int]:
    """Live processes (zombies have no command line) whose command line names `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def seconds_until_gone(marker: str, timeout: float = 60) -> float:
    t0 = time.monotonic()
    while server_processes(marker):
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"processes of {marker} still run after {timeout} s: {server_processes(marker)}")
        time.sleep(0.02)
    return time.monotonic() - t0


def trial(repo: Path, batch: Path, work: Path, how: str) -> dict:
    out = work / f"out-{how}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "relkd.cli", "score", str(batch), "--out", str(out), "--repo", str(repo),
           "--version", "1", "--batch-size", "4", "--concurrency", "1", "--shard-size", "200"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    first = out / "shards" / "part-00000.parquet"
    deadline = time.monotonic() + 300
    while not first.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"relkd score wrote no shard: {proc.communicate()[1].decode()[-2000:]}")
        time.sleep(0.01)
    running = len(set(server_processes(str(repo))) - {proc.pid})  # tritonserver and its stubs
    t0 = time.monotonic()
    if how == "kill -9":
        os.kill(proc.pid, signal.SIGKILL)  # the client alone, not its group
        proc.wait()
        returned = None
        left_at_return = None
    else:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        returned = time.monotonic() - t0
        left_at_return = len(server_processes(str(repo)))
        if proc.returncode != 143:
            raise RuntimeError(f"relkd score exited {proc.returncode} on SIGTERM: {err.decode()[-2000:]}")
    gone = time.monotonic() - t0 + seconds_until_gone(str(repo))
    shutil.rmtree(out, ignore_errors=True)
    return {"signal": how, "server_processes": running, "seconds_until_gone": round(gone, 2),
            "command_returned_s": None if returned is None else round(returned, 2), "left_at_return": left_at_return}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=5, help="trials of each signal")
    ap.add_argument("--load", type=int, default=0, help="busy-looping processes kept running during the trials")
    ap.add_argument("--name", default="stop_cleanup")
    a = ap.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    import pandas as pd
    from test_serving_server import build_repository, texts

    work = Path(tempfile.mkdtemp(prefix="relkd-stop-"))
    repo = build_repository(work, work / "student")["repo"]
    queries, titles = texts(1200, seed=8)
    pd.DataFrame({"query": queries, "title": titles}).to_parquet(work / "batch.parquet", index=False)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.load)]
    rows = []
    try:
        for _ in range(a.trials):
            for how in ("kill -9", "SIGTERM"):
                rows.append(trial(repo, work / "batch.parquet", work, how))
                print(rows[-1], flush=True)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    summary = []
    for how in ("kill -9", "SIGTERM"):
        s = [r["seconds_until_gone"] for r in rows if r["signal"] == how]
        summary.append({"signal": how, "trials": len(s), "load": a.load, "min_s": min(s),
                        "median_s": statistics.median(s), "max_s": max(s),
                        "left_at_return": None if how == "kill -9" else
                        sum(r["left_at_return"] for r in rows if r["signal"] == how)})
    report(a.name, summary, ["signal", "trials", "load", "min_s", "median_s", "max_s", "left_at_return"],
           {"trials": rows, "watchdog": {"poll_s": 0.25, "grace_s": 5.0}})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
