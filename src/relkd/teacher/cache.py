"""Content-addressed generation cache: re-runs cost nothing and a killed stage resumes where it stopped.

A key is the sha256 of everything that decides an output: the engine's cache id (backend, dtype, model and the
adapter's hash), the
prompt text, the sampling settings, the seed and the number of samples. Entries live in append-only
JSONL files in one folder, one file per worker (``<folder>/<worker>.jsonl``), one line per entry:
``{"key": ..., "outputs": [...], "meta": {...}}``. Each batch is flushed and fsynced before the next
one is generated, so a kill loses at most the batch in flight; a line torn by the kill is ignored on
reading and cut off before the next append. Reading merges every ``*.jsonl`` in the folder, so N
workers (see :func:`shard`) each write their own file and the merge is just opening the folder.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from relkd.teacher.asking import Asking
from relkd.teacher.config import SamplingConfig

T = TypeVar("T")


# How an answer ends (parsing.answer_end: at its first complete label line); part of every key, so outputs
# cached under an earlier rule are never read back as if they had been cut by this one.
STOP_RULE = "first-label-line-v1"


# The sampling fields that decide a generated text (sampling.k and sampling.seed do not: `n` and `seed` do).
DECODING_FIELDS = ("temperature", "top_p", "top_k", "max_new_tokens", "no_repeat_ngram", "label_choice")


def decoding(sampling: SamplingConfig) -> dict:
    return {k: getattr(sampling, k) for k in DECODING_FIELDS}


def generation_key(model_id: str, prompt: str, n: int, sampling: SamplingConfig, seed: int,
                   labels: Sequence[str] = ()) -> str:
    """sha256 of what decides the outputs (sampling.k is not among them: `n` is the sample count; the label
    set is, when sampling.label_choice chooses the label from it)."""
    payload = {
        "model": model_id, "prompt": prompt, "n": n, "seed": seed, "stop": STOP_RULE,
        "sampling": decoding(sampling), "labels": list(labels) if sampling.label_choice else [],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def shard(items: Iterable[T], num_shards: int, index: int, key: Callable[[T], Hashable] = str) -> list[T]:
    """The items worker `index` of `num_shards` owns, by a stable hash of ``key(item)`` (the same split on
    every machine and run; Python's own ``hash`` of strings changes per process)."""
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} is outside 0..{num_shards - 1}")
    def owner(item: T) -> int:
        digest = hashlib.sha256(str(key(item)).encode()).digest()
        return int.from_bytes(digest[:8], "big") % num_shards
    return [item for item in items if owner(item) == index]


class GenerationCache:
    """The merged view of every worker file in `folder`; writes go to ``<folder>/<worker>.jsonl``."""

    def __init__(self, folder: str | Path, worker: str = "w0"):
        if not worker or any(c in worker for c in "/\\\0") or worker.startswith("."):
            raise ValueError(f"worker name {worker!r} must be a plain file name (e.g. 'w0', 'shard-3')")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{worker}.jsonl"
        self._entries: dict[str, list[str]] = {}
        for f in sorted(self.folder.glob("*.jsonl")):
            self._read(f)

    def _read(self, path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        # Everything after the last newline is a line the writer never finished: a kill mid-append.
        for lineno, raw in enumerate(lines[:-1], 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{lineno} is not a JSON line ({err}); only the last line of a cache file can be torn, "
                    "so this file was edited or corrupted: delete that line (or the file, to regenerate it)"
                ) from None
            self._entries.setdefault(entry["key"], entry["outputs"])

    def get(self, key: str) -> list[str] | None:
        return self._entries.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return list(self._entries)

    def put(self, key: str, value: list[str], meta: dict[str, Any] | None = None) -> None:
        self.put_many([(key, value, meta)])

    def put_many(self, entries: Sequence[tuple[str, list[str], dict[str, Any] | None]]) -> None:
        """Append entries to this worker's file as one durable write (flushed and fsynced)."""
        if not entries:
            return
        text = "".join(
            json.dumps({"key": k, "outputs": list(v), "meta": m or {}}, ensure_ascii=False) + "\n"
            for k, v, m in entries
        )
        with open(self.path, "ab+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # two processes given the same worker name still write whole lines
            try:
                self._cut_torn_tail(fh)
                fh.write(text.encode())
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        for k, v, _ in entries:
            self._entries.setdefault(k, list(v))

    @staticmethod
    def _cut_torn_tail(fh) -> None:
        """Drop a half-written last line so the next append starts on a line of its own."""
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)
        fh.seek(0, os.SEEK_END)


def cached_generate(teacher, cache: GenerationCache, prompts: Sequence[str], asking: Asking,
                    labels: Sequence[str] = (), progress: bool = True) -> list[list[str]]:
    """``teacher.generate`` for the prompts the cache lacks, ``asking.batch_size`` at a time, each batch stored
    before the next starts; returns ``asking.n`` outputs per prompt, in the order of `prompts`. Keys name ``teacher.cache_id``
    (backend, dtype, model, adapter), so one engine never reads another's answers.

    Repeated prompts are generated once. The missing prompts are batched in their order, so a run resumed
    after a kill forms the same batches as an uninterrupted one and (with the backends' per-batch seeding)
    gets the same outputs.
    """
    model_id, n, sampling, seed, batch_size = teacher.cache_id, asking.n, asking.sampling, asking.seed, asking.batch_size
    keys = [generation_key(model_id, p, n, sampling, seed, labels) for p in prompts]
    missing: dict[str, str] = {}
    for k, p in zip(keys, prompts):
        if k not in cache and k not in missing:
            missing[k] = p
    todo = list(missing.items())
    meta = {"model_id": model_id, "n": n, "seed": seed, **{f"sampling.{k}": v for k, v in decoding(sampling).items()}}
    with tqdm(total=len(todo), desc=f"generating x{n}", unit="prompt", disable=not progress or not todo) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            outputs = teacher.generate([p for _, p in batch], n, sampling, seed, labels)
            if len(outputs) != len(batch) or any(len(o) != n for o in outputs):
                raise RuntimeError(f"backend returned {[len(o) for o in outputs]} outputs for {len(batch)} "
                                   f"prompts x {n} samples")
            stamp = time.time()
            cache.put_many([(k, o, {**meta, "time": stamp}) for (k, _), o in zip(batch, outputs)])
            bar.update(len(batch))
    return [cache.get(k) for k in keys]
