"""Atomic file writes: a reader never sees half a file, and a killed stage leaves no torn output."""
from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path


def new_path(folder: Path, prefix: str, suffix: str, directory: bool = False) -> Path:
    """Create an empty file (or folder) of a name not yet taken in `folder`, with the permissions the umask
    gives a new one (0666 / 0777 less the umask, as `open` and `mkdir` make them): tempfile's are 0600 / 0700,
    which the consumers of an output, often another user, cannot read."""
    while True:
        path = Path(folder) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            if directory:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds. The file gets
    the permissions of any new file (the umask's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_path(path.parent, f".{path.name}.", ".tmp")
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=_jsonable) + "\n")


def write_parquet(path: str | Path, df) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def write_jsonl(path: str | Path, records) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
