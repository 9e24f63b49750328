"""The served student as a Triton python-backend model: raw (query, title) text in, relevance out.

This file is copied as ``model.py`` into every version folder of the model repository and runs in
the *server's* environment (numpy<2, onnxruntime, tokenizers; no torch, no relkd), so it imports
nothing from this package. The pure helpers (`text_problem`, `check_serving_info`, `relevance`)
import without Triton, so the writer and the client apply the very same rules.

A version folder holds ``model.onnx`` (inputs input_ids, attention_mask[, token_type_ids][, lexical]; outputs
``logits`` (B, C) and optionally ``latent`` (B, D)), ``tokenizer.json``, ``serving.json`` and
optionally ``explain.npz`` (ids, texts, vectors of training rationales in the latent space). A graph with the
``lexical`` input comes with ``lexical.json`` (the student's tables) and ``lexical.py`` (a copy of
relkd.lexical, which imports only numpy): the stub computes the pairs' lexical features itself.

The device is config.pbtxt's: Triton hands each instance its kind (KIND_CPU or KIND_GPU) and device id, and
the session takes onnxruntime's CPU provider, or the CUDA provider with the CPU one after it for the ops CUDA
lacks. serving.json's ``optimized_for`` names the device a saved optimised graph was fused for (absent: cpu,
all relkd saved before; null: not optimised, onnxruntime optimises it at load for the device it runs on); an
instance on another device refuses to load it (:func:`check_graph_device`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

try:  # present only inside the Triton python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported for its helpers by the writer, the client and tests
    pb_utils = None

N_TIERS = 5
# The model's outputs, (Triton type, dims) each: config.pbtxt is written from this. The explanation and latent
# ones are computed only for the requests that ask for them (a score that needs no explanation skips the
# nearest-rationale lookup).
OUTPUT_SPECS = {
    "PROBS": ("TYPE_FP32", [-1]), "LABEL": ("TYPE_STRING", [1]), "TIER": ("TYPE_INT32", [1]),
    "SCORE": ("TYPE_FP32", [1]), "LATENT": ("TYPE_FP32", [-1]), "EXPLAIN_ID": ("TYPE_STRING", [1]),
    "EXPLAIN_TEXT": ("TYPE_STRING", [1]),
}
OUTPUTS = tuple(OUTPUT_SPECS)
EXPLAIN_OUTPUTS = {"EXPLAIN_ID", "EXPLAIN_TEXT"}
LATENT_OUTPUTS = EXPLAIN_OUTPUTS | {"LATENT"}


def text_problem(value) -> tuple[str | None, str | None]:
    """(text, None) for a usable text, else (None, what is wrong with it).

    Accepts the bytes Triton hands over as well as str (the client checks before sending); a str
    with lone surrogates is what undecodable bytes become under ``errors="surrogateescape"``.
    """
    if value is None or (isinstance(value, float) and value != value):
        return None, "is missing"
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"is not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})"
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return None, f"is not valid UTF-8 (lone surrogate U+{ord(e.object[e.start]):04X} at char {e.start})"
    else:
        return None, f"is not text (got {type(value).__name__} {value!r:.40})"
    if not value.strip():
        return None, "is empty"
    return str(value), None


# Triton's instance kinds (args["model_instance_kind"]) -> the device names of params.yaml's triton.device.
DEVICES = {"CPU": "cpu", "GPU": "gpu"}
GPU_ENV_HINT = ("install the packages of triton_repo/stub-requirements-gpu.txt (onnxruntime-gpu, not onnxruntime) "
                "into the server's Python; triton_repo/README.md says how")


def instance_device(kind: str) -> str:
    """'cpu' or 'gpu' for a Triton instance kind ('CPU', 'GPU', or config.pbtxt's KIND_CPU / KIND_GPU)."""
    device = DEVICES.get(str(kind).upper().removeprefix("KIND_"))
    if device is None:
        raise ValueError(f"instance kind {kind!r}: config.pbtxt's instance_group must say KIND_CPU or KIND_GPU "
                         "(write it with relkd.serving.repository.write_config and triton.device)")
    return device


def providers(kind: str, device_id: int = 0) -> list:
    """onnxruntime execution providers of an instance of `kind` on device `device_id`: the CPU provider, or the
    CUDA provider on that GPU with the CPU provider after it (onnxruntime places there the ops CUDA lacks)."""
    if instance_device(kind) == "gpu":
        return [("CUDAExecutionProvider", {"device_id": int(device_id)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def check_graph_device(info: dict, device: str) -> None:
    """Raise ValueError when serving.json says model.onnx was optimised for another device than `device`."""
    fused = info.get("optimized_for", "cpu")
    if fused is not None and fused != device:
        raise ValueError(f"model.onnx was saved optimised for {fused} (onnxruntime's fused ops and layouts of that "
                         f"device, serving.json optimized_for={fused!r}) but this instance runs on {device}; export "
                         f"it again with triton.device: {device} (which saves a graph fit for it), or serve it on "
                         f"{fused}")


def check_serving_info(info: dict) -> None:
    """Raise ValueError naming the offending field when serving.json cannot drive the model."""
    labels = info.get("labels")
    if not labels or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"serving.json: labels must be a non-empty list of class names, got {labels!r}")
    if int(info.get("max_length", 0)) < 4:
        raise ValueError(f"serving.json: max_length must be >= 4 tokens, got {info.get('max_length')!r}")
    if not float(info.get("temperature", 1.0)) > 0:
        raise ValueError(f"serving.json: temperature must be > 0, got {info.get('temperature')!r}")
    weights = info.get("relevance_weights")
    if weights is None or len(weights) != len(labels):
        raise ValueError(f"serving.json: relevance_weights needs one weight per label ({len(labels)}: "
                         f"{labels}), got {weights!r}")
    cuts = info.get("tier_thresholds")
    if cuts is None or len(cuts) != N_TIERS - 1 or any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"serving.json: tier_thresholds must be {N_TIERS - 1} strictly increasing cut "
                         f"points on the relevance score (tiers 0..{N_TIERS - 1}), got {cuts!r}")
    fused = info.get("optimized_for", "cpu")
    if fused is not None and fused not in DEVICES.values():
        raise ValueError(f"serving.json: optimized_for must be one of {sorted(DEVICES.values())} or null (a graph "
                         f"not optimised), got {fused!r}")
    rows = info.get("bucket_rows")
    if rows is not None and not (isinstance(rows, int) and rows >= 1):
        raise ValueError(f"serving.json: bucket_rows must be a positive number of pairs (or absent: whole batches), "
                         f"got {rows!r}")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of (B, C) logits at `temperature`, in float64 (every served path uses this one)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


LEXICAL_INPUT = "lexical"


def lexical_module():
    """relkd.lexical: the package's module where relkd is installed (the writer, the client, tests), else the copy
    beside this file (``lexical.py`` in a version folder, inside the Triton stub)."""
    try:
        from relkd import lexical
    except ImportError:
        import importlib.util
        import sys

        path = Path(__file__).with_name("lexical.py")
        if not path.is_file():
            raise ImportError(f"{path} is missing: a graph with lexical features needs lexical.py beside model.py "
                              "(write the version with relkd.serving.repository.write_version)") from None
        spec = importlib.util.spec_from_file_location("relkd_lexical", path)
        lexical = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = lexical  # dataclasses look their module up while the class is built
        spec.loader.exec_module(lexical)
    return lexical


def onnx_inputs(session) -> tuple[list[str], type]:
    """The graph's inputs (input_ids, attention_mask[, token_type_ids][, lexical]) and the token inputs' integer
    dtype; a graph with other inputs is refused, naming them."""
    inputs = {i.name: i for i in session.get_inputs()}
    unknown = set(inputs) - {"input_ids", "attention_mask", "token_type_ids", LEXICAL_INPUT}
    if unknown or "input_ids" not in inputs:
        raise ValueError("model.onnx: inputs must be input_ids, attention_mask[, token_type_ids][, lexical]; got "
                         f"{sorted(inputs)}")
    return list(inputs), np.int32 if inputs["input_ids"].type == "tensor(int32)" else np.int64


def relevance(logits: np.ndarray, info: dict) -> dict[str, np.ndarray]:
    """Probabilities (softmax at the calibrated temperature), label index, relevance score, tier."""
    p = softmax(logits, info.get("temperature", 1.0))
    score = p @ np.asarray(info["relevance_weights"], dtype=np.float64)
    tier = np.searchsorted(np.asarray(info["tier_thresholds"], dtype=np.float64), score, side="right")
    return {"probs": p.astype(np.float32), "label": p.argmax(axis=1), "score": score.astype(np.float32),
            "tier": tier.astype(np.int32)}


def load_tokenizer(version_dir: Path, max_length: int):
    """tokenizer.json set up as at training time: pair encoding, truncation to max_length
    (longest first), padding to the longest sequence of the batch."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
    pad = tok.padding or {}
    pad_token = pad.get("pad_token")
    if pad_token is None:
        cfg_path = version_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        pad_token = cfg.get("pad_token") or "[PAD]"
        if isinstance(pad_token, dict):  # older configs store an AddedToken dict
            pad_token = pad_token.get("content", "[PAD]")
    pad_id = pad.get("pad_id", tok.token_to_id(pad_token))
    if pad_id is None:
        raise ValueError(f"{version_dir}/tokenizer.json has no padding token {pad_token!r}")
    tok.enable_truncation(max_length=int(max_length), strategy="longest_first")
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_type_id=pad.get("pad_type_id", 0))
    return tok


def length_buckets(lengths, batch_size: int) -> list[np.ndarray]:
    """Index batches of at most `batch_size`, in order of increasing length.

    Each batch holds original positions, so a caller undoes the order with ``out[batch] = result``;
    padding each batch to its own longest then wastes almost nothing. Sorting is stable, so equal
    lengths keep their input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def run_bucketed(session, names: list[str], feed: dict[str, np.ndarray], rows: int | None) -> list[np.ndarray]:
    """``session.run(names, feed)`` in sub-batches of at most `rows` pairs of similar token length, each cut to its
    own longest pair (`feed` is right-padded, as :func:`encode` makes it), outputs back in input order; ``rows``
    None runs the whole feed at once (a version exported before ``bucket_rows``).

    A request batch padded to its longest pair computes every row at that length; the rows a client sends
    together are sorted by characters, not tokens: padded to their longest, batches of 64 held 22% (catalogue)
    and 31% (Home Depot) more tokens than the same batches in token-sorted sub-batches of 16 (600 pairs each).
    """
    lengths = feed["attention_mask"].sum(axis=1)
    outs = None
    for idx in length_buckets(lengths, rows or len(lengths)):
        width = max(int(lengths[idx].max()), 1)
        # Token arrays are cut to the sub-batch's longest pair; the per-pair lexical features are rows only.
        part = session.run(names, {k: v[idx] if k == LEXICAL_INPUT else v[idx, :width] for k, v in feed.items()})
        if outs is None:
            outs = [np.empty((len(lengths), *p.shape[1:]), p.dtype) for p in part]
        for out, p in zip(outs, part):
            out[idx] = p
    return outs


def encode(tok, queries: list[str], titles: list[str], input_names, int_dtype=np.int64, lexical_tables=None) -> dict:
    """ONNX feed for (query, title) pairs; only the inputs the graph declares (``lexical``: the features from
    `lexical_tables`, a relkd.lexical.LexicalTables)."""
    enc = tok.encode_batch(list(zip(queries, titles)))
    cols = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    feed = {name: np.array([getattr(e, cols[name]) for e in enc], dtype=int_dtype)
            for name in input_names if name != LEXICAL_INPUT}
    if LEXICAL_INPUT in input_names:
        if lexical_tables is None:
            raise ValueError("model.onnx takes lexical features: load the version's lexical.json "
                             "(lexical_module().LexicalTables.load(version folder)) and pass it as lexical_tables")
        feed[LEXICAL_INPUT] = lexical_module().features(queries, titles, lexical_tables).astype(np.float32)
    return feed


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        self.dir = Path(args["model_repository"]) / args["model_version"]
        self.info = json.loads((self.dir / "serving.json").read_text(encoding="utf-8"))
        check_serving_info(self.info)
        self.labels = [x.encode("utf-8") for x in self.info["labels"]]
        self.tok = load_tokenizer(self.dir, self.info["max_length"])
        kind = args.get("model_instance_kind", "CPU")  # what config.pbtxt's instance_group says
        device = instance_device(kind)
        try:
            check_graph_device(self.info, device)
        except ValueError as err:
            raise ValueError(f"{self.dir}/{err}") from None
        if device == "gpu" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(f"{self.dir}: config.pbtxt asks for KIND_GPU but this onnxruntime has no CUDA provider "
                             f"(it has {ort.get_available_providers()}); {GPU_ENV_HINT}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(self.info.get("intra_op_threads", 1))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(self.dir / "model.onnx"), opts,
                                            providers=providers(kind, int(args.get("model_instance_device_id", 0))))
        if device == "gpu" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            # onnxruntime falls back to the CPU alone when CUDA cannot start (a library or driver missing)
            raise ValueError(f"{self.dir}: the CUDA provider did not start (the session has "
                             f"{self.session.get_providers()}; onnxruntime's log says why); {GPU_ENV_HINT}")
        try:
            self.input_names, self.int_dtype = onnx_inputs(self.session)
        except ValueError as err:
            raise ValueError(f"{self.dir}/{err}") from None
        outputs = [o.name for o in self.session.get_outputs()]
        if "logits" not in outputs:
            raise ValueError(f"{self.dir}/model.onnx: needs an output named 'logits', got {outputs}")
        self.output_names = ["logits"] + (["latent"] if "latent" in outputs else [])
        self.lexical = lexical_module().LexicalTables.load(self.dir) if LEXICAL_INPUT in self.input_names else None
        self.bucket_rows = self.info.get("bucket_rows")  # None (versions exported before it): the whole batch
        self.explain = self._load_explain()

    def _load_explain(self):
        spec = self.info.get("explain")
        if not spec:
            return None
        with np.load(self.dir / spec.get("file", "explain.npz"), allow_pickle=False) as z:
            vectors = z["vectors"].astype(np.float32)
            ids = [str(x).encode("utf-8") for x in z["ids"]]
            texts = [str(x).encode("utf-8") for x in z["texts"]]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors, ids, texts

    def _texts(self, request, name: str) -> list[str]:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise ValueError(f"input {name} is missing")
        texts = []
        for i, value in enumerate(tensor.as_numpy().reshape(-1)):
            text, problem = text_problem(value)
            if problem:
                raise ValueError(f"{name}[{i}] {problem}; send non-empty UTF-8 text")
            texts.append(text)
        return texts

    def execute(self, requests):
        responses = [None] * len(requests)
        queries, titles, spans = [], [], []
        for i, request in enumerate(requests):
            # A bad request gets its own error response; the other requests of the batch still run.
            try:
                q, t = self._texts(request, "QUERY"), self._texts(request, "TITLE")
                if len(q) != len(t):
                    raise ValueError(f"QUERY has {len(q)} rows but TITLE has {len(t)}")
            except ValueError as e:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_error(str(e)))
                continue
            spans.append((i, len(queries), len(q), _wanted(request)))
            queries += q
            titles += t
        if not spans:
            return responses
        feed = encode(self.tok, queries, titles, self.input_names, self.int_dtype, self.lexical)
        # The latent output and the explanation lookup cost only when some request asks for them.
        need_latent = any(w & LATENT_OUTPUTS for *_, w in spans)
        names = [n for n in self.output_names if n == "logits" or need_latent]
        results = dict(zip(names, run_bucketed(self.session, names, feed, self.bucket_rows)))
        out = relevance(results["logits"], self.info)
        latent = results.get("latent")
        labels = np.array([self.labels[k] for k in out["label"]], dtype=np.object_)
        for i, start, n, wanted in spans:
            s = slice(start, start + n)
            tensors = {
                "PROBS": out["probs"][s], "LABEL": labels[s].reshape(n, 1),
                "TIER": out["tier"][s].reshape(n, 1), "SCORE": out["score"][s].reshape(n, 1),
            }
            if wanted & EXPLAIN_OUTPUTS:
                explain_id, explain_text = self._nearest(None if latent is None else latent[s], n)
                tensors.update(EXPLAIN_ID=explain_id.reshape(n, 1), EXPLAIN_TEXT=explain_text.reshape(n, 1))
            if latent is not None and "LATENT" in wanted:
                tensors["LATENT"] = latent[s].astype(np.float32)
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(k, v) for k, v in tensors.items() if k in wanted])
        return responses

    def _nearest(self, latent, n: int):
        """The training rationale nearest (cosine, latent space) to each row; empty without an index."""
        if self.explain is None or latent is None:
            empty = np.array([b""] * n, dtype=np.object_)
            return empty, empty.copy()
        vectors, ids, texts = self.explain
        if latent.shape[1] != vectors.shape[1]:
            raise ValueError(f"explain.npz vectors have {vectors.shape[1]} dims but the model's latent has "
                             f"{latent.shape[1]}; rebuild the index from this model's latent space")
        unit = latent / np.maximum(np.linalg.norm(latent, axis=1, keepdims=True), 1e-12)
        best = (unit @ vectors.T).argmax(axis=1)
        return (np.array([ids[k] for k in best], dtype=np.object_),
                np.array([texts[k] for k in best], dtype=np.object_))

    def finalize(self):
        self.session = None


def _wanted(request) -> set[str]:
    """The outputs a request asked for; a request that names none gets them all (Triton's rule)."""
    names = set(request.requested_output_names() or ())
    return names or set(OUTPUTS)


def _error(message: str):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
