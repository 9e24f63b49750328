"""The exposure log: which arm and version served which unit, appended durably, read back without trusting a crash.

One JSON object per line, one line per scored row of a routed request. A writer only ever appends to a file it
created itself (a new server process never reopens an old file), flushes every batch (and fsyncs it unless told
not to), and rotates to a new file past a size, so a crash can leave at most one torn line, at the end of the
file it was writing. The reader takes every complete line of every file, counts a torn last line (skipped) and
any line that is not a record (skipped, counted apart: that is corruption, not a crash), and never raises on
content. The replay client's journal uses the same line format and reader.

Standard library only: ``write_router`` copies this file beside the router's model.py, which runs in the
Triton server's environment.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

# One record per scored row of a routed request. `row`: the row's place in its request (a request may carry
# several rows); `unit_from`: "UNIT_ID" when the client sent a unit id, "request_id" when the router fell back
# to the request id; `latency_ms`: the router's call to the served version for this row's batch.
FIELDS = ("ts", "request_id", "row", "unit_id", "unit_from", "experiment", "arm", "version", "label", "tier",
          "score", "latency_ms")
PREFIX, SUFFIX = "exposures-", ".jsonl"


def check_writable(folder) -> Path:
    """Create `folder` if needed and prove a file can be written, synced and removed in it; raise PermissionError
    naming the folder otherwise. Folders this check created are removed again, so a server that never routes a
    request leaves nothing behind."""
    folder = Path(folder).absolute()
    created, parent = [], folder
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        for attempt in range(3):  # another server's check may remove a folder it created just as this one begins
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            os.write(fd, b"{}\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"exposure folder {folder} is not writable ({e.strerror or e}); the router refuses "
                              "to serve traffic it cannot log: fix the folder's permissions or point the router "
                              "at a writable one (RELKD_EXPOSURES, or online.exposures in params.yaml and "
                              "re-export)") from e
    for path in created:  # innermost first
        try:
            path.rmdir()
        except OSError:
            break
    return folder


def append_lines(fd: int, records, fsync: bool) -> int:
    """Append `records` as JSON lines with one write (O_APPEND: whole, in order), then fsync if asked; returns the
    bytes written."""
    data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode()
    view = memoryview(data)
    while view:  # a regular file takes it in one write; the loop covers a short write all the same
        view = view[os.write(fd, view):]
    if fsync:
        os.fsync(fd)
    return len(data)


class ExposureLog:
    """Appends exposure records to ``folder/exposures-<start time>-<pid>-<n>.jsonl``, rotating past `rotate_bytes`.

    The file is created on the first write: a server that routes nothing writes nothing.
    """

    def __init__(self, folder, rotate_bytes: int = 64 << 20, fsync: bool = True):
        if rotate_bytes < 1:
            raise ValueError(f"rotate_bytes must be >= 1, got {rotate_bytes}")
        self.folder, self.rotate_bytes, self.fsync = check_writable(folder), int(rotate_bytes), bool(fsync)
        self.stem = f"{PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
        self.fd, self.size, self.count = None, 0, 0

    @property
    def path(self) -> Path:
        return self.folder / f"{self.stem}-{self.count:05d}{SUFFIX}"

    def write(self, records) -> None:
        """Append `records` (dicts with FIELDS) durably before the caller answers the requests they describe."""
        if not records:
            return
        if self.fd is None or self.size >= self.rotate_bytes:
            self._rotate()
        self.size += append_lines(self.fd, records, self.fsync)

    def _rotate(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.count += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:  # O_EXCL: a file is only ever written by the writer that created it
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                self.count += 1
        self.size = 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_lines(path) -> tuple[list[dict], dict]:
    """(records, counts) of one JSON-lines file: counts = {torn, corrupt}. The last line without its newline is a
    write a crash cut short (torn); any other line that is not a JSON object is corrupt. Both are skipped."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    records, counts = [], {"torn": 0, "corrupt": 0}
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            counts["corrupt"] += 1
    if tail.strip():
        counts["torn"] += 1
    return records, counts


def read_folder(folder) -> tuple[list[dict], dict]:
    """Every record of every exposure file in `folder`, in file-name order (start time, pid, rotation), and
    {files, records, torn, corrupt, missing_fields}. A record lacking one of FIELDS is counted and skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"exposure folder {folder} does not exist; it is where the router writes (the "
                                "RELKD_EXPOSURES it was started with, else online.exposures)")
    files = sorted(folder.glob(f"{PREFIX}*{SUFFIX}"))
    records, counts = [], {"files": len(files), "records": 0, "torn": 0, "corrupt": 0, "missing_fields": 0}
    for path in files:
        found, c = read_lines(path)
        counts["torn"] += c["torn"]
        counts["corrupt"] += c["corrupt"]
        for r in found:
            if all(k in r for k in FIELDS):
                records.append(r)
            else:
                counts["missing_fields"] += 1
    counts["records"] = len(records)
    return records, counts
