"""Batch scoring through Triton: sends the rows that can be scored in batches with retries, writes resumable shards.

Rows that cannot be scored (a line that does not parse, a repeated id; missing, empty, non-UTF-8 or over-long
text: relkd.serving.inputs) go to the rejects with a reason, so every input row ends up either scored or
rejected. Shards cover fixed row ranges, so a resumed run makes the same rows, labels and tiers as an
uninterrupted one; the probabilities may differ in their last float32 digits, since the server pads each
batch to its longest pair and which requests it batches together is up to the timing. A run stopped by a
full disk, a dead server or a stop signal says how many rows its finished shards keep and that the same
command resumes (docs/reliability.md).
"""
from __future__ import annotations

import errno
import hashlib
import json
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from relkd.io import write_json, write_parquet, write_text
from relkd.serving.config import ScoreConfig, TritonConfig
from relkd.serving.inputs import check_columns, check_input, duplicate_ids, row_ids, row_problems
from relkd.serving.server import START_HINT, ServerUnreachable

# The library's defaults are the typed configs' (params.yaml's `score` and `triton` sections): one home.
DEFAULT_MODEL = TritonConfig().model_name
OUTPUTS = ("PROBS", "LABEL", "TIER", "SCORE")
EXPLAIN = "EXPLAIN_ID"  # asked for only with explain=True: the server then runs the nearest-rationale lookup
SCORE_COLUMNS = ["row", "id", "version", "label", "tier", "score", "probs", "explain_id"]
REJECT_COLUMNS = ["row", "id", "reason"]
# Failures worth another try: the server is (re)starting, overloaded or briefly unreachable.
_TRANSIENT_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED",
                   "StatusCode.ABORTED"}
# A write that fails for want of space: the device is full (ENOSPC) or the user's quota is spent (EDQUOT).
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class ScoringRejected(RuntimeError):
    """The server refused a batch for a reason a retry cannot fix (a request or model error)."""


class DiskFull(OSError):
    """A scoring run's output could not be written for want of space; its message says what is kept and how
    to resume."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ScoringStopped(KeyboardInterrupt):
    """A scoring run stopped by Ctrl-C or a stop signal; its message says how many rows are kept and how to
    resume. A KeyboardInterrupt still, for callers that only know that one."""


def _protocol(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    elif protocol == "http":
        import tritonclient.http as module
    else:
        raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    return module


def _transient(exc: Exception) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    status = exc.status() if hasattr(exc, "status") and callable(exc.status) else None
    if status is None:
        return False
    status = str(status)
    return status in _TRANSIENT_GRPC or (status.isdigit() and int(status) >= 500)


def _with_retries(call, what: str, url: str, retries: int, backoff: float):
    """`call()` retried with exponential backoff on transient failures only."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - classified just below
            if not _transient(e):
                message = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
                raise ScoringRejected(f"Triton at {url} refused {what}: {message}") from e
            if attempt == retries:
                raise ServerUnreachable(
                    f"Triton at {url} failed {what} {retries + 1} time(s), last with {type(e).__name__}: {e}; "
                    f"{START_HINT}") from e
            time.sleep(backoff * 2 ** attempt)


class _Session:
    """A scoring run's connection and settings: one tritonclient per worker thread (clients are not shared
    between threads), the model version asked for and how requests are sent (`config`, the `score` section)."""

    def __init__(self, module, url: str, timeout: float, model_name: str, version: str, config: ScoreConfig):
        self.module, self.url, self.timeout = module, url, timeout
        self.model_name, self.version, self.config = model_name, str(version), config
        self.batch_size = config.batch_size  # lowered to the server's max_batch_size once it is known
        self.local, self.all, self.lock = threading.local(), [], threading.Lock()

    def retrying(self, call, what: str):
        return _with_retries(call, what, self.url, self.config.retries, self.config.backoff)

    def get(self):
        client = getattr(self.local, "client", None)
        if client is None:
            if self.module.__name__.endswith("http"):
                client = self.module.InferenceServerClient(self.url, connection_timeout=self.timeout,
                                                           network_timeout=self.timeout)
            else:
                client = self.module.InferenceServerClient(self.url)
            self.local.client = client
            with self.lock:
                self.all.append(client)
        return client

    def close(self):
        for client in self.all:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection is best effort
                pass


def _preflight(session: _Session) -> int:
    """Fail early and clearly when the server or the model version is not there; returns max_batch_size."""
    client, url, model_name, version = session.get(), session.url, session.model_name, session.version
    if not session.retrying(client.is_server_live, "a health check"):
        raise ServerUnreachable(f"the server at {url} answers but is not live; {START_HINT}")
    ready = session.retrying(lambda: client.is_model_ready(model_name, version), "a model-ready check")
    if not ready:
        index = session.retrying(client.get_model_repository_index, "the repository index")
        if not isinstance(index, list):  # gRPC answers a protobuf message
            index = [{"name": m.name, "version": m.version, "state": m.state} for m in index.models]
        loaded = [f"{m['name']}:{m.get('version', '')} ({m.get('state', '')})" for m in index]
        raise ScoringRejected(f"model {model_name!r} version {version or '(default)'!r} is not ready on {url}; "
                              f"the server has {loaded}. Check `relkd serve --check` and the version policy")
    config = session.retrying(lambda: client.get_model_config(model_name, version), "the model config")
    config = config.get("config", config) if isinstance(config, dict) else config.config
    return int(config["max_batch_size"] if isinstance(config, dict) else config.max_batch_size)


def _infer_batch(session: _Session, queries: list[str], titles: list[str]) -> dict:
    module, client, explain = session.module, session.get(), session.config.explain
    n = len(queries)
    inputs = []
    for name, texts in (("QUERY", queries), ("TITLE", titles)):
        tensor = module.InferInput(name, [n, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_).reshape(n, 1))
        inputs.append(tensor)
    names = OUTPUTS + ((EXPLAIN,) if explain else ())
    outputs = [module.InferRequestedOutput(name) for name in names]
    kwargs = {"client_timeout": session.timeout} if module.__name__.endswith("grpc") else {}
    result = client.infer(session.model_name, inputs, model_version=session.version, outputs=outputs, **kwargs)
    response = result.get_response()
    served = response["model_version"] if isinstance(response, dict) else response.model_version
    got = {name: result.as_numpy(name) for name in names}
    return {
        "version": str(served),
        "label": [b.decode("utf-8") for b in got["LABEL"].reshape(-1)],
        "tier": got["TIER"].reshape(-1).astype(np.int32),
        "score": got["SCORE"].reshape(-1).astype(np.float32),
        "probs": list(got["PROBS"].astype(np.float32)),
        "explain_id": [b.decode("utf-8") for b in got[EXPLAIN].reshape(-1)] if explain else [""] * n,
    }


def _score(df: pd.DataFrame, rows: np.ndarray, session: _Session, bar, known: dict | None = None) -> pd.DataFrame:
    """All rows of `df` (input rows `rows`) with either their scores or a reject reason (column
    reject_reason); `known` (input row -> reason) rejects the rows that could not be parsed or repeat an id."""
    reasons = row_problems(df, rows, session.config.max_chars, known)
    ok = np.array([not r for r in reasons], dtype=bool)
    ids = row_ids(df, rows)
    queries, titles = df["query"].tolist(), df["title"].tolist()
    # Requests of similar lengths: the server pads each batch to its own longest pair, so sorting the rows
    # by length (results go back to their places below) cuts the padding the model computes on.
    good = np.flatnonzero(ok)
    good = good[np.argsort([len(str(queries[i])) + len(str(titles[i])) for i in good], kind="stable")]
    batches = [good[i:i + session.batch_size] for i in range(0, len(good), session.batch_size)]
    if bar is not None:
        bar.update(int((~ok).sum()))

    def run(idx):
        shown = sorted(int(rows[i]) for i in idx)
        what = f"{len(idx)} row(s) ({', '.join(map(str, shown[:5]))}{', ...' if len(shown) > 5 else ''})"
        out = session.retrying(
            lambda: _infer_batch(session, [str(queries[i]) for i in idx], [str(titles[i]) for i in idx]), what)
        if bar is not None:
            bar.update(len(idx))
        return out

    results = [None] * len(batches)
    with ThreadPoolExecutor(max_workers=max(1, session.config.concurrency)) as pool:
        futures = {pool.submit(run, idx): k for k, idx in enumerate(batches)}
        try:
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # a stop signal: the batches not yet sent are dropped, not waited for
            for f in futures:
                f.cancel()
            raise
        for f in pending:
            f.cancel()
        for f in done:
            results[futures[f]] = f.result()  # re-raises the first failure

    n = len(df)
    frame = {"row": rows.astype(np.int64), "id": ids, "version": [None] * n, "label": [None] * n,
             "tier": [None] * n, "score": [None] * n, "probs": [None] * n, "explain_id": [None] * n}
    for idx, out in zip(batches, results):
        for j, i in enumerate(idx):
            frame["version"][i] = out["version"]
            frame["label"][i] = out["label"][j]
            frame["tier"][i] = int(out["tier"][j])
            frame["score"][i] = float(out["score"][j])
            frame["probs"][i] = out["probs"][j]
            frame["explain_id"][i] = out["explain_id"][j]
    result = pd.DataFrame(frame)
    result["tier"] = result["tier"].astype("Int32")
    result["score"] = result["score"].astype("Float32")
    result["reject_reason"] = [r or None for r in reasons]
    return result


def _split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    rejected = frame["reject_reason"].notna()
    scores = frame.loc[~rejected, SCORE_COLUMNS].reset_index(drop=True)
    scores["tier"] = scores["tier"].astype(np.int32)
    scores["score"] = scores["score"].astype(np.float32)
    scores["probs"] = [np.asarray(p, dtype=np.float32) for p in scores["probs"]]
    rejects = frame.loc[rejected, ["row", "id", "reject_reason"]].rename(columns={"reject_reason": "reason"})
    return scores, rejects.reset_index(drop=True)


def _open(url: str, model_name: str, version, config: ScoreConfig, timeout: float) -> _Session:
    """A session on a live server serving the model version."""
    session = _Session(_protocol(config.protocol), url, timeout, model_name, version, config)
    try:
        max_batch = _preflight(session)
    except BaseException:
        session.close()
        raise
    # The server refuses requests over its max_batch_size; a larger batch_size is split, not an error.
    if max_batch > 0:
        session.batch_size = min(session.batch_size, max_batch)
    return session


def score_frame(df: pd.DataFrame, url: str, config: ScoreConfig = ScoreConfig(), model_name: str = DEFAULT_MODEL,
                version: str | int = "", timeout: float = 60.0,
                progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score (query, title[, id]) rows on the Triton server at `url` (host:port of its gRPC or HTTP
    endpoint, per ``config.protocol``); `config` is the `score` section (batch size, concurrency, retries,
    max_chars, explain); `version` '' lets the server pick (the highest served version).

    Returns (scores, rejects), both in input order. scores: row (position in `df`), id (the id
    column as text, else the row), version (the one that answered), label, tier, score, probs
    (float32 array in the model's label order), explain_id ('' unless ``config.explain``). rejects: row, id,
    reason (a row whose id an earlier row has is rejected: :func:`relkd.serving.inputs.duplicate_ids`).
    """
    check_columns(df, "the frame")
    session = _open(url, model_name, version, config, timeout)
    try:
        with tqdm(total=len(df), unit="row", desc="score", disable=not progress) as bar:
            frame = _score(df, np.arange(len(df)), session, bar, duplicate_ids(df))
    finally:
        session.close()
    return _split(frame)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Shards:
    """The shard files of a run over `n` input rows: which exist, the rows they keep, and what to say when the
    run stops before the outputs are written."""

    def __init__(self, folder: Path, n: int, size: int):
        self.folder, self.n, self.size = folder, n, size
        self.starts = range(0, n, size)
        self.paths = [folder / f"part-{k:05d}.parquet" for k in range(len(self.starts))]

    def kept(self) -> tuple[int, int]:
        """(finished shards, the input rows they hold)."""
        done = [k for k, p in enumerate(self.paths) if p.exists()]
        return len(done), sum(min(self.size, self.n - self.starts[k]) for k in done)

    def resume_note(self, when: str = "") -> str:
        shards, rows = self.kept()
        return (f"{rows} of {self.n} rows are done and kept; the {shards} finished shard(s) are kept in "
                f"{self.folder}: run the same command again{when} and it resumes there")

    @contextmanager
    def space(self, out_dir: Path):
        """Turns a write that found no space into a DiskFull naming the folder, what is kept and the fix."""
        try:
            yield
        except OSError as e:
            if e.errno not in _NO_SPACE and "No space left on device" not in str(e):
                raise
            raise DiskFull(f"no space left on the device of {out_dir} ({e.strerror or e}); "
                           f"{self.resume_note(' once space is freed on that device')}") from e


def score_file(input_path, out_dir, url: str, config: ScoreConfig = ScoreConfig(), model_name: str = DEFAULT_MODEL,
               version: str | int = "", timeout: float = 60.0, progress: bool = True) -> dict:
    """Score a Parquet/CSV/JSONL file (CSV and JSONL optionally gzipped) into ``out_dir/scores.parquet`` and
    ``out_dir/rejects.jsonl``; `config` is the `score` section (protocol, batch size, concurrency, retries,
    max_chars, shard_size, explain).

    Work is written as shards (``out_dir/shards/part-00000.parquet``, ``config.shard_size`` input rows each,
    written atomically); shards already present are kept, so a killed run resumes where it stopped.
    A manifest pins the input's hash and the settings that change results, so shards of another run
    are never mixed in. Rows repeating an earlier row's id are rejected (:func:`relkd.serving.inputs.duplicate_ids`).
    A full disk raises DiskFull, a dead server ServerUnreachable and Ctrl-C or a stop signal turned into
    KeyboardInterrupt raises ScoringStopped, each saying what is kept and that the same command resumes.
    Returns a summary {rows, scored, rejected, duplicate_ids, shards, shards_reused, scores, rejects}.
    """
    input_path, out_dir = Path(input_path), Path(out_dir)
    df, known = check_input(input_path)
    duplicates = duplicate_ids(df)
    known = {**duplicates, **known}  # a line that did not parse has no id: its own reason stands
    shards = _Shards(out_dir / "shards", len(df), config.shard_size)
    manifest = {"input": str(input_path.resolve()), "input_sha256": _sha256(input_path), "rows": len(df),
                "model_name": model_name, "version": str(version), "shard_size": config.shard_size,
                "max_chars": config.max_chars, "explain": config.explain, "duplicate_ids": "later rejected"}
    manifest_path = shards.folder / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if {k: v for k, v in old.items() if k != "input"} != {k: v for k, v in manifest.items() if k != "input"}:
            changed = sorted(k for k in manifest if k != "input" and old.get(k) != manifest[k])
            raise ValueError(f"{shards.folder} holds shards of another run (different {changed}); delete "
                             f"{shards.folder} or choose another out_dir")
    try:
        with shards.space(out_dir):
            if not manifest_path.exists():
                write_json(manifest_path, manifest)
            for stale in shards.folder.glob(".part-*.tmp"):  # half-written shards of a killed run
                stale.unlink(missing_ok=True)
            todo = [k for k, p in enumerate(shards.paths) if not p.exists()]
            if todo:
                _score_shards(df, known, shards, todo, url, model_name, version, config, timeout, progress)
            return _assemble(shards, out_dir, len(df), len(duplicates), reused=len(shards.paths) - len(todo))
    except KeyboardInterrupt as e:
        if isinstance(e, ScoringStopped):
            raise
        raise ScoringStopped(f"scoring stopped: {shards.resume_note()}") from None


def _score_shards(df, known, shards: _Shards, todo: list[int], url, model_name, version, config: ScoreConfig,
                  timeout: float, progress: bool) -> None:
    session = _open(url, model_name, version, config, timeout)
    try:
        done_rows = shards.kept()[1]
        with tqdm(total=len(df), initial=done_rows, unit="row", desc="score", disable=not progress) as bar:
            for k in todo:
                start = shards.starts[k]
                part = df.iloc[start:start + shards.size]
                rows = np.arange(start, start + len(part))
                try:
                    frame = _score(part, rows, session, bar, known)
                except ServerUnreachable as e:
                    raise ServerUnreachable(
                        f"{e}\nStopped at shard {k} of {len(shards.paths)} (rows {start}-{start + len(part) - 1}); "
                        + shards.resume_note(" once the server answers (a restarted server may have another --url)")
                    ) from e
                write_parquet(shards.paths[k], frame)
    finally:
        session.close()


def _assemble(shards: _Shards, out_dir: Path, n: int, duplicates: int, reused: int) -> dict:
    """scores.parquet and rejects.jsonl from the finished shards, and the run's summary."""
    frame = pd.concat([pd.read_parquet(p) for p in shards.paths], ignore_index=True) if shards.paths else \
        pd.DataFrame(columns=SCORE_COLUMNS + ["reject_reason"])
    scores, rejects = _split(frame)
    write_parquet(out_dir / "scores.parquet", scores)
    # A missing id reads back from the shards as NaN, which is not JSON: null it is.
    lines = [json.dumps({"row": int(r.row), "id": None if pd.isna(r.id) else r.id, "reason": r.reason},
                        ensure_ascii=False)
             for r in rejects.itertuples(index=False)]
    write_text(out_dir / "rejects.jsonl", "".join(line + "\n" for line in lines))
    return {"rows": n, "scored": len(scores), "rejected": len(rejects), "duplicate_ids": duplicates,
            "shards": len(shards.paths), "shards_reused": reused, "scores": out_dir / "scores.parquet",
            "rejects": out_dir / "rejects.jsonl"}
