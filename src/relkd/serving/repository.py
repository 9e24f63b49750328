"""Writes the Triton model repository: one model, one folder per registered version, a config.pbtxt."""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from relkd import lexical
from relkd.io import new_path, write_text
from relkd.serving import triton_model
from relkd.serving.triton_model import check_serving_info

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_ONNX_INLINE_LIMIT = 1_800_000_000  # protobuf's 2 GB cap, with room: bigger graphs keep external data


def write_version(repo_dir, model_name: str, version: int, onnx_path, tokenizer_dir, serving_info: dict,
                  explain: dict | None = None) -> Path:
    """Write ``repo_dir/model_name/version/`` (model.py, model.onnx, tokenizer, serving.json, for a student with
    a lexical head its lexical.json (from `tokenizer_dir`, the student folder) and lexical.py, and, with
    `explain` = {ids, texts, vectors}, explain.npz) and return its path.

    The folder is built beside its final place and renamed in, so a server (or a killed export)
    never sees a half-written version; an existing folder of the same version is replaced.
    """
    version = int(version)
    if version < 1:
        raise ValueError(f"Triton versions are positive integers, got {version}")
    check_serving_info(serving_info)
    onnx_path, tokenizer_dir = Path(onnx_path), Path(tokenizer_dir)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} does not exist; export the student first")
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{tokenizer_dir} has no tokenizer.json (a fast tokenizer is required: the "
                                f"server tokenizes with the `tokenizers` library)")
    model_dir = Path(repo_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(version)
    # Inside the model folder, a non-numeric folder name is ignored by Triton's version scan.
    tmp = new_path(model_dir, f".v{version}-", ".tmp", directory=True)  # the umask's permissions, as the files
    try:
        shutil.copyfile(triton_model.__file__, tmp / "model.py")
        _copy_onnx(onnx_path, tmp / "model.onnx")
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, tmp / name)
        if (tokenizer_dir / lexical.TABLES_FILE).is_file():  # a student with a lexical head: the stub computes them
            shutil.copyfile(tokenizer_dir / lexical.TABLES_FILE, tmp / lexical.TABLES_FILE)
            shutil.copyfile(lexical.__file__, tmp / "lexical.py")
        info = dict(serving_info)
        if explain is not None:
            info["explain"] = {"file": "explain.npz", "count": _write_explain(tmp / "explain.npz", explain)}
        else:
            info.pop("explain", None)
        (tmp / "serving.json").write_text(json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
        _swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _copy_onnx(src: Path, dst: Path) -> None:
    """One self-contained model.onnx: the exporter may leave weights in a side file (model.onnx.data)."""
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    if model.ByteSize() < _ONNX_INLINE_LIMIT:
        onnx.save_model(model, str(dst))
    else:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data")


def _write_explain(path: Path, explain: dict) -> int:
    ids = np.asarray([str(x) for x in explain["ids"]], dtype=np.str_)
    texts = np.asarray([str(x) for x in explain["texts"]], dtype=np.str_)
    vectors = np.asarray(explain["vectors"], dtype=np.float32)
    if vectors.ndim != 2 or not (len(ids) == len(texts) == len(vectors) > 0):
        raise ValueError(f"explain needs as many ids, texts and rows of a 2-d vectors array; got {len(ids)} ids, "
                         f"{len(texts)} texts, vectors of shape {vectors.shape}")
    np.savez(path, ids=ids, texts=texts, vectors=vectors)  # unicode arrays: loads without pickle
    return len(ids)


def _swap_in(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}-old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def config_text(model_name: str, versions: Sequence[int], max_batch_size: int = 64,
                preferred_batch_sizes: Sequence[int] = (16, 32), max_queue_delay_us: int = 2000,
                instance_count: int = 1, device: str = "cpu") -> str:
    """The config.pbtxt of the served student (raw text in, relevance out; see triton_model). `device` 'gpu'
    gives KIND_GPU instances (`instance_count` on each visible GPU), whose model.py runs onnxruntime's CUDA
    provider."""
    versions = sorted({int(v) for v in versions})
    if not versions or versions[0] < 1:
        raise ValueError(f"versions must be positive integers (the registered versions to serve), got {versions}")
    bad = [b for b in preferred_batch_sizes if not 1 <= int(b) <= max_batch_size]
    if max_batch_size < 1 or bad:
        raise ValueError(f"preferred_batch_sizes {list(preferred_batch_sizes)} must lie in 1..max_batch_size "
                         f"({max_batch_size})")
    if instance_count < 1:
        raise ValueError(f"instance_count must be >= 1, got {instance_count}")
    kinds = {d: f"KIND_{kind}" for kind, d in triton_model.DEVICES.items()}
    if device not in kinds:
        raise ValueError(f"device must be one of {sorted(kinds)}, got {device!r}")

    def tensor(name, dtype, dims):
        return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ] }}'

    inputs = [tensor("QUERY", "TYPE_STRING", [1]), tensor("TITLE", "TYPE_STRING", [1])]
    outputs = [tensor(name, dtype, dims) for name, (dtype, dims) in triton_model.OUTPUT_SPECS.items()]
    return "\n".join([
        "# Written by relkd.serving.repository.config_text; champion and challenger are versions of this model.",
        f'name: "{model_name}"',
        'backend: "python"',
        f"max_batch_size: {int(max_batch_size)}",
        f"version_policy: {{ specific: {{ versions: [ {', '.join(map(str, versions))} ] }} }}",
        "input [", ",\n".join(inputs), "]",
        "output [", ",\n".join(outputs), "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(int(b)) for b in preferred_batch_sizes)} ]",
        f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}",
        "}",
        f"instance_group [ {{ count: {int(instance_count)} kind: {kinds[device]} }} ]",
        "",
    ])


def write_config(repo_dir, model_name: str, versions: Sequence[int], max_batch_size: int = 64,
                 preferred_batch_sizes: Sequence[int] = (16, 32), max_queue_delay_us: int = 2000,
                 instance_count: int = 1, device: str = "cpu") -> Path:
    """Write ``repo_dir/model_name/config.pbtxt`` (atomically) serving exactly `versions` on `device`."""
    path = Path(repo_dir) / model_name / "config.pbtxt"
    write_text(path, config_text(model_name, versions, max_batch_size, preferred_batch_sizes,
                                 max_queue_delay_us, instance_count, device))
    return path
