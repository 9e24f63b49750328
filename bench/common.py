"""Shared bits of the benchmarks: the machine's matmul roof, timing, and writing table + JSON."""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import date
from functools import partial
from pathlib import Path


def matmul_roof(n: int = 4096, repeats: int = 5, device: str = "cpu") -> float:
    """Achieved GFLOP/s of an n x n matmul (best of `repeats`): fp32 on the CPU, bf16 on a GPU (the dtype
    the teacher runs in there): the physical limit every throughput here is compared with."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def int8_matmul_roof(n: int = 2048, repeats: int = 5) -> float:
    """Achieved GOP/s of an n x n x n integer matmul (uint8 x int8 -> int32, onnxruntime's MatMulInteger on the
    CPU's VNNI instructions where it has them; best of `repeats`): the limit of the int8 serving path."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    b = helper.make_tensor("b", TensorProto.INT8, [n, n], rng.integers(-127, 128, (n, n), dtype=np.int8).tobytes(),
                           raw=True)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "roof",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    session.run(None, {"a": a})
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {"a": a})
        best = min(best, time.perf_counter() - t)
    onnx.checker.check_model(model)
    return 2 * n ** 3 / best / 1e9


def simd_flags() -> list[str]:
    """The CPU's vector extensions that decide int8 speed and exactness (Linux /proc/cpuinfo; [] elsewhere):
    without a *vnni flag, uint8 x int8 products go through vpmaddubsw, which saturates at 8-bit weights."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return []
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]


def machine() -> dict:
    import torch

    return {"date": date.today().isoformat(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "simd": simd_flags()}


def markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def report(name: str, rows: list[dict], columns: list[str], extra: dict, out_dir: str | Path = "bench/results") -> str:
    """Print the table and write `<out_dir>/<name>.json` (rows + machine + extra) next to `<name>.md`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, columns)
    payload = {"benchmark": name, "machine": machine(), **extra, "rows": rows}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{name}.md").write_text(f"# {name}\n\n{json.dumps(payload['machine'])}\n\n{text}\n")
    print(text)
    return text


def load_pairs(path: str | None, n: int, query_col: str, title_col: str, seed: int = 5) -> list[tuple[str, str]]:
    """`n` pairs drawn from a CSV/Parquet file, or generated catalogue pairs (`seed`) when `path` is None."""
    if path:
        import pandas as pd

        read = pd.read_parquet if str(path).endswith(".parquet") else partial(pd.read_csv, encoding_errors="replace")
        df = read(path).dropna(subset=[query_col, title_col])
        df = df.sample(n=min(n, len(df)), random_state=0)
        return list(zip(df[query_col].astype(str), df[title_col].astype(str)))
    from relkd.data.catalogue import generate_catalogue
    from relkd.data.config import CatalogueConfig

    df = generate_catalogue(CatalogueConfig(n_queries=n, pairs_per_query=1), seed=seed)
    return list(zip(df["query"], df["title"]))
