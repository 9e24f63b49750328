"""Replays a batch file as live traffic through the A/B router: one request per row, at a rate, resumable.

Each row is one request (QUERY, TITLE, and UNIT_ID when the row has a unit; without one the router takes the
request id as the unit), sent by `concurrency` clients at `rate` requests per second in all. Every answered or
refused row is appended to ``journal.jsonl`` as soon as its answer arrives (the exposure log's line format and
reader: a torn last line from a kill is skipped), so a run stopped at any point (the server killed, this
process killed) resumes with the same command and sends only the rows the journal lacks. Request ids are stable
(the input's ``request_id`` column, else ``<input hash>-<row>``), so a row that was in flight when the server
died and is sent again carries the same id, and the analysis counts it once.

At the end ``responses.parquet`` (row, request_id, unit_id, arm, version, label, tier, score, latency_ms) holds
every answered row and ``rejects.jsonl`` every other one with its reason: rows that cannot be sent (the scoring
client's checks) and rows the router refused.
"""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from relkd.io import write_json, write_parquet, write_text
from relkd.serving.client import ScoringRejected, _open, _sha256
from relkd.serving.config import OnlineConfig, ScoreConfig
from relkd.serving.exposures import append_lines, read_lines
from relkd.serving.inputs import check_input, row_problems
from relkd.serving.router_model import UNIT_INPUT
from relkd.serving.server import ServerUnreachable

_SCORE, _ONLINE = ScoreConfig(), OnlineConfig()
OUTPUTS = ("LABEL", "TIER", "SCORE", "ARM", "VERSION")
RESPONSE_COLUMNS = ["row", "request_id", "unit_id", "arm", "version", "label", "tier", "score", "latency_ms"]


def _units(df: pd.DataFrame, column: str) -> list[str | None]:
    if column not in df.columns:
        return [None] * len(df)
    return [None if v is None or (isinstance(v, float) and v != v) or not str(v).strip() else str(v)
            for v in df[column].tolist()]


class _Pacer:
    """Hands out send times `1 / rate` apart to all clients together (rate 0: no pacing)."""

    def __init__(self, rate: float):
        self.gap = 1.0 / rate if rate > 0 else 0.0
        self.next, self.lock = time.monotonic(), threading.Lock()

    def wait(self) -> None:
        if not self.gap:
            return
        with self.lock:
            slot = max(self.next, time.monotonic())
            self.next = slot + self.gap
        time.sleep(max(0.0, slot - time.monotonic()))


def _send(session, query: str, title: str, unit: str | None, request_id: str) -> dict:
    module, client = session.module, session.get()
    inputs = []
    for name, text in (("QUERY", query), ("TITLE", title)) + (((UNIT_INPUT, unit),) if unit is not None else ()):
        tensor = module.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode("utf-8")]], dtype=np.object_))
        inputs.append(tensor)
    outputs = [module.InferRequestedOutput(name) for name in OUTPUTS]
    kwargs = {"client_timeout": session.timeout} if module.__name__.endswith("grpc") else {}
    result = client.infer(session.model_name, inputs, outputs=outputs, request_id=request_id, **kwargs)
    got = {name: result.as_numpy(name).reshape(-1)[0] for name in OUTPUTS}
    return {"arm": got["ARM"].decode("utf-8"), "version": int(got["VERSION"]), "label": got["LABEL"].decode("utf-8"),
            "tier": int(got["TIER"]), "score": float(got["SCORE"])}


def replay_file(input_path, out_dir, url: str, online: OnlineConfig = _ONLINE, score: ScoreConfig = _SCORE,
                unit_column: str = "unit_id", timeout: float = 60.0, progress: bool = True) -> dict:
    """Send every row of a parquet/CSV/JSONL file (query, title, optional unit column, request_id, id) through
    the router ``online.router_name`` at `url` (host:port of its gRPC or HTTP endpoint, per ``score.protocol``),
    ``online.concurrency`` clients at ``online.rate`` requests/s in all, with the scoring client's retries, backoff
    and max_chars (`score`); resumes from ``out_dir``.

    Returns {rows, answered, refused, rejected, sent, resumed, seconds, requests_per_s, responses, rejects};
    `resumed`: rows already in the journal when this run began; `sent` and the rate are this run's. The server
    being unreachable after `retries` raises ServerUnreachable saying how to resume; the journal keeps what was
    answered.
    """
    input_path, out_dir = Path(input_path), Path(out_dir)
    router, rate, concurrency = online.router_name, online.rate, online.concurrency
    if rate < 0 or concurrency < 1:
        raise ValueError(f"rate must be >= 0 (0: as fast as served) and concurrency >= 1, got {rate}, {concurrency}")
    df, read_errors = check_input(input_path)
    digest = _sha256(input_path)
    manifest = {"input_sha256": digest, "rows": len(df), "router": router, "unit_column": unit_column}
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        changed = sorted(k for k in manifest if old.get(k) != manifest[k])
        if changed:
            raise ValueError(f"{out_dir} holds a replay of another input or router (different {changed}); delete "
                             f"{out_dir} or choose another folder")
    else:
        write_json(manifest_path, manifest)
    reasons = row_problems(df, np.arange(len(df)), score.max_chars, read_errors)
    units = _units(df, unit_column)
    ids = (df["request_id"].astype(str).tolist() if "request_id" in df.columns
           else [f"{digest[:12]}-{i}" for i in range(len(df))])
    journal_path = out_dir / "journal.jsonl"
    done, counts = (read_lines(journal_path) if journal_path.exists() else ([], {"torn": 0, "corrupt": 0}))
    seen = {int(r["row"]) for r in done}
    todo = [i for i in range(len(df)) if not reasons[i] and i not in seen]
    queries, titles = df["query"].tolist(), df["title"].tolist()

    one_row = score.model_copy(update={"batch_size": 1, "concurrency": concurrency, "explain": False})
    session = _open(url, router, "", one_row, timeout) if todo else None
    pacer, lock, stop = _Pacer(rate), threading.Lock(), threading.Event()
    fd = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if counts["torn"]:  # a torn last line from a kill: end it, so the next record starts on a line of its own
        os.write(fd, b"\n")
    t0 = time.perf_counter()

    def one(i: int) -> None:
        if stop.is_set():
            return
        pacer.wait()
        record = {"row": i, "request_id": ids[i], "unit_id": units[i] or ids[i]}
        t = time.perf_counter()
        try:
            record.update(session.retrying(lambda: _send(session, str(queries[i]), str(titles[i]), units[i], ids[i]),
                                           f"row {i}"), status="ok")
        except ScoringRejected as e:
            cause = e.__cause__
            record.update(status="refused", reason=cause.message() if callable(getattr(cause, "message", None))
                          else str(e))
        except ServerUnreachable:
            stop.set()
            raise
        record["latency_ms"] = round((time.perf_counter() - t) * 1000, 3)
        with lock:
            append_lines(fd, [record], fsync=False)  # in the OS before the next row: survives a kill of either side
            bar.update(1)

    try:
        with tqdm(total=len(df), initial=len(df) - len(todo), unit="req", desc="replay", disable=not progress) as bar:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                futures = [pool.submit(one, i) for i in todo]
                errors = [f.exception() for f in futures]
    finally:
        os.close(fd)
        if session is not None:
            session.close()
    seconds = time.perf_counter() - t0
    failures = [e for e in errors if e is not None] if todo else []
    bug = next((e for e in failures if not isinstance(e, ServerUnreachable)), None)
    if bug is not None:
        raise bug
    failure = failures[0] if failures else None
    if failure is not None:
        answered = len(read_lines(journal_path)[0])
        raise ServerUnreachable(f"{failure}\nThe replay stopped with {answered} of {len(df)} rows answered, kept in "
                                f"{journal_path}: run the same command again once the server answers and it sends "
                                "only the rest") from failure
    return _finish(df, out_dir, journal_path, reasons, ids, len(todo), len(seen), seconds)


def _finish(df, out_dir: Path, journal_path: Path, reasons, ids, sent: int, resumed: int, seconds: float) -> dict:
    records, _ = read_lines(journal_path)
    by_row = {}
    for r in records:  # a row is in the journal once; keep the first if a crash ever doubled one
        by_row.setdefault(int(r["row"]), r)
    answered = [r for _, r in sorted(by_row.items()) if r.get("status") == "ok"]
    responses = pd.DataFrame([{k: r.get(k) for k in RESPONSE_COLUMNS} for r in answered], columns=RESPONSE_COLUMNS)
    write_parquet(out_dir / "responses.parquet", responses)
    rejects = [{"row": i, "request_id": ids[i], "reason": reason} for i, reason in enumerate(reasons) if reason]
    rejects += [{"row": row, "request_id": r["request_id"], "reason": f"refused by the router: {r.get('reason')}"}
                for row, r in sorted(by_row.items()) if r.get("status") != "ok"]
    rejects.sort(key=lambda r: r["row"])
    write_text(out_dir / "rejects.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    return {"rows": len(df), "answered": len(answered), "refused": len(by_row) - len(answered),
            "rejected": sum(bool(r) for r in reasons), "sent": sent, "resumed": resumed, "seconds": seconds,
            "requests_per_s": sent / seconds if seconds > 0 and sent else None,
            "responses": out_dir / "responses.parquet", "rejects": out_dir / "rejects.jsonl"}
