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


# ------------------------------------------------------------------ long, resumable comparisons
# The Home Depot dev file's columns and the class mapping its README suggests (bench/quality.py,
# bench/learning_curve.py): canonical name -> column, and [[min_score, class], ...].
HOMEDEPOT_COLUMNS = {"query": "search_term", "title": "product_title", "label": "relevance", "pair_id": "id"}
HOMEDEPOT_THRESHOLDS = [[0.0, "irrelevant"], [1.67, "partial"], [2.33, "substitute"], [3.0, "exact"]]


def dotted(assignments: list[str]) -> dict:
    """`--set teacher.sft.max_examples=128` (values parsed as YAML) as a nested params overlay."""
    import yaml

    out: dict = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. student.epochs=5")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def named_overrides(items: list[str], flag: str) -> dict[str, dict]:
    """`--try NAME=JSON` / `--student NAME=JSON` items (repeatable) as {NAME: overrides}."""
    out = {}
    for item in items:
        name, sep, over = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"{flag} {item!r}: expected NAME=JSON, e.g. lr3e-3='{{\"head_lr\": 0.003}}'")
        out[name] = json.loads(over)
    return out


def clone_env(clone: Path) -> dict:
    """The environment a command runs with in a clone of this repository: this interpreter's bin first (dvc, python),
    the clone's own src/ first on the path (the environment's relkd is an editable install of this checkout, whose
    uncommitted changes must not leak into a run of the committed pipeline), offline, no outside MLflow server."""
    import sys

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(clone / "src"), os.environ.get("PYTHONPATH")])),
               GX_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def dvc_repro(clone: Path, log: Path, *targets: str) -> float:
    """`dvc repro TARGETS` in a clone of this repository (its own src/ on the path), the log appended to `log` and
    each stage's start printed; returns the seconds it took."""
    import subprocess

    env = clone_env(clone)
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as fh:
        proc = subprocess.Popen(["dvc", "repro", *targets], cwd=clone, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            fh.write(line)
            if line.startswith(("Running stage", "Stage ")) or "ERROR" in line:
                print(f"[{time.strftime('%H:%M:%S')}] {line.rstrip()}", flush=True)
        if proc.wait():
            raise SystemExit(f"dvc repro {' '.join(targets)} failed in {clone}; see {log}")
    return time.perf_counter() - start


class CellStore:
    """The finished cells of a long benchmark, one JSON file per cell in `folder`: a cell is written (atomically)
    as soon as it finishes, and a re-run with the same folder skips it. Keys are '/'-joined names."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / (key.replace(" ", "_") + ".json")

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def put(self, key: str, value: dict) -> dict:
        from relkd.io import write_json

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, value)
        return value


def compare_rows(gold: list, systems: dict[str, list[list]], labels, reference: str, reference_name: str,
                 n_boot: int = 1000) -> list[dict]:
    """One row per system (its predicted labels on the same test pairs, one list per seed): test ACC / macro-F1 as
    mean ± std over seeds (x100) and the paired bootstrap interval (relkd.eval.stats.bootstrap_diff_ci: test pairs
    and seeds resampled) of its difference from `reference` (a key of `systems`; a reference with one run is
    paired with every seed, with as many runs seed by seed)."""
    from relkd.eval.metrics import classification_report
    from relkd.eval.stats import bootstrap_diff_ci, mean_std

    ref = systems[reference]
    rows = []
    for name, preds in systems.items():
        reps = [classification_report(gold, p, labels) for p in preds]
        row = {"model": name, "seeds": len(preds)}
        for metric, short in (("accuracy", "ACC"), ("macro_f1", "F1")):
            m, sd = mean_std([100 * r[metric] for r in reps])
            row[short] = f"{m:.2f} ± {sd:.2f}"
            row[f"{metric}_mean"] = m
            if name == reference:
                row[f"Δ{short} vs {reference_name} [95% CI]"] = "-"
                continue
            if len(ref) not in (1, len(preds)):
                raise ValueError(f"{name} has {len(preds)} runs and the reference {reference} {len(ref)}: "
                                 "pair them seed by seed (the same seeds) or give the reference one run")
            base = ref * len(preds) if len(ref) == 1 else ref
            ci = bootstrap_diff_ci(gold, base, preds, metric, labels, n_boot=n_boot, seed=0)
            row[f"Δ{short} vs {reference_name} [95% CI]"] = (
                f"{100 * ci['diff']:+.2f} [{100 * ci['low']:+.2f}, {100 * ci['high']:+.2f}]")
            row[f"delta_{metric}"] = {k: 100 * ci[k] for k in ("diff", "low", "high")}
        rows.append(row)
    return rows
