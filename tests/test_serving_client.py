"""Batch scoring through a real tritonserver: validation, both protocols, retries, resumable shards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from test_serving_server import MODEL, build_repository, ensure_server_venv, reference, texts

from relkd import procs
from relkd.serving.client import ScoringRejected, _with_retries, read_table, score_file, score_frame
from relkd.serving.server import ServerUnreachable, free_ports, triton


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    venv = ensure_server_venv()
    built = build_repository(tmp_path_factory.mktemp("serving"), tmp_path_factory.getbasetemp() / "serving-student")
    with triton(built["repo"], venv=venv) as server:
        built["server"] = server
        yield built
    assert not procs.group_alive(server.pid)


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    queries, titles = texts(n, seed)
    return pd.DataFrame({"id": [f"p{i:04d}" for i in range(n)], "query": queries, "title": titles}, dtype=object)


MAX_CHARS = 1000
BAD = {3: "query is empty", 5: "title is not valid UTF-8", 8: "title is missing", 11: "query has 1200 characters"}


def with_bad_rows(df: pd.DataFrame, surrogate: bool = True) -> pd.DataFrame:
    df = df.copy()
    df.loc[3, "query"] = ""
    # What undecodable input bytes become (surrogateescape); parquet (Arrow) cannot even store it.
    df.loc[5, "title"] = "bad \udcff byte" if surrogate else "   "
    df.loc[8, "title"] = None
    df.loc[11, "query"] = "x" * 1200  # over MAX_CHARS
    return df


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_score_frame_matches_in_process_and_keeps_every_row(served, protocol):
    server = served["server"]
    df = with_bad_rows(frame(100))
    url = server.grpc_url if protocol == "grpc" else server.http_url
    scores, rejects = score_frame(df, url, protocol, version=1, batch_size=16, concurrency=2, max_chars=MAX_CHARS,
                                  progress=False)
    assert len(scores) + len(rejects) == len(df)
    assert dict(zip(rejects["row"], rejects["reason"])).keys() == BAD.keys()
    for row, reason in zip(rejects["row"], rejects["reason"]):
        assert reason.startswith(BAD[row]), reason
    assert list(rejects["id"]) == [f"p{r:04d}" for r in BAD]
    assert list(scores["row"]) == sorted(set(range(len(df))) - BAD.keys())  # input order
    assert list(scores["id"]) == [df["id"][r] for r in scores["row"]]
    assert set(scores["version"]) == {"1"}
    good = df.loc[scores["row"]]
    want = reference(served["onnx"][1], served["tokenizer"], good["query"], good["title"], temperature=1.0)["probs"]
    np.testing.assert_allclose(np.stack(scores["probs"]), want, atol=1e-5)
    assert list(scores["label"]) == [["exact", "substitute", "complement", "irrelevant"][k] for k in want.argmax(1)]
    assert scores["tier"].between(0, 4).all() and scores["explain_id"].str.match(r"r\d\d").all()


@pytest.mark.integration
def test_versions_and_unknown_version(served):
    server = served["server"]
    df = frame(20, seed=4)
    one, _ = score_frame(df, server.grpc_url, version="1", progress=False)
    two, _ = score_frame(df, server.grpc_url, version="2", progress=False)
    assert set(two["version"]) == {"2"} and set(two["explain_id"]) == {""}
    assert np.abs(np.stack(one["probs"]) - np.stack(two["probs"])).max() > 1e-2
    with pytest.raises(ScoringRejected, match=r"version '7' is not ready.*relevance_student:1"):
        score_frame(df, server.grpc_url, version=7, progress=False)
    big, _ = score_frame(df, server.http_url, "http", version=1, batch_size=500, progress=False)  # > max_batch_size
    np.testing.assert_allclose(np.stack(big["probs"]), np.stack(one["probs"]), atol=1e-6)


@pytest.mark.integration
def test_missing_columns_and_unknown_formats_are_clear_errors(served, tmp_path):
    server = served["server"]
    with pytest.raises(ValueError, match=r"no column \['title'\]"):
        score_frame(frame(4).drop(columns="title"), server.grpc_url, progress=False)
    (tmp_path / "in.csv").write_text("id,query\n1,usb cable\n")
    with pytest.raises(ValueError, match=r"in\.csv has no column \['title'\]"):
        score_file(tmp_path / "in.csv", tmp_path / "out", server.grpc_url, progress=False)
    (tmp_path / "in.txt").write_text("query\ttitle\n")
    with pytest.raises(ValueError, match=r"expected \.parquet, \.csv or \.jsonl, got '\.txt'"):
        score_file(tmp_path / "in.txt", tmp_path / "out", server.grpc_url, progress=False)


@pytest.mark.integration
def test_csv_jsonl_and_parquet_inputs_agree(served, tmp_path):
    df = frame(30, seed=5)
    df.to_parquet(tmp_path / "in.parquet", index=False)
    # Raw bytes that are not UTF-8 in CSV and JSONL: that row is rejected, the others are scored.
    csv = df.to_csv(index=False).encode().replace(b"p0002,", b"p0002,\xff", 1)
    (tmp_path / "in.csv").write_bytes(csv)
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in df.to_dict("records")]
    lines[2] = lines[2].replace(b'"query": "', b'"query": "\xff', 1)
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert read_table(tmp_path / "in.csv").shape == (30, 3)
    results = {}
    for name in ("in.parquet", "in.csv", "in.jsonl"):
        summary = score_file(tmp_path / name, tmp_path / f"out-{name}", served["server"].grpc_url, version=1,
                             shard_size=8, progress=False)
        results[name] = pd.read_parquet(summary["scores"])
        rejects = [json.loads(line) for line in summary["rejects"].read_text().splitlines()]
        assert summary["scored"] + summary["rejected"] == 30 and summary["shards"] == 4
        if name != "in.parquet":
            assert rejects == [{"row": 2, "id": "p0002", "reason": rejects[0]["reason"]}]
            assert "not valid UTF-8" in rejects[0]["reason"]
    keep = results["in.parquet"]["row"] != 2
    pd.testing.assert_frame_equal(results["in.parquet"][keep].reset_index(drop=True), results["in.csv"])
    pd.testing.assert_frame_equal(results["in.csv"], results["in.jsonl"])


_SCORE_SCRIPT = """
import sys
from relkd.serving.client import score_file
score_file(sys.argv[1], sys.argv[2], sys.argv[3], version=1, batch_size=4, concurrency=1, shard_size=300,
           max_chars=1000, progress=False)
"""


@pytest.mark.integration
def test_killed_run_resumes_to_identical_bytes(served, tmp_path):
    url = served["server"].grpc_url
    df = with_bad_rows(frame(3000, seed=6), surrogate=False)
    df.to_parquet(tmp_path / "in.parquet", index=False)
    score_file(tmp_path / "in.parquet", tmp_path / "whole", url, version=1, batch_size=32, concurrency=2,
               shard_size=300, max_chars=MAX_CHARS, progress=False)

    out = tmp_path / "resumed"
    proc = subprocess.Popen([sys.executable, "-c", _SCORE_SCRIPT, str(tmp_path / "in.parquet"), str(out), url],
                            start_new_session=True, stderr=subprocess.PIPE)
    first = out / "shards" / "part-00000.parquet"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), proc.stderr.read().decode()[-2000:]
    done = sorted(p.name for p in (out / "shards").glob("part-*.parquet"))
    assert 1 <= len(done) < 10 and not (out / "scores.parquet").exists(), f"not killed mid-run: {done}"

    summary = score_file(tmp_path / "in.parquet", out, url, version=1, batch_size=4, concurrency=1, shard_size=300,
                         max_chars=MAX_CHARS, progress=False)
    assert summary["shards_reused"] == len(done) and summary["rows"] == 3000
    for name in ("scores.parquet", "rejects.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert summary["scored"] + summary["rejected"] == 3000 and summary["rejected"] == len(BAD)
    with pytest.raises(ValueError, match=r"shards of another run \(different \['max_chars'\]\)"):
        score_file(tmp_path / "in.parquet", out, url, version=1, shard_size=300, max_chars=100, progress=False)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_dead_server_is_a_clear_error(protocol, tmp_path):
    url = f"127.0.0.1:{procs.free_port()}"
    with pytest.raises(ServerUnreachable, match=rf"Triton at {url} failed a health check 2 time\(s\).*relkd serve"):
        score_frame(frame(3), url, protocol, retries=1, backoff=0.01, progress=False)
    pd.DataFrame({"query": ["a"], "title": ["b"]}).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(ServerUnreachable, match=url):
        score_file(tmp_path / "in.csv", tmp_path / "out", url, protocol, retries=0, progress=False)


@pytest.mark.integration
def test_transient_errors_are_retried_request_errors_are_not(served):
    import tritonclient.grpc as tg

    # A server that comes up while the client backs off: the scoring succeeds.
    http_port, grpc_port = free_ports(2)
    ready_at, release = [], threading.Event()

    def late_server():
        with triton(served["repo"], http_port=http_port, grpc_port=grpc_port):
            ready_at.append(time.monotonic())
            release.wait(60)

    thread = threading.Thread(target=late_server)
    thread.start()
    try:
        started = time.monotonic()
        scores, _ = score_frame(frame(8), f"127.0.0.1:{grpc_port}", version=1, retries=8, backoff=0.25,
                                progress=False)
        assert len(scores) == 8 and ready_at and started < ready_at[0]
    finally:
        release.set()
        thread.join()

    # A request error (here: an empty title sent past the client's checks) is raised at once.
    client = tg.InferenceServerClient(served["server"].grpc_url)
    calls = []

    def bad_request():
        calls.append(1)
        inputs = [tg.InferInput(name, [1, 1], "BYTES") for name in ("QUERY", "TITLE")]
        inputs[0].set_data_from_numpy(np.array([[b"usb cable"]], dtype=np.object_))
        inputs[1].set_data_from_numpy(np.array([[b""]], dtype=np.object_))
        return client.infer(MODEL, inputs)

    try:
        with pytest.raises(ScoringRejected, match=r"refused a test batch: TITLE\[0\] is empty"):
            _with_retries(bad_request, "a test batch", served["server"].grpc_url, retries=3, backoff=0.01)
    finally:
        client.close()
    assert len(calls) == 1
