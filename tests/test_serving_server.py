"""A real tritonserver (its own numpy<2 venv) serving two versions of a tiny exported student."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from relkd import procs
from relkd.serving import triton_model
from relkd.serving.repository import write_config, write_version
from relkd.serving.server import ServerUnreachable, check, default_venv, server_paths, triton

ROOT = Path(__file__).resolve().parents[1]
MODEL = "relevance_student"
LABELS = ["exact", "substitute", "complement", "irrelevant"]
MAX_LENGTH = 32  # short, so the long titles below are truncated


def serving_info(version: int, temperature: float) -> dict:
    return {"labels": LABELS, "max_length": MAX_LENGTH, "temperature": temperature,
            "tier_thresholds": [0.2, 0.4, 0.6, 0.8], "relevance_weights": [1.0, 0.5, 0.25, 0.0],
            "intra_op_threads": 1,
            # version 2 runs its batches in token-length sub-batches of 2; version 1 (no key, as exported before
            # bucket_rows) whole
            **({"bucket_rows": 2} if version == 2 else {}),
            "registry": {"name": MODEL, "version": str(version), "alias": "champion" if version == 1 else "challenger"}}


def ensure_server_venv() -> Path:
    """The server venv, created by the project's script when missing or stale (a no-op otherwise)."""
    venv = default_venv()
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup_server_env.sh")], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, RELKD_TRITON_VENV=str(venv)))
    if res.returncode != 0:
        pytest.fail(f"scripts/setup_server_env.sh failed ({res.returncode}); the Triton tests need its venv:\n"
                    f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    server_paths(venv)  # raises if still incomplete
    return venv


def _export_student(out: Path) -> Path:
    """tiny:bert + a linear head on [CLS], exported with the dynamo exporter (dynamic batch and length)."""
    import torch
    from transformers import AutoModel

    from relkd.models import resolve

    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = AutoModel.from_pretrained(resolve("tiny:bert"))
            self.head = torch.nn.Linear(self.encoder.config.hidden_size, len(LABELS))

        def forward(self, input_ids, attention_mask, token_type_ids):
            cls = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state[:, 0]
            return self.head(cls), cls

    torch.manual_seed(0)
    model = Student().eval()
    ids = torch.randint(1000, 2000, (2, 9))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "student.onnx"
    torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path), dynamo=True,
                      opset_version=18, input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["logits", "latent"],
                      dynamic_shapes={k: {0: batch, 1: seq} for k in ("input_ids", "attention_mask", "token_type_ids")})
    return path


def _with_new_head(src: Path, dst: Path, seed: int) -> Path:
    """The same encoder with another random head: a second, different version of the student."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    found = 0
    for init in model.graph.initializer:
        if init.name in ("head.weight", "head.bias"):
            shape = numpy_helper.to_array(init).shape
            init.CopyFrom(numpy_helper.from_array(rng.normal(0, 2.0, shape).astype(np.float32), init.name))
            found += 1
    assert found == 2, "the exported graph no longer names its head head.weight/head.bias"
    onnx.save_model(model, str(dst))
    return dst


def explain_index(onnx_path: Path, tokenizer_dir: str, n: int = 12) -> dict:
    """Rationale ids/texts with vectors in the student's latent space (its [CLS] output)."""
    texts = [f"rationale {i}: the title {'matches' if i % 2 else 'misses'} the {w} in the query"
             for i, w in enumerate(["brand", "colour", "size", "model", "category", "use"] * 2)][:n]
    latent = reference(onnx_path, tokenizer_dir, texts, ["a product"] * n, temperature=1.0)["latent"]
    return {"ids": [f"r{i:02d}" for i in range(n)], "texts": texts, "vectors": latent}


def reference(onnx_path, tokenizer_dir, queries, titles, temperature: float) -> dict:
    """In-process scores: the training-side tokenizer (transformers) and onnxruntime."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    enc = tok(list(queries), list(titles), truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits, latent = session.run(["logits", "latent"], {k: enc[k].astype(np.int64) for k in
                                                        ("input_ids", "attention_mask", "token_type_ids")})
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return {"probs": p, "latent": latent, "lengths": enc["attention_mask"].sum(axis=1)}


def build_repository(root: Path, cache: Path) -> dict:
    """triton_repo with versions 1 (with an explanation index) and 2 (another head, no index)."""
    from relkd.models import resolve

    tokenizer_dir = resolve("tiny:bert")
    cache.mkdir(parents=True, exist_ok=True)
    v1 = cache / "v1.onnx"
    if not v1.exists():
        import onnx

        onnx.save_model(onnx.load(str(_export_student(cache / "export"))), str(v1.with_suffix(".tmp")))
        os.replace(v1.with_suffix(".tmp"), v1)  # one self-contained file (the exporter leaves a .data file)
    v2 = cache / "v2.onnx"
    if not v2.exists():
        _with_new_head(v1, v2, seed=2)
    repo = root / "triton_repo"
    explain = explain_index(v1, tokenizer_dir)
    write_version(repo, MODEL, 1, v1, tokenizer_dir, serving_info(1, temperature=1.0), explain=explain)
    write_version(repo, MODEL, 2, v2, tokenizer_dir, serving_info(2, temperature=1.5))
    write_config(repo, MODEL, [1, 2], max_batch_size=64, preferred_batch_sizes=[16, 32], max_queue_delay_us=1000)
    return {"repo": repo, "tokenizer": tokenizer_dir, "onnx": {1: v1, 2: v2}, "explain": explain,
            "temperature": {1: 1.0, 2: 1.5}}


def texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    words = "red blue shoe cable phone case usb charger laptop bag leather large small zapato rouge".split()
    queries = [" ".join(rng.choice(words, rng.integers(1, 5))) for _ in range(n)]
    titles = [" ".join(rng.choice(words, rng.integers(3, 60))) for _ in range(n)]  # some over MAX_LENGTH tokens
    return queries, titles


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    venv = ensure_server_venv()
    built = build_repository(tmp_path_factory.mktemp("serving"), tmp_path_factory.getbasetemp() / "serving-student")
    started = time.monotonic()
    with triton(built["repo"], venv=venv) as server:
        built["server"], built["start_s"] = server, time.monotonic() - started
        yield built
    assert not procs.group_alive(server.pid), f"processes of the server's group {server.pid} outlived it"


ALL_OUTPUTS = ("PROBS", "LABEL", "TIER", "SCORE", "LATENT", "EXPLAIN_ID", "EXPLAIN_TEXT")


def infer(server, protocol: str, queries, titles, version: str = "", outputs=ALL_OUTPUTS):
    if protocol == "grpc":
        import tritonclient.grpc as module
        client = module.InferenceServerClient(server.grpc_url)
    else:
        import tritonclient.http as module
        client = module.InferenceServerClient(server.http_url)
    try:
        inputs = []
        for name, values in (("QUERY", queries), ("TITLE", titles)):
            arr = np.array([[v if isinstance(v, bytes) else v.encode("utf-8")] for v in values], dtype=np.object_)
            tensor = module.InferInput(name, list(arr.shape), "BYTES")
            tensor.set_data_from_numpy(arr)
            inputs.append(tensor)
        result = client.infer(MODEL, inputs, model_version=version,
                              outputs=[module.InferRequestedOutput(o) for o in outputs])
        # Every output the response carries (a name it lacks is None): what the server returned, not what was asked.
        return {o: got for o in triton_model.OUTPUTS if (got := result.as_numpy(o)) is not None}
    finally:
        client.close()


@pytest.mark.integration
def test_ready_with_both_versions_loaded(served):
    server = served["server"]
    status = check(server.http_url)
    assert status["live"] and status["ready"]
    assert [(m["name"], m["version"], m["state"]) for m in status["models"]] == [(MODEL, "1", "READY"),
                                                                                  (MODEL, "2", "READY")]
    assert check(f"http://{server.http_url}/")["ready"]  # a scheme and a trailing slash are accepted
    assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_scores_match_in_process_onnxruntime(served, protocol):
    queries, titles = texts(32)
    for version in (1, 2):
        want = reference(served["onnx"][version], served["tokenizer"], queries, titles, served["temperature"][version])
        assert want["lengths"].max() == MAX_LENGTH  # truncation is exercised
        got = infer(served["server"], protocol, queries, titles, version=str(version))
        np.testing.assert_allclose(got["PROBS"], want["probs"], atol=1e-5)
        np.testing.assert_allclose(got["LATENT"], want["latent"], atol=1e-4)
        assert [b.decode() for b in got["LABEL"].ravel()] == [LABELS[k] for k in want["probs"].argmax(axis=1)]
        score = want["probs"] @ np.array([1.0, 0.5, 0.25, 0.0])
        np.testing.assert_allclose(got["SCORE"].ravel(), score, atol=1e-5)
        np.testing.assert_array_equal(got["TIER"].ravel(), np.searchsorted([0.2, 0.4, 0.6, 0.8], score, side="right"))


@pytest.mark.integration
def test_peak_memory_counts_the_server_and_one_stub_per_version(served):
    mem = served["server"].peak_rss_mb()
    assert mem["server_mb"] > 10
    assert len(mem["stubs_mb"]) == 2 and min(mem["stubs_mb"]) > 10  # a python-backend stub per loaded version
    assert mem["total_mb"] == pytest.approx(mem["server_mb"] + sum(mem["stubs_mb"]))


@pytest.mark.integration
def test_two_versions_at_once_differ(served):
    queries, titles = texts(16, seed=1)
    one = infer(served["server"], "grpc", queries, titles, version="1")
    two = infer(served["server"], "grpc", queries, titles, version="2")
    latest = infer(served["server"], "grpc", queries, titles)
    assert np.abs(one["PROBS"] - two["PROBS"]).max() > 1e-2
    np.testing.assert_array_equal(latest["PROBS"], two["PROBS"])  # no version: the highest served one


@pytest.mark.integration
def test_explanation_is_the_nearest_rationale(served):
    queries, titles = texts(8, seed=2)
    got = infer(served["server"], "http", queries, titles, version="1")
    vectors = np.asarray(served["explain"]["vectors"], dtype=np.float64)
    latent = got["LATENT"].astype(np.float64)
    cos = (latent / np.linalg.norm(latent, axis=1, keepdims=True)) @ (vectors / np.linalg.norm(vectors, axis=1,
                                                                                                keepdims=True)).T
    nearest = cos.argmax(axis=1)
    assert [b.decode() for b in got["EXPLAIN_ID"].ravel()] == [served["explain"]["ids"][k] for k in nearest]
    assert [b.decode() for b in got["EXPLAIN_TEXT"].ravel()] == [served["explain"]["texts"][k] for k in nearest]
    without = infer(served["server"], "http", queries, titles, version="2")  # version 2 has no index
    assert set(without["EXPLAIN_ID"].ravel()) == {b""}


@pytest.mark.integration
def test_only_the_requested_outputs_are_computed(served):
    """A request that names no explanation output gets none (the server skips the latent output and the
    nearest-rationale lookup) and the same scores as one that asks for everything."""
    queries, titles = texts(8, seed=3)
    everything = infer(served["server"], "grpc", queries, titles, version="1")
    scores_only = infer(served["server"], "grpc", queries, titles, version="1",
                        outputs=("PROBS", "LABEL", "TIER", "SCORE"))
    assert set(scores_only) == {"PROBS", "LABEL", "TIER", "SCORE"}
    for name in scores_only:
        np.testing.assert_array_equal(scores_only[name], everything[name])
    explain_only = infer(served["server"], "grpc", queries, titles, version="1", outputs=("EXPLAIN_ID",))
    np.testing.assert_array_equal(explain_only["EXPLAIN_ID"], everything["EXPLAIN_ID"])


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_are_refused_per_request(served, protocol):
    from tritonclient.utils import InferenceServerException

    server = served["server"]
    with pytest.raises(InferenceServerException, match=r"QUERY\[1\] is not valid UTF-8 \(byte 0xff"):
        infer(server, protocol, ["usb cable", b"bad \xff bytes"], ["a cable", "another"])
    with pytest.raises(InferenceServerException, match=r"TITLE\[0\] is empty"):
        infer(server, protocol, ["usb cable"], ["   "])
    # A bad request batched together with good ones fails alone.
    queries, titles = texts(4, seed=3)
    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(infer, server, protocol, queries, titles, "1") for _ in range(6)]
        bad = [pool.submit(infer, server, protocol, [b"\xfe"] * 4, titles, "1") for _ in range(2)]
        results = [f.result() for f in good]
        for f in bad:
            with pytest.raises(InferenceServerException, match="not valid UTF-8"):
                f.result()
    for r in results[1:]:
        np.testing.assert_array_equal(r["PROBS"], results[0]["PROBS"])


@pytest.mark.integration
def test_wrong_shapes_are_refused(served):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    client = th.InferenceServerClient(served["server"].http_url)
    try:
        flat = th.InferInput("QUERY", [2], "BYTES")  # dims must be [batch, 1]
        flat.set_data_from_numpy(np.array([b"a", b"b"], dtype=np.object_))
        title = th.InferInput("TITLE", [2, 1], "BYTES")
        title.set_data_from_numpy(np.array([[b"x"], [b"y"]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="(?i)shape|dims"):
            client.infer(MODEL, [flat, title])
        query = th.InferInput("QUERY", [1, 1], "BYTES")
        query.set_data_from_numpy(np.array([[b"a"]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="(?i)batch|shape"):  # 1 query row, 2 title rows
            client.infer(MODEL, [query, title])
        with pytest.raises(InferenceServerException, match="TITLE"):
            client.infer(MODEL, [query])
        assert client.is_server_ready()  # still serving
    finally:
        client.close()


@pytest.mark.integration
def test_dead_server_is_named_with_the_fix():
    port = procs.free_port()
    with pytest.raises(ServerUnreachable, match=rf"127\.0\.0\.1:{port}.*relkd serve"):
        check(f"127.0.0.1:{port}", timeout=2)


@pytest.mark.integration
def test_start_stop_leaves_no_process_and_bad_model_fails_with_log(served, tmp_path):
    good = served["repo"]
    with triton(good, venv=default_venv(), model_control="explicit", load_models=[MODEL]) as server:
        assert check(server.http_url)["ready"]
        members = procs.group_members(server.pid)
        assert members is None or len(members) >= 2  # the server and its backend stubs
    assert not procs.group_alive(server.pid)

    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    shutil.rmtree(broken / MODEL / "2")  # one version: the failing one
    write_config(broken, MODEL, [1])
    serving = broken / MODEL / "1" / "serving.json"
    serving.write_text(serving.read_text().replace('"temperature": 1.0', '"temperature": -1.0'))
    with pytest.raises(RuntimeError, match=r"(?s)exited with code.*temperature must be > 0"):
        with triton(broken, venv=default_venv(), log_path=tmp_path / "server.log", timeout=60):
            pass
    log = (tmp_path / "server.log").read_text()
    assert "temperature must be > 0" in log
    pid = int(re.search(r"^[IWE]\d{4} \S+ (\d+) ", log, re.M).group(1))  # Triton logs its pid on each line
    assert not procs.group_alive(pid)
    with pytest.raises(FileNotFoundError, match="setup_server_env.sh"):
        server_paths(tmp_path / "no-venv")


def _serve(repo) -> tuple[subprocess.Popen, int]:
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "relkd.cli", "serve", "--repo", str(repo)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    m = re.search(r"\(pid (\d+)\)", line)
    assert m, f"relkd serve did not come up: {line!r} {proc.stderr.read()[-2000:]}"
    return proc, int(m.group(1))


def _running(pgid: int) -> list:
    return [m for m in procs.group_members(pgid) or [] if m[2] != "Z"]


@pytest.mark.integration
def test_relkd_serve_stops_on_sigterm_and_exits_when_its_server_dies(served):
    """SIGTERM (a service manager's stop) is a clean stop like Ctrl-C; a tritonserver killed under
    `relkd serve` makes it exit 1 saying so, instead of serving nothing."""
    import signal

    proc, pid = _serve(served["repo"])
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopping" in out and not _running(pid)

    proc, pid = _serve(served["repo"])
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert f"tritonserver (pid {pid}) exited with code -9" in err and "restart it with `relkd serve`" in err, err
    assert not _running(pid)
