import numpy as np
import onnx
import pytest
import torch
from torch import nn

from relkd.serving.export import (
    INPUT_NAMES,
    ExportMismatch,
    agreement_rate,
    export_onnx,
    length_buckets,
    optimize,
    ort_session,
    pad_batch,
    quantize_int8,
    score_pairs,
    tokenize,
)

MAX_LENGTH = 40
SAMPLES = [
    ("red shoes", "Nike red running shoe, size 10"),
    ("cordless drill 18v", "DeWalt 18V cordless drill driver with two batteries and carry case"),
    ("usb c cable 2m", "Anker USB-C to USB-C cable"),
    ("lamp", "desk lamp"),
]
NEW_PAIRS = [
    ("zapatillas rojas talla 42", "Zapatillas de running Adidas rojas"),
    ("tv 55 inch", "Samsung 55 inch 4K smart TV"),
    ("kettle", "Stainless steel electric kettle 1.7 l with auto shut-off"),
    ("coque iphone 13", "Coque en silicone pour iPhone 13, noir"),
    ("a", "b"),
]


class TinyRelevance(nn.Module):
    """A real (randomly initialised) BERT cross-encoder with a linear head: the student's signature."""

    def __init__(self, n_labels: int = 4, shift_when_exporting: float = 0.0):
        super().__init__()
        from transformers import AutoModel

        from relkd.models import resolve

        torch.manual_seed(0)
        self.backbone = AutoModel.from_pretrained(resolve("tiny:bert"), add_pooling_layer=False)
        self.head = nn.Linear(self.backbone.config.hidden_size, n_labels)
        self.shift_when_exporting = shift_when_exporting

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state[:, 0]
        logits = self.head(h)
        if self.shift_when_exporting and torch.compiler.is_exporting():
            # The traced graph computes something else than eager PyTorch: what the check must catch.
            logits = logits + self.shift_when_exporting
        return logits, h


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from relkd.models import resolve

    return AutoTokenizer.from_pretrained(resolve("tiny:bert"))


@pytest.fixture(scope="module")
def model():
    return TinyRelevance().eval()


@pytest.fixture(scope="module")
def exported(model, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return path, export_onnx(model, tokenizer, path, MAX_LENGTH, SAMPLES)


def test_export_is_verified_and_matches_torch_on_a_new_batch(exported, model, tokenizer):
    path, info = exported
    assert info["max_abs_diff_logits"] <= 1e-4 and info["max_abs_diff_latent"] <= 1e-4
    assert info["opset"] == 18
    assert info["file_size_bytes"] == path.stat().st_size > 0
    assert info["checked_shapes"][0][0] != info["checked_shapes"][1][0]
    assert info["checked_shapes"][1][1] == MAX_LENGTH

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.input)
    assert [o.name for o in graph.output] == ["logits", "latent"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param and not d.dim_value for d in dims)  # batch and sequence are dynamic

    # A batch size and a sequence length the export never saw.
    ids, types = tokenize(tokenizer, NEW_PAIRS, MAX_LENGTH)
    batch = pad_batch(ids, types, tokenizer.pad_token_id, length=23)
    got_logits, got_latent = ort_session(path, threads=1).run(["logits", "latent"], batch)
    with torch.inference_mode():
        want_logits, want_latent = model(*(torch.from_numpy(batch[k]) for k in INPUT_NAMES))
    assert got_logits.shape == (5, 4) and got_latent.shape == (5, model.backbone.config.hidden_size)
    np.testing.assert_allclose(got_logits, want_logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_latent, want_latent.numpy(), atol=1e-4, rtol=0)


def test_export_raises_with_the_measured_difference_when_the_graph_differs(tokenizer, tmp_path):
    shifted = TinyRelevance(shift_when_exporting=0.5).eval()
    with pytest.raises(ExportMismatch, match=r"'logits': 0\.5"):
        export_onnx(shifted, tokenizer, tmp_path / "bad.onnx", MAX_LENGTH, SAMPLES)
    assert not (tmp_path / "bad.onnx").exists()  # nothing half-checked is left where serving would look


def test_export_refuses_samples_that_cannot_exercise_dynamic_shapes(model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="at least 3"):
        export_onnx(model, tokenizer, tmp_path / "m.onnx", MAX_LENGTH, SAMPLES[:2])
    with pytest.raises(ValueError, match="same length"):
        export_onnx(model, tokenizer, tmp_path / "m.onnx", MAX_LENGTH, [("a", "b")] * 3)


def test_int8_is_smaller_and_agrees_with_fp32(exported, model, tokenizer, tmp_path):
    path, _ = exported
    q = quantize_int8(path, tmp_path / "int8.onnx", scope="all")  # not a student graph: every MatMul and Gather
    assert q.stat().st_size < 0.5 * path.stat().st_size
    with pytest.raises(ValueError, match="scope='all'"):
        quantize_int8(path, tmp_path / "enc.onnx")
    pairs = (SAMPLES + NEW_PAIRS) * 4
    res = agreement_rate(path, q, tokenizer, pairs, MAX_LENGTH, batch_size=8)
    assert 0.0 <= res["agreement"] <= 1.0 and res["n"] == len(pairs)
    assert 0.0 < res["max_prob_diff"] < 0.2  # quantised weights move the probabilities, a little
    same = agreement_rate(path, path, tokenizer, pairs, MAX_LENGTH, batch_size=8)
    assert same["agreement"] == 1.0 and same["max_prob_diff"] == 0.0
    vs_torch = agreement_rate(path, model, tokenizer, pairs, MAX_LENGTH, batch_size=8)
    assert vs_torch["agreement"] == 1.0 and vs_torch["max_prob_diff"] < 1e-4


def test_optimized_graph_gives_the_same_outputs(exported, tokenizer, tmp_path):
    path, _ = exported
    opt = optimize(path, tmp_path / "opt.onnx")
    assert opt.is_file() and opt.stat().st_size > 0
    a, ra = score_pairs(path, tokenizer, NEW_PAIRS, MAX_LENGTH, batch_size=2)
    b, rb = score_pairs(opt, tokenizer, NEW_PAIRS, MAX_LENGTH, batch_size=2)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ra, rb, atol=1e-4, rtol=0)


def test_bucketed_scoring_equals_fixed_padding_in_input_order(model, tokenizer):
    pairs = SAMPLES + NEW_PAIRS
    bucketed, lat_b = score_pairs(model, tokenizer, pairs, MAX_LENGTH, batch_size=3, buckets=True)
    padded, lat_p = score_pairs(model, tokenizer, pairs, MAX_LENGTH, batch_size=3, buckets=False)
    one_by_one = np.concatenate([score_pairs(model, tokenizer, [p], MAX_LENGTH, 1)[0] for p in pairs])
    np.testing.assert_allclose(bucketed, padded, atol=1e-4, rtol=0)
    np.testing.assert_allclose(lat_b, lat_p, atol=1e-4, rtol=0)
    np.testing.assert_allclose(bucketed, one_by_one, atol=1e-4, rtol=0)
    assert len({tuple(np.round(r, 3)) for r in bucketed}) == len(pairs)  # rows really differ: order matters


def test_run_bucketed_equals_one_padded_run_in_input_order(exported, tokenizer):
    """The served model's sub-batches (token-length sorted, each cut to its own longest) give the outputs of
    one run on the whole right-padded batch, back in input order; each sub-batch is really cut."""
    from relkd.serving.triton_model import run_bucketed

    path, _ = exported
    pairs = (SAMPLES + NEW_PAIRS) * 2
    ids, types = tokenize(tokenizer, pairs, MAX_LENGTH)
    feed = pad_batch(ids, types, tokenizer.pad_token_id)
    session = ort_session(path, 1)
    whole = session.run(["logits", "latent"], feed)
    widths = []

    class Recording:  # the real session, with the widths it was given recorded
        def run(self, names, part):
            widths.append(part["input_ids"].shape[1])
            return session.run(names, part)

    parts = run_bucketed(Recording(), ["logits", "latent"], feed, rows=3)
    for a, b in zip(parts, whole):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    assert len(widths) == 6 and max(widths) == feed["input_ids"].shape[1] and min(widths) < max(widths)
    assert widths == sorted(widths)
    one = run_bucketed(session, ["logits"], feed, rows=len(pairs))
    np.testing.assert_allclose(one[0], whole[0], atol=1e-5, rtol=0)
    unset = run_bucketed(session, ["logits"], feed, rows=None)  # a version exported before bucket_rows
    np.testing.assert_allclose(unset[0], whole[0], atol=1e-5, rtol=0)


def test_length_buckets_cover_every_index_once_sorted_by_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 64, size=103)
    batches = length_buckets(lengths, 10)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(103))
    assert np.all(np.diff(lengths[flat]) >= 0)  # within and across batches
    out = np.empty(103)
    for b in batches:  # the caller undoes the order by writing back to the original positions
        out[b] = lengths[b] * 2
    np.testing.assert_array_equal(out, lengths * 2)
    with pytest.raises(ValueError, match="batch_size"):
        length_buckets(lengths, 0)


def test_pad_batch_pads_right_with_mask():
    b = pad_batch([[101, 5, 102], [101, 102]], [[0, 0, 0], [0, 1]], pad_id=0, length=4)
    assert b["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(b["input_ids"], [[101, 5, 102, 0], [101, 102, 0, 0]])
    np.testing.assert_array_equal(b["attention_mask"], [[1, 1, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(b["token_type_ids"], [[0, 0, 0, 0], [0, 1, 0, 0]])
    with pytest.raises(ValueError, match="cannot pad to 2"):
        pad_batch([[1, 2, 3]], [[0, 0, 0]], 0, length=2)


def test_the_student_exports_through_its_inference_wrapper(tokenizer, tmp_path):
    """The real student (default GAT extractor) behind InferenceWrapper passes the same check."""
    from relkd.student.config import VariantConfig
    from relkd.student.model import InferenceWrapper, build_student

    torch.manual_seed(0)
    student, tok = build_student("tiny:bert", ("exact", "substitute", "irrelevant"), VariantConfig(),
                                 d_out=24, max_length=MAX_LENGTH)
    info = export_onnx(InferenceWrapper(student.eval()), tok, tmp_path / "student.onnx", MAX_LENGTH, SAMPLES)
    assert info["max_abs_diff_logits"] <= 1e-4 and info["max_abs_diff_latent"] <= 1e-4
    logits, latent = score_pairs(tmp_path / "student.onnx", tok, NEW_PAIRS, MAX_LENGTH)
    assert logits.shape == (len(NEW_PAIRS), 3) and latent.shape == (len(NEW_PAIRS), 24)


def test_int8_of_the_student_quantises_the_encoder_and_keeps_the_sensitive_nodes_fp32(tokenizer, tmp_path):
    """scope='encoder' (the default): only the encoder's weight MatMuls become integer ops, per output channel
    (which onnxruntime refuses on the GAT extractor's attention vectors); embeddings, LayerNorms, the
    extractor and the head stay fp32, and the decisions match fp32."""
    import onnx

    from relkd.serving.export import encoder_weight_matmuls
    from relkd.student.config import VariantConfig
    from relkd.student.model import InferenceWrapper, build_student

    torch.manual_seed(0)
    student, tok = build_student("tiny:bert", ("exact", "substitute", "irrelevant"), VariantConfig(),
                                 d_out=24, max_length=MAX_LENGTH)
    fp32 = tmp_path / "student.onnx"
    export_onnx(InferenceWrapper(student.eval()), tok, fp32, MAX_LENGTH, SAMPLES)
    names = encoder_weight_matmuls(onnx.load(str(fp32)))
    layers = student.backbone.config.num_hidden_layers
    assert len(names) == 6 * layers  # q, k, v, attention output, intermediate, output per layer
    q = quantize_int8(fp32, tmp_path / "int8.onnx")
    graph = onnx.load(str(q)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulInteger") + ops.count("MatMulIntegerToFloat") == 6 * layers
    integer = [n.name for n in graph.node if n.op_type.startswith("MatMulInteger")]
    assert all(any(name.startswith(m) for m in names) for name in integer)  # exactly the encoder's weight MatMuls
    int8 = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8 and not any(k in name for name in int8 for k in ("embeddings", "head", "extractor"))
    assert "student.extractor.a_src" in {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    pairs = (SAMPLES + NEW_PAIRS) * 4
    res = agreement_rate(fp32, q, tok, pairs, MAX_LENGTH, batch_size=8)
    assert res["agreement"] == 1.0 and res["max_prob_diff"] < 0.05


def test_static_int8_calibrates_on_given_pairs_and_keeps_the_decisions(tokenizer, tmp_path):
    """quantize_int8 with calibration batches: static QDQ of the encoder's weight MatMuls (activation ranges
    from the calibration pairs), the sensitive nodes fp32; an empty calibration set is refused."""
    import onnx

    from relkd.serving.export import calibration_batches, encoder_weight_matmuls
    from relkd.student.config import VariantConfig
    from relkd.student.model import InferenceWrapper, build_student

    torch.manual_seed(0)
    student, tok = build_student("tiny:bert", ("exact", "substitute", "irrelevant"), VariantConfig(),
                                 d_out=24, max_length=MAX_LENGTH)
    fp32 = tmp_path / "student.onnx"
    export_onnx(InferenceWrapper(student.eval()), tok, fp32, MAX_LENGTH, SAMPLES)
    batches = calibration_batches(tok, SAMPLES * 3, MAX_LENGTH, batch_size=4)
    assert sum(len(b["input_ids"]) for b in batches) == len(SAMPLES) * 3
    q = quantize_int8(fp32, tmp_path / "static.onnx", calibration=batches)
    graph = onnx.load(str(q)).graph
    quantised = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"
                 and any(i.name == n.input[0] and i.data_type == onnx.TensorProto.INT8 for i in graph.initializer)}
    n_weights = len(encoder_weight_matmuls(onnx.load(str(fp32))))
    assert len(quantised) == n_weights  # one int8 weight per encoder MatMul, nothing else
    assert not any(k in name for name in quantised for k in ("embeddings", "head", "extractor"))
    res = agreement_rate(fp32, q, tok, (SAMPLES + NEW_PAIRS) * 4, MAX_LENGTH, batch_size=8)
    assert res["agreement"] >= 0.9 and res["max_prob_diff"] < 0.1
    with pytest.raises(ValueError, match="calibration is empty"):
        quantize_int8(fp32, tmp_path / "none.onnx", calibration=[])


def _lexical_student(tmp_path):
    """A GAT student with a lexical head (random weights), saved with its tables."""
    from relkd.lexical import fit_tables
    from relkd.student.config import VariantConfig
    from relkd.student.model import build_student, save_student

    torch.manual_seed(0)
    pairs = SAMPLES + NEW_PAIRS
    tables = fit_tables([q for q, _ in pairs], [t for _, t in pairs])
    student, tok = build_student("tiny:bert", ("exact", "substitute", "irrelevant"), VariantConfig(), d_out=24,
                                 max_length=MAX_LENGTH, lexical_tables=tables)
    with torch.no_grad():
        student.lexical_head.weight.normal_(0, 1.0)  # big enough that a missing feature input would show
    folder = save_student(student.eval(), tok, tmp_path / "student")
    return student, tok, tables, folder


def test_a_lexical_student_exports_its_features_as_a_fourth_input(tmp_path):
    from relkd.serving.triton_model import encode, load_tokenizer, onnx_inputs, run_bucketed
    from relkd.student.model import InferenceWrapper

    student, tok, tables, folder = _lexical_student(tmp_path)
    info = export_onnx(InferenceWrapper(student), tok, tmp_path / "lex.onnx", MAX_LENGTH, SAMPLES)
    assert info["max_abs_diff_logits"] <= 1e-4
    session = ort_session(tmp_path / "lex.onnx")
    names, dtype = onnx_inputs(session)
    assert "lexical" in names
    want, _ = score_pairs(InferenceWrapper(student), tok, NEW_PAIRS, MAX_LENGTH)  # the torch student's own tables
    got, _ = score_pairs(tmp_path / "lex.onnx", tok, NEW_PAIRS, MAX_LENGTH, lexical_tables=tables)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the features matter: zeroing them moves the logits
    feed = encode(load_tokenizer(folder, MAX_LENGTH), [q for q, _ in NEW_PAIRS], [t for _, t in NEW_PAIRS], names,
                  dtype, tables)
    served = run_bucketed(session, ["logits"], feed, rows=2)[0]
    np.testing.assert_allclose(served, want, atol=1e-4)
    feed["lexical"] = np.zeros_like(feed["lexical"])
    assert np.abs(run_bucketed(session, ["logits"], feed, rows=2)[0] - want).max() > 1e-2
    with pytest.raises(ValueError, match="lexical_tables"):
        score_pairs(tmp_path / "lex.onnx", tok, NEW_PAIRS, MAX_LENGTH)
    with pytest.raises(ValueError, match="lexical.json"):
        encode(load_tokenizer(folder, MAX_LENGTH), ["a"], ["b"], names, dtype)


@pytest.mark.integration
def test_a_lexical_version_folder_computes_its_features_without_relkd(tmp_path):
    """The Triton stub's environment has numpy but no relkd: the version folder's model.py loads the lexical.py
    copied beside it, and its features equal relkd.lexical's."""
    import json
    import subprocess

    from relkd.lexical import features
    from relkd.serving.repository import write_version
    from relkd.student.model import InferenceWrapper
    from test_serving_server import ensure_server_venv

    student, tok, tables, folder = _lexical_student(tmp_path)
    export_onnx(InferenceWrapper(student), tok, tmp_path / "lex.onnx", MAX_LENGTH, SAMPLES)
    info = {"labels": ["exact", "substitute", "irrelevant"], "max_length": MAX_LENGTH, "temperature": 1.0,
            "relevance_weights": [1.0, 0.5, 0.0], "tier_thresholds": [0.2, 0.4, 0.6, 0.8]}
    version = write_version(tmp_path / "repo", "m", 1, tmp_path / "lex.onnx", folder, info)
    assert (version / "lexical.json").is_file() and (version / "lexical.py").is_file()
    python = ensure_server_venv() / "bin" / "python"
    code = ("import importlib.util, json, sys\n"
            "try:\n    import relkd\n    sys.exit('relkd is importable here')\nexcept ImportError:\n    pass\n"
            f"spec = importlib.util.spec_from_file_location('model', {str(version / 'model.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            f"t = m.lexical_module().LexicalTables.load({str(version)!r})\n"
            f"print(json.dumps(m.lexical_module().features({[q for q, _ in NEW_PAIRS]!r}, "
            f"{[t for _, t in NEW_PAIRS]!r}, t).tolist()))\n")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr + out.stdout
    np.testing.assert_allclose(np.array(json.loads(out.stdout)),
                               features([q for q, _ in NEW_PAIRS], [t for _, t in NEW_PAIRS], tables), atol=1e-12)


# ------------------------------------------------------------------------------ the device (issue 30, point 4)
def test_each_device_gets_a_graph_fit_for_it(exported, tmp_path):
    """cpu: onnxruntime's optimised graph, saved with the CPU provider's fused ops; gpu: the exported graph as it
    is (onnxruntime optimises it at load for the CUDA provider), never the CPU-fused one."""
    from relkd.serving.export import graph_for

    path, _ = exported
    cpu, fused = graph_for(path, tmp_path / "opt.onnx", "cpu")
    assert (cpu, fused) == (tmp_path / "opt.onnx", "cpu")
    domains = {n.domain for n in onnx.load(str(cpu)).graph.node}
    assert "com.microsoft" in domains and {n.domain for n in onnx.load(str(path)).graph.node} == {""}
    assert graph_for(path, tmp_path / "gpu.onnx", "gpu") == (path, None) and not (tmp_path / "gpu.onnx").exists()
    assert graph_for(path, tmp_path / "plain.onnx", "cpu", optimise=False) == (path, None)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'gpu', got 'tpu'"):
        graph_for(path, tmp_path / "x.onnx", "tpu")


def test_config_pbtxt_for_each_device():
    from relkd.serving.repository import config_text

    cpu = config_text("m", [1, 2], instance_count=2)
    gpu = config_text("m", [1, 2], instance_count=2, device="gpu")
    assert "instance_group [ { count: 2 kind: KIND_CPU } ]" in cpu.splitlines()
    assert "instance_group [ { count: 2 kind: KIND_GPU } ]" in gpu.splitlines()
    assert cpu.replace("KIND_CPU", "KIND_GPU") == gpu  # nothing else differs
    assert cpu == config_text("m", [1, 2], instance_count=2, device="cpu")  # cpu is the default
    with pytest.raises(ValueError, match=r"device must be one of \['cpu', 'gpu'\], got 'cuda'"):
        config_text("m", [1], device="cuda")


def test_the_stub_chooses_providers_and_refuses_a_graph_of_another_device():
    from relkd.config import ConfigError, parse_params
    from relkd.serving.triton_model import check_graph_device, check_serving_info, instance_device, providers

    assert providers("CPU") == ["CPUExecutionProvider"]
    assert providers("GPU", 1) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert instance_device("KIND_GPU") == "gpu" and instance_device("CPU") == "cpu"
    with pytest.raises(ValueError, match="must say KIND_CPU or KIND_GPU"):
        providers("MODEL")
    check_graph_device({"optimized_for": None}, "gpu")  # not optimised: fit for any device
    check_graph_device({"optimized_for": "cpu"}, "cpu")
    check_graph_device({}, "cpu")  # versions exported before the key: optimised for the CPU, served there
    for info, device in (({"optimized_for": "cpu"}, "gpu"), ({}, "gpu"), ({"optimized_for": "gpu"}, "cpu")):
        fused = info.get("optimized_for", "cpu")
        with pytest.raises(ValueError, match=rf"saved optimised for {fused} .* runs on {device}; export it again "
                                             rf"with triton.device: {device}"):
            check_graph_device(info, device)
    info = {"labels": ["a", "b"], "max_length": 8, "relevance_weights": [1, 0], "tier_thresholds": [.2, .4, .6, .8]}
    with pytest.raises(ValueError, match=r"optimized_for must be one of \['cpu', 'gpu'\] or null"):
        check_serving_info({**info, "optimized_for": "cuda"})
    with pytest.raises(ConfigError, match="with triton.device: gpu set export.int8: false"):
        parse_params({"export": {"int8": True}, "triton": {"device": "gpu"}})


@pytest.mark.integration
def test_the_stub_loads_each_graph_on_its_device_only(exported, tmp_path):
    """model.py's own initialize in the server's environment (.venv-triton: onnxruntime without CUDA), given
    the kind Triton hands an instance: a CPU-optimised version loads on CPU and is refused on a GPU instance;
    an unoptimised one loads on CPU, and on a GPU instance is refused for want of the CUDA provider."""
    import json
    import subprocess

    from relkd.models import resolve
    from relkd.serving.export import graph_for
    from relkd.serving.repository import write_version
    from test_serving_server import ensure_server_venv

    info = {"labels": ["exact", "substitute", "complement", "irrelevant"], "max_length": MAX_LENGTH,
            "temperature": 1.0, "relevance_weights": [1.0, 0.5, 0.25, 0.0], "tier_thresholds": [0.2, 0.4, 0.6, 0.8]}
    repo = tmp_path / "repo"
    for version, device in ((1, "cpu"), (2, "gpu")):
        graph, fused = graph_for(exported[0], tmp_path / f"{device}.onnx", device)
        write_version(repo, "m", version, graph, resolve("tiny:bert"), {**info, "optimized_for": fused})
    code = ("import importlib.util, json, sys\n"
            f"spec = importlib.util.spec_from_file_location('model', {str(repo / 'm' / '1' / 'model.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "out = {}\n"
            "for version in ('1', '2'):\n"
            "    for kind in ('CPU', 'GPU'):\n"
            "        model = m.TritonPythonModel()\n"
            "        try:\n"
            f"            model.initialize({{'model_repository': {str(repo / 'm')!r}, 'model_version': version,\n"
            "                              'model_instance_kind': kind, 'model_instance_device_id': '0'})\n"
            "            out[version + kind] = model.session.get_providers()\n"
            "        except ValueError as e:\n"
            "            out[version + kind] = str(e)\n"
            "print(json.dumps(out))\n")
    python = ensure_server_venv() / "bin" / "python"
    res = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr + res.stdout
    got = json.loads(res.stdout.splitlines()[-1])
    assert got["1CPU"] == got["2CPU"] == ["CPUExecutionProvider"]
    assert "model.onnx was saved optimised for cpu" in got["1GPU"] and "runs on gpu" in got["1GPU"], got
    assert "asks for KIND_GPU but this onnxruntime has no CUDA provider" in got["2GPU"], got
    assert "stub-requirements-gpu.txt" in got["2GPU"]
