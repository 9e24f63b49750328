"""Batch scoring through Triton: validates rows, sends batches with retries, writes resumable shards.

Rows that cannot be scored (a line that does not parse; missing, empty, non-UTF-8 or over-long text)
go to the rejects with a reason, so every input row ends up either scored or rejected. Shards cover
fixed row ranges, so a resumed run makes the same rows, labels and tiers as an uninterrupted one; the
probabilities may differ in their last float32 digits, since the server pads each batch to its longest
pair and which requests it batches together is up to the timing.
"""
from __future__ import annotations

import csv
import hashlib
import json
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from relkd.io import write_json, write_parquet, write_text
from relkd.serving.config import ScoreConfig, TritonConfig
from relkd.serving.server import START_HINT, ServerUnreachable
from relkd.serving.triton_model import text_problem

# The library's defaults are the typed configs' (params.yaml's `score` and `triton` sections): one home.
_SCORE = ScoreConfig()
DEFAULT_MODEL = TritonConfig().model_name
OUTPUTS = ("PROBS", "LABEL", "TIER", "SCORE")
EXPLAIN = "EXPLAIN_ID"  # asked for only with explain=True: the server then runs the nearest-rationale lookup
SCORE_COLUMNS = ["row", "id", "version", "label", "tier", "score", "probs", "explain_id"]
REJECT_COLUMNS = ["row", "id", "reason"]
# Failures worth another try: the server is (re)starting, overloaded or briefly unreachable.
_TRANSIENT_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED",
                   "StatusCode.ABORTED"}


class ScoringRejected(RuntimeError):
    """The server refused a batch for a reason a retry cannot fix (a request or model error)."""


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


def validate(df: pd.DataFrame, max_chars: int) -> tuple[np.ndarray, list[str]]:
    """(ok mask, reasons): each row's reason is '' when it can be sent, else what is wrong."""
    reasons = []
    for query, title in zip(df["query"].tolist(), df["title"].tolist()):
        problems = []
        for name, value in (("query", query), ("title", title)):
            text, problem = text_problem(value)
            if problem is None and len(text) > max_chars:
                problem = (f"has {len(text)} characters, over max_chars={max_chars} (the model reads only its "
                           f"first max_length tokens; shorten the text or raise max_chars)")
            if problem:
                problems.append(f"{name} {problem}")
        reasons.append("; ".join(problems))
    return np.array([not r for r in reasons], dtype=bool), reasons


def _check_columns(df: pd.DataFrame, source: str) -> None:
    missing = [c for c in ("query", "title") if c not in df.columns]
    if missing:
        raise ValueError(f"{source} has no column {missing} (columns: {_shown(list(df.columns))}); scoring needs "
                         f"'query' and 'title' (and optionally 'id'): rename the columns that hold them")


def _ids(df: pd.DataFrame, rows: np.ndarray) -> list[str | None]:
    if "id" not in df.columns:
        return [str(r) for r in rows]
    return [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in df["id"].tolist()]


class _Session:
    """A scoring run's connection and settings: one tritonclient per worker thread (clients are not shared
    between threads), the model version asked for and how requests are sent."""

    def __init__(self, module, url: str, timeout: float, model_name: str, version: str, batch_size: int,
                 concurrency: int, retries: int, backoff: float, max_chars: int, explain: bool):
        self.module, self.url, self.timeout = module, url, timeout
        self.model_name, self.version = model_name, str(version)
        self.batch_size, self.concurrency, self.retries, self.backoff = batch_size, concurrency, retries, backoff
        self.max_chars, self.explain = max_chars, explain
        self.local, self.all, self.lock = threading.local(), [], threading.Lock()

    def retrying(self, call, what: str):
        return _with_retries(call, what, self.url, self.retries, self.backoff)

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
    module, client, explain = session.module, session.get(), session.explain
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


def _score(df: pd.DataFrame, rows: np.ndarray, session: _Session, bar, read_errors: dict | None = None) -> pd.DataFrame:
    """All rows of `df` with either their scores or a reject reason (column reject_reason);
    `read_errors` (input row -> reason) rejects the rows that could not be parsed."""
    ok, reasons = validate(df, session.max_chars)
    if read_errors:
        reasons = [read_errors.get(int(r)) or reason for r, reason in zip(rows, reasons)]
        ok = np.array([not r for r in reasons], dtype=bool)
    ids = _ids(df, rows)
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
    with ThreadPoolExecutor(max_workers=max(1, session.concurrency)) as pool:
        futures = {pool.submit(run, idx): k for k, idx in enumerate(batches)}
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
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


def _open(url: str, protocol: str, timeout: float, **settings) -> _Session:
    """A session on a live server serving the model version; `settings` are _Session's."""
    if settings["batch_size"] < 1:
        raise ValueError(f"batch_size must be >= 1, got {settings['batch_size']}")
    session = _Session(_protocol(protocol), url, timeout, **settings)
    try:
        max_batch = _preflight(session)
    except BaseException:
        session.close()
        raise
    # The server refuses requests over its max_batch_size; a larger batch_size is split, not an error.
    if max_batch > 0:
        session.batch_size = min(session.batch_size, max_batch)
    return session


def score_frame(df: pd.DataFrame, url: str, protocol: str = _SCORE.protocol, model_name: str = DEFAULT_MODEL,
                version: str | int = "", batch_size: int = _SCORE.batch_size, concurrency: int = _SCORE.concurrency,
                retries: int = _SCORE.retries, backoff: float = _SCORE.backoff, max_chars: int = _SCORE.max_chars,
                timeout: float = 60.0, explain: bool = _SCORE.explain,
                progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score (query, title[, id]) rows on the Triton server at `url` (host:port of its gRPC or HTTP
    endpoint, per `protocol`); `version` '' lets the server pick (the highest served version).

    Returns (scores, rejects), both in input order. scores: row (position in `df`), id (the id
    column as text, else the row), version (the one that answered), label, tier, score, probs
    (float32 array in the model's label order), explain_id ('' unless `explain`). rejects: row, id, reason.
    """
    _check_columns(df, "the frame")
    session = _open(url, protocol, timeout, model_name=model_name, version=version, batch_size=batch_size,
                    concurrency=concurrency, retries=retries, backoff=backoff, max_chars=max_chars, explain=explain)
    try:
        with tqdm(total=len(df), unit="row", desc="score", disable=not progress) as bar:
            frame = _score(df, np.arange(len(df)), session, bar)
    finally:
        session.close()
    return _split(frame)


# What each input format must look like, for the errors that name a file that is not like that.
EXPECTED = {
    "CSV": "a UTF-8 CSV file whose first line is the header naming the columns query and title (optionally "
           "id), then one row per line, with fields that contain commas or quotes in double quotes",
    "JSONL": 'a UTF-8 text file with one JSON object per line, with the keys "query" and "title" (optionally "id")',
    "Parquet": "a Parquet file with the string columns query and title (optionally id)",
}
_FORMATS = {".parquet": "Parquet", ".csv": "CSV", ".jsonl": "JSONL", ".ndjson": "JSONL"}


class UnreadableInput(ValueError):
    """An input file that is not a table of the format its suffix names."""

    def __init__(self, path, fmt: str, why: str, fix: str):
        super().__init__(f"cannot read {path} as {fmt}: {why}. Expected {EXPECTED[fmt]}; {fix}")


def _shown(values, limit: int = 8) -> str:
    shown = [repr(v)[:40] for v in list(values)[:limit]]
    return "[" + ", ".join(shown) + (f", ... ({len(values)} in all)" if len(values) > limit else "") + "]"


def _not_text(value: str) -> str | None:
    """What makes `value` binary data rather than a header: its first undecodable byte (a lone
    surrogate) or control character; None for text."""
    for i, c in enumerate(value):
        if 0xDC80 <= ord(c) <= 0xDCFF:
            return f"byte 0x{ord(c) - 0xDC00:02x} at position {i} is not UTF-8"
        if ord(c) < 32 and c not in "\t\r\n":
            return f"control character 0x{ord(c):02x} at position {i}"
    return None


def _read_csv(path: Path) -> tuple[pd.DataFrame, dict[int, str]]:
    """One row per CSV record after the header; a record with the wrong number of fields (or one the
    csv module cannot parse) stays a row of its own, empty, with its line numbers in the reason."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        lines = f.readlines()
    if not "".join(lines).strip():
        raise UnreadableInput(path, "CSV", "the file is empty", "write the header line and the rows")
    reader = csv.reader(iter(lines))
    header, header_line, records, errors, end = None, 0, [], {}, 0
    while True:
        start = end + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            end = reader.line_num
            if header is None:
                raise UnreadableInput(path, "CSV", f"its first line cannot be parsed ({e})",
                                      "check that the file is a CSV table (and not another format renamed)") from e
            errors[len(records)] = f"{_lines(start, end)} cannot be parsed as CSV ({e}); fix or remove the row"
            records.append(None)
            continue
        end = reader.line_num
        if not record:  # a blank line (a line of empty fields, ",,", is a row: rejected as empty)
            continue
        if header is None:
            header, header_line = record, start
            binary = _not_text(",".join(header))
            if "query" not in header and "title" not in header and binary:
                raise UnreadableInput(path, "CSV", f"its first line is not a header of column names but binary "
                                      f"data ({binary})",
                                      "check that the file is a CSV table (and not another format renamed)")
            twice = sorted({c for c in header if header.count(c) > 1})
            if twice:
                raise UnreadableInput(path, "CSV", f"the header (line {start}) names the column(s) {twice} more than "
                                      f"once", "give every column its own name")
            continue
        why = None
        if end == len(lines) and "".join(lines[start - 1:end]).count('"') % 2:  # closed quotes come in pairs
            why = "opens a quoted field that is never closed (it runs to the end of the file); close the quote"
        elif len(record) != len(header):
            why = (f"has {len(record)} field(s), the header (line {header_line}) has {len(header)} "
                   f"({','.join(header)}); quote fields that contain a comma and give every row {len(header)} fields")
        if why:
            errors[len(records)] = f"{_lines(start, end)} {why}"
            records.append(None)
            continue
        records.append(record)
    if header is None:
        raise UnreadableInput(path, "CSV", "the file has no header line", "write the header line and the rows")
    frame = pd.DataFrame([r if r is not None else [None] * len(header) for r in records], columns=header,
                         dtype=object)
    return frame, errors


def _lines(start: int, end: int) -> str:
    return f"line {start}" if start == end else f"lines {start}-{end}"


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, dict[int, str]]:
    """One row per non-blank line; a line that is not a JSON object stays an empty row with the reason."""
    records, errors = [], {}
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                what = f"{e.msg.removesuffix(' at')} at column {e.colno}"
                errors[len(records)] = f"line {n} is not a JSON object ({what}); write one JSON object per line"
                record = {}
            if not isinstance(record, dict):
                errors[len(records)] = (f"line {n} is a JSON {type(record).__name__}, not an object; write one "
                                        f'object per line, e.g. {{"query": "...", "title": "..."}}')
                record = {}
            records.append(record)
    if not records:
        raise UnreadableInput(path, "JSONL", "the file is empty", "write one JSON object per line")
    if len(errors) == len(records):
        first = next(iter(errors.values()))
        raise UnreadableInput(path, "JSONL", f"none of its {len(records)} non-blank line(s) is a JSON object "
                              f"({first.split(';')[0]})",
                              "check that the file is JSONL (and not another format renamed)")
    return pd.DataFrame(records, dtype=object), errors


def read_rows(path) -> tuple[pd.DataFrame, dict[int, str]]:
    """(frame, errors) of a parquet, CSV or JSONL file: one row per record, object-typed, and the rows
    that could not be parsed (row -> reason naming the line; those rows are empty in the frame), so a
    broken line is rejected alone. Undecodable bytes in CSV/JSONL become lone surrogates (rejected per
    row later). A file that is not a table of its format at all raises UnreadableInput."""
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot read {path}: expected .parquet, .csv or .jsonl, got "
                         f"{path.suffix.lower() or 'no suffix'!r}")
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} not found")
    if fmt == "CSV":
        df, errors = _read_csv(path)
    elif fmt == "JSONL":
        df, errors = _read_jsonl(path)
    else:
        import pyarrow as pa

        try:
            df, errors = pd.read_parquet(path), {}
        except (pa.ArrowException, OSError, ValueError) as e:
            why = "the file is empty" if path.stat().st_size == 0 else f"pyarrow says: {str(e).rstrip('.')}"
            raise UnreadableInput(path, "Parquet", why, "write it with pandas.DataFrame.to_parquet (or "
                                  "pyarrow), or give a .csv/.jsonl file its own suffix") from e
    return (df.astype(object) if len(df.columns) else df), errors


def read_table(path) -> pd.DataFrame:
    """The frame of `read_rows` (rows that could not be parsed are empty, at their positions)."""
    return read_rows(path)[0]


def check_input(path) -> tuple[pd.DataFrame, dict[int, str]]:
    """`read_rows` of a file to score, which must have the query and title columns; raises a
    ValueError naming the file and the fix otherwise (before any server is started or asked)."""
    df, errors = read_rows(path)
    _check_columns(df, str(path))
    return df, errors


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def score_file(input_path, out_dir, url: str, protocol: str = _SCORE.protocol, model_name: str = DEFAULT_MODEL,
               version: str | int = "", batch_size: int = _SCORE.batch_size, concurrency: int = _SCORE.concurrency,
               retries: int = _SCORE.retries, backoff: float = _SCORE.backoff, max_chars: int = _SCORE.max_chars,
               timeout: float = 60.0, shard_size: int = _SCORE.shard_size, explain: bool = _SCORE.explain,
               progress: bool = True) -> dict:
    """Score a parquet/CSV/JSONL file into ``out_dir/scores.parquet`` and ``out_dir/rejects.jsonl``.

    Work is written as shards (``out_dir/shards/part-00000.parquet``, `shard_size` input rows each,
    written atomically); shards already present are kept, so a killed run resumes where it stopped.
    A manifest pins the input's hash and the settings that change results, so shards of another run
    are never mixed in. Returns a summary {rows, scored, rejected, shards, shards_reused, scores, rejects}.
    """
    input_path, out_dir = Path(input_path), Path(out_dir)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    df, read_errors = check_input(input_path)
    shard_dir = out_dir / "shards"
    manifest = {"input": str(input_path.resolve()), "input_sha256": _sha256(input_path), "rows": len(df),
                "model_name": model_name, "version": str(version), "shard_size": shard_size, "max_chars": max_chars,
                "explain": explain}
    manifest_path = shard_dir / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if {k: v for k, v in old.items() if k != "input"} != {k: v for k, v in manifest.items() if k != "input"}:
            changed = sorted(k for k in manifest if k != "input" and old.get(k) != manifest[k])
            raise ValueError(f"{shard_dir} holds shards of another run (different {changed}); delete {shard_dir} "
                             f"or choose another out_dir")
    else:
        write_json(manifest_path, manifest)

    for stale in shard_dir.glob(".part-*.tmp"):  # half-written shards of a killed run
        stale.unlink(missing_ok=True)
    starts = range(0, len(df), shard_size)
    paths = [shard_dir / f"part-{k:05d}.parquet" for k in range(len(starts))]
    todo = [k for k, p in enumerate(paths) if not p.exists()]
    if todo:
        session = _open(url, protocol, timeout, model_name=model_name, version=version, batch_size=batch_size,
                        concurrency=concurrency, retries=retries, backoff=backoff, max_chars=max_chars,
                        explain=explain)
        try:
            done_rows = sum(min(shard_size, len(df) - starts[k]) for k in range(len(starts)) if k not in todo)
            with tqdm(total=len(df), initial=done_rows, unit="row", desc="score", disable=not progress) as bar:
                for k in todo:
                    part = df.iloc[starts[k]:starts[k] + shard_size]
                    rows = np.arange(starts[k], starts[k] + len(part))
                    try:
                        frame = _score(part, rows, session, bar, read_errors)
                    except ServerUnreachable as e:
                        kept = sum(p.exists() for p in paths)
                        raise ServerUnreachable(
                            f"{e}\nStopped at shard {k} of {len(paths)} "
                            f"(rows {starts[k]}-{starts[k] + len(part) - 1}); "
                            f"the {kept} finished shard(s) are kept in {shard_dir}: run the same command again "
                            f"once the server answers (a restarted server may have another --url) and it "
                            f"resumes there") from e
                    write_parquet(paths[k], frame)
        finally:
            session.close()

    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True) if paths else \
        pd.DataFrame(columns=SCORE_COLUMNS + ["reject_reason"])
    scores, rejects = _split(frame)
    write_parquet(out_dir / "scores.parquet", scores)
    # A missing id reads back from the shards as NaN, which is not JSON: null it is.
    lines = [json.dumps({"row": int(r.row), "id": None if pd.isna(r.id) else r.id, "reason": r.reason},
                        ensure_ascii=False)
             for r in rejects.itertuples(index=False)]
    write_text(out_dir / "rejects.jsonl", "".join(line + "\n" for line in lines))
    return {"rows": len(df), "scored": len(scores), "rejected": len(rejects), "shards": len(paths),
            "shards_reused": len(paths) - len(todo), "scores": out_dir / "scores.parquet",
            "rejects": out_dir / "rejects.jsonl"}
