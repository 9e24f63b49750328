"""ONNX export of the student (verified against PyTorch), int8 quantisation, graph optimisation, and fast scoring.

The exported graph has the serving contract's tensors: inputs ``input_ids``, ``attention_mask`` and
``token_type_ids`` (int64, dynamic batch and sequence axes), for a student with a lexical head also ``lexical``
(float32 (B, F): :func:`relkd.lexical.features` from the tables saved with the student), and outputs
``logits`` (B, C) and ``latent`` (B, D). Functions that feed a graph take those tables as ``lexical_tables``
(a torch student brings its own). Export uses the dynamo exporter at opset 18: the legacy TorchScript exporter gave
BERT logits off by up to 0.018 on these versions (STACK.md), so every export is checked against the
PyTorch module before it is returned.

Scoring pads each batch to its own longest pair after sorting by length (:func:`length_buckets`):
short search queries and titles then cost what they are, not ``max_length``.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from relkd.io import atomic_path
from relkd.serving.triton_model import LEXICAL_INPUT, length_buckets

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("logits", "latent")
OPSET = 18
# The weight names of a student's backbone in its exported graph (an Avg. Ensemble's: student.members.<i>.backbone.).
STUDENT_BACKBONE = re.compile(r"student\.(?:members\.\d+\.)?backbone\.")
TOLERANCE = 1e-4  # max abs difference allowed between ONNX and PyTorch outputs (float32 reorderings stay ~1e-6)


class ExportMismatch(RuntimeError):
    """The exported graph's outputs differ from the PyTorch module's by more than the tolerance."""


# ------------------------------------------------------------------------------------------ tokenising
def tokenize(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> tuple[list, list]:
    """Token ids and segment ids of (query, title) pairs as "[CLS] q [SEP] t [SEP]", truncated, unpadded.

    Returns (input_ids, token_type_ids) as lists of lists. A tokenizer without segment ids (RoBERTa-style)
    gets all-zero ones: the graph always takes the three inputs of the serving contract.
    """
    from relkd.student.model import tokenize_pairs

    if len(pairs) == 0:
        raise ValueError("no pairs to tokenise: pass at least one (query, title) pair")
    queries, titles = zip(*pairs)
    enc = tokenize_pairs(tokenizer, queries, titles, max_length)
    ids = enc["input_ids"]
    types = enc.get("token_type_ids") or [[0] * len(x) for x in ids]
    return ids, types


def pad_batch(input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]], pad_id: int,
              length: int | None = None) -> dict[str, np.ndarray]:
    """Right-pad a batch to `length` (None: its own longest) as the three int64 input arrays."""
    longest = max(len(x) for x in input_ids)
    length = longest if length is None else int(length)
    if length < longest:
        raise ValueError(f"cannot pad to {length}: the batch holds a sequence of {longest} tokens")
    n = len(input_ids)
    ids = np.full((n, length), pad_id, dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    types = np.zeros((n, length), dtype=np.int64)
    for i, (x, t) in enumerate(zip(input_ids, token_type_ids)):
        ids[i, :len(x)] = x
        mask[i, :len(x)] = 1
        types[i, :len(t)] = t
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# ------------------------------------------------------------------------------------------ running
def ort_session(path: str | Path, threads: int | None = None):
    """A CPU onnxruntime session: `threads` intra-op threads (None: all cores), sequential execution
    (a BERT graph is a chain; parallel execution only adds scheduling), full graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _runner(model) -> Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """(logits, latent) for a batch from an onnxruntime session, an ONNX file, or a torch module."""
    if isinstance(model, (str, Path)):
        model = ort_session(model)
    if hasattr(model, "get_inputs") and hasattr(model, "run"):
        names = [i.name for i in model.get_inputs()]
        missing = sorted(set(names) - set(INPUT_NAMES) - {LEXICAL_INPUT})
        if missing:
            raise ValueError(f"the ONNX graph takes inputs {missing} besides {list(INPUT_NAMES)}; export it "
                             "with export_onnx")
        outs = [o.name for o in model.get_outputs()]
        if "logits" not in outs:
            raise ValueError(f"the ONNX graph has outputs {outs} but no 'logits'; export it with export_onnx")
        fetch = ["logits"] + (["latent"] if "latent" in outs else [])

        def run_ort(batch):
            if LEXICAL_INPUT in names and LEXICAL_INPUT not in batch:
                raise ValueError("the ONNX graph takes the pairs' lexical features: pass lexical_tables (the "
                                 "student's lexical.json, relkd.lexical.LexicalTables.load(student folder))")
            res = model.run(fetch, {k: batch[k] for k in names})
            return res[0], (res[1] if len(res) > 1 else np.zeros((len(res[0]), 0), np.float32))
        return run_ort

    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected an ONNX path, an onnxruntime session or a torch module, got {type(model).__name__}")
    model.eval()

    def run_torch(batch):
        with torch.inference_mode():
            logits, latent = model(*(torch.from_numpy(batch[k]) for k in _feed_names(batch)))
        return logits.float().numpy(), latent.float().numpy()
    return run_torch


def _feed_names(arrays: dict) -> tuple[str, ...]:
    return INPUT_NAMES + ((LEXICAL_INPUT,) if LEXICAL_INPUT in arrays else ())


def _lexical_array(pairs: Sequence[tuple[str, str]], tables) -> np.ndarray:
    """The graph's ``lexical`` input for `pairs`: relkd.lexical's features as float32 (B, F)."""
    from relkd import lexical

    return lexical.features([p[0] for p in pairs], [p[1] for p in pairs], tables).astype(np.float32)


def _tables(model, lexical_tables):
    """The lexical tables a feed needs: those given, else a torch student's own (None: a tokens-only model)."""
    return lexical_tables if lexical_tables is not None else getattr(model, "lexical_tables", None)


def score_pairs(model, tokenizer, pairs: Sequence[tuple[str, str]], max_length: int, batch_size: int = 64,
                buckets: bool = True, lexical_tables=None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, latent) for every pair, in input order, from an ONNX file/session or a torch module.

    With `buckets`, pairs are sorted by length and each batch is padded to its own longest; without,
    batches keep input order and are padded to `max_length` (what a fixed-shape server does).
    """
    run = _runner(model)
    logits = latent = None
    for idx, arrays in input_batches(tokenizer, pairs, max_length, batch_size, buckets, _tables(model, lexical_tables)):
        lo, la = run(arrays)
        if logits is None:
            logits = np.empty((len(pairs), lo.shape[1]), np.float32)
            latent = np.empty((len(pairs), la.shape[1]), np.float32)
        logits[idx], latent[idx] = lo, la
    return logits, latent


def input_batches(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int, batch_size: int,
                  buckets: bool = True, lexical_tables=None) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(positions in `pairs`, input arrays) per batch: length-bucketed and padded to each batch's longest, or
    (``buckets=False``) in input order padded to `max_length`; with `lexical_tables`, each batch's ``lexical``
    features too."""
    ids, types = tokenize(tokenizer, pairs, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    feats = None if lexical_tables is None else _lexical_array(pairs, lexical_tables)
    if buckets:
        batches = length_buckets([len(x) for x in ids], batch_size)
    else:
        batches = [np.arange(i, min(i + batch_size, len(ids))) for i in range(0, len(ids), batch_size)]
    out = []
    for idx in batches:
        arrays = pad_batch([ids[i] for i in idx], [types[i] for i in idx], pad_id, None if buckets else max_length)
        if feats is not None:
            arrays[LEXICAL_INPUT] = feats[idx]
        out.append((idx, arrays))
    return out


# ------------------------------------------------------------------------------------------ export
def _torch_outputs(module, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.inference_mode():
        out = module(*(torch.from_numpy(arrays[k]) for k in _feed_names(arrays)))
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"the module must return (logits, latent), got {type(out).__name__}; wrap the student "
                        "in relkd.student.model.InferenceWrapper")
    return out[0].float().numpy(), out[1].float().numpy()


def export_onnx(module, tokenizer, out_path: str | Path, max_length: int,
                sample_texts: Sequence[tuple[str, str]]) -> dict:
    """Export `module` (forward(input_ids, attention_mask, token_type_ids) -> (logits, latent)) to ONNX
    and verify it against PyTorch.

    `sample_texts` are (query, title) pairs of different lengths (at least 3): the graph is traced on
    them padded to their longest, then checked on that batch and on one of another batch size and
    sequence length (all but the last pair, padded to `max_length`), so a graph that baked in the
    tracing shape fails here rather than in serving. Raises :class:`ExportMismatch` with the measured
    difference when an output is off by more than 1e-4. The file is written atomically.

    Returns {path, opset, file_size_bytes, max_abs_diff_logits, max_abs_diff_latent, checked_shapes}.
    """
    import onnx
    import torch

    if len(sample_texts) < 3:
        raise ValueError(f"export needs at least 3 sample pairs (got {len(sample_texts)}): batch sizes 1 "
                         "and equal sequence lengths would be traced as constants")
    module = module.eval()
    ids, types = tokenize(tokenizer, sample_texts, max_length)
    if len({len(x) for x in ids}) < 2:
        raise ValueError("the sample pairs all tokenise to the same length: pass pairs of different "
                         "lengths so padding is part of the check")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trace = pad_batch(ids, types, pad_id)
    checks = [trace, pad_batch(ids[:-1], types[:-1], pad_id, max_length)]
    if checks[1]["input_ids"].shape[1] == trace["input_ids"].shape[1]:
        raise ValueError(f"max_length={max_length} equals the samples' longest tokenised pair: pass "
                         "shorter samples or a larger max_length so a second sequence length is checked")
    tables = _tables(module, None)
    if tables is not None:  # the student's fourth input: its lexical features, a (batch, F) float32 array
        x = _lexical_array(sample_texts, tables)
        trace[LEXICAL_INPUT], checks[1][LEXICAL_INPUT] = x, x[:-1]
    names = _feed_names(trace)

    axes = {0: "batch", 1: "sequence"}
    shapes = {k: ({0: "batch"} if k == LEXICAL_INPUT else axes) for k in names}
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, warnings.catch_warnings():
        # The exporter warns that the two axis names share one constraint (they do: all inputs have
        # the same shape) and about deprecated pytree classes inside torch; neither is actionable.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, tuple(torch.from_numpy(trace[k]) for k in names), dynamo=True, opset_version=OPSET,
            input_names=list(names), output_names=list(OUTPUT_NAMES),
            dynamic_shapes=shapes, external_data=False, verbose=False)
        program.save(str(tmp), external_data=False)
        session = ort_session(tmp)
        diffs = {"logits": 0.0, "latent": 0.0}
        for arrays in checks:
            want = _torch_outputs(module, arrays)
            got = session.run(list(OUTPUT_NAMES), arrays)
            for name, w, g in zip(OUTPUT_NAMES, want, got):
                if w.shape != g.shape:
                    raise ExportMismatch(f"ONNX output {name!r} has shape {g.shape}, PyTorch {w.shape} for "
                                         f"input shape {arrays['input_ids'].shape}")
                diffs[name] = max(diffs[name], float(np.abs(w - g).max()))
        bad = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
        if bad:
            raise ExportMismatch(f"ONNX outputs differ from PyTorch by {bad} (max abs), above the tolerance "
                                 f"{TOLERANCE}; check for ops the dynamo exporter translates differently")
        opset = next(o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import
                     if o.domain in ("", "ai.onnx"))
        del session
    return {"path": str(out_path), "opset": int(opset), "file_size_bytes": out_path.stat().st_size,
            "max_abs_diff_logits": diffs["logits"], "max_abs_diff_latent": diffs["latent"],
            "checked_shapes": [list(a["input_ids"].shape) for a in checks]}


# ------------------------------------------------------------------------------------------ int8, optimise
def encoder_weight_matmuls(model) -> list[str]:
    """The names of the encoder's weight MatMuls in an ONNX graph of the student: MatMul nodes whose second
    input is a weight (an initializer) and that feed the backbone's last LayerNormalization (the one whose
    scale is a ``student.backbone.*`` weight; the last of each member's backbone in an Avg. Ensemble). What is left
    out stays fp32: the embeddings, every LayerNorm, the attention products of two activations, the latent reasoning
    extractor and the head."""
    nodes = list(model.graph.node)
    inits = {i.name for i in model.graph.initializer}
    producer = {out: n for n in nodes for out in n.output}
    # Every backbone LayerNorm: their ancestors are those of each backbone's last one (an ensemble has several
    # backbones, and the exporter may give identical weights of two members one name, so names cannot tell them apart).
    backbone_ln = [n for n in nodes if n.op_type == "LayerNormalization" and len(n.input) > 1
                   and STUDENT_BACKBONE.match(n.input[1])]
    if not backbone_ln:
        raise ValueError("no backbone LayerNormalization in the graph (a student export names its LayerNorm "
                         "weights student.backbone.*); quantise it whole with scope='all'")
    seen, todo = set(), backbone_ln
    while todo:  # the ancestors of the backbone's last LayerNorm
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        todo += [producer[x] for x in node.input if x in producer]
    return [n.name for n in nodes if id(n) in seen and n.op_type == "MatMul" and n.input[1] in inits]


def calibration_batches(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int,
                        batch_size: int = 32, lexical_tables=None) -> list[dict[str, np.ndarray]]:
    """The model's input arrays for `pairs` in length-bucketed batches: calibration data for static
    quantisation (:func:`quantize_int8` with ``calibration``), e.g. from the training split."""
    return [arrays for _, arrays in input_batches(tokenizer, pairs, max_length, batch_size, True, lexical_tables)]


class _Feeds:
    """onnxruntime's CalibrationDataReader over a list of input dicts."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]]):
        self._batches = list(batches)
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._batches)


def quantize_int8(onnx_path: str | Path, out_path: str | Path, per_channel: bool = True,
                  scope: str = "encoder", calibration: Sequence[dict[str, np.ndarray]] | None = None) -> Path:
    """int8 quantisation: dynamic (QInt8 weights, activations quantised per batch at run time) or, given
    ``calibration`` batches (:func:`calibration_batches`), static QDQ (uint8 activations with ranges fixed
    from the calibration data by min/max, int8 weights).

    The graph first goes through onnxruntime's quantisation pre-processing (shape inference and graph
    optimisation). ``scope="encoder"`` quantises only the encoder's weight MatMuls
    (:func:`encoder_weight_matmuls`, where the FLOPs are) and keeps the sensitive nodes in fp32: the
    embeddings, LayerNorms, attention products, the extractor and the head; ``scope="all"`` is
    onnxruntime's default (every MatMul, Gemm and Gather). Weights get one scale per output channel by
    default (``per_channel``). Check every quantised model with :func:`agreement_rate` before serving it.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

    if scope not in ("encoder", "all"):
        raise ValueError(f"scope must be 'encoder' or 'all', got {scope!r}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX file at {onnx_path}; export one with export_onnx first")
    with tempfile.TemporaryDirectory() as d, atomic_path(out_path) as tmp:
        pre = Path(d) / "pre.onnx"
        # Symbolic shape inference stops on the dynamo graph ("Incomplete symbolic shape inference");
        # ONNX shape inference alone still lets every weight MatMul and the embeddings be quantised.
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        nodes = encoder_weight_matmuls(onnx.load(str(pre))) if scope == "encoder" else None
        ops = ["MatMul"] if nodes else None
        if calibration is None:
            quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel,
                             nodes_to_quantize=nodes, op_types_to_quantize=ops)
        else:
            if not calibration:
                raise ValueError("calibration is empty: pass batches from calibration_batches (e.g. the training "
                                 "split), or None for dynamic quantisation")
            quantize_static(str(pre), str(tmp), _Feeds(calibration), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                            nodes_to_quantize=nodes, op_types_to_quantize=ops)
    return out_path


def optimize(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Save onnxruntime's fully optimised graph (ORT_ENABLE_ALL: constant folding, node fusions,
    CPU layout) to `out_path`.

    The saved graph may hold CPU-specific fused ops: serve it with onnxruntime on the same kind of
    hardware, and keep the plain export as the portable artefact.
    """
    import onnxruntime as ort

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX file at {onnx_path}; export one with export_onnx first")
    with atomic_path(out_path) as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(tmp)
        opts.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    return out_path


def graph_for(onnx_path: str | Path, out_path: str | Path, device: str,
              optimise: bool = True) -> tuple[Path, str | None]:
    """(the graph to serve on `device`, the device it is saved optimised for; None: not optimised).

    cpu, `optimise`: onnxruntime's fully optimised graph, saved to `out_path` (:func:`optimize`; its fused
    ops and layouts are the CPU provider's). gpu: the exported graph itself, never a saved optimised one:
    onnxruntime optimises it when the server creates its session, for the CUDA provider it runs on (fusions
    of the CPU provider saved into the file would stay CPU ops there). Optimising for CUDA here would need a
    GPU where the export runs; at load it costs seconds once per server start, not per request. Served with
    serving.json's ``optimized_for`` set to the second value, which the Triton stub checks against its device.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if device == "gpu" or not optimise:
        return Path(onnx_path), None
    return optimize(onnx_path, out_path), "cpu"


def agreement_rate(onnx_a, onnx_b_or_torch, tokenizer, pairs: Sequence[tuple[str, str]], max_length: int,
                   batch_size: int = 64, lexical_tables=None) -> dict:
    """How often two versions of a model (ONNX file/session or torch module each) pick the same class.

    Both score the same length-bucketed batches. Returns {agreement (share of equal argmax),
    max_prob_diff (largest absolute softmax difference), n}.
    """
    from scipy.special import softmax

    tables = _tables(onnx_b_or_torch, lexical_tables)
    la, _ = score_pairs(onnx_a, tokenizer, pairs, max_length, batch_size, lexical_tables=tables)
    lb, _ = score_pairs(onnx_b_or_torch, tokenizer, pairs, max_length, batch_size, lexical_tables=tables)
    if la.shape != lb.shape:
        raise ValueError(f"the two models return logits of shapes {la.shape} and {lb.shape}: they do not "
                         "share a label set")
    pa, pb = softmax(la.astype(np.float64), axis=1), softmax(lb.astype(np.float64), axis=1)
    return {"agreement": float((pa.argmax(1) == pb.argmax(1)).mean()),
            "max_prob_diff": float(np.abs(pa - pb).max()), "n": int(len(la))}
