"""Batch scoring through a real tritonserver: validation, both protocols, retries, resumable shards."""
from __future__ import annotations

import json
import os
import re
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
    plain, _ = score_frame(df, server.grpc_url, version="1", explain=False, progress=False)  # no lookup asked for
    assert set(plain["explain_id"]) == {""} and set(one["explain_id"]) != {""}
    np.testing.assert_allclose(np.stack(plain["probs"]), np.stack(one["probs"]), atol=1e-6)


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


def _same_decisions(a: pd.DataFrame, b: pd.DataFrame, atol: float = 1e-5) -> float:
    """Equal rows, ids, versions, labels and tiers; probabilities and scores equal up to `atol`: the
    server pads each batch to its longest pair, and which requests it batches together changes between
    runs, so float32 sums run over other lengths. (Not explain_id: this tiny random model's rationale
    vectors are almost parallel, so float noise picks another nearest one.) Returns the largest difference."""
    keys = ["row", "id", "version", "label", "tier"]
    pd.testing.assert_frame_equal(a[keys], b[keys])
    probs = np.abs(np.stack(a["probs"]) - np.stack(b["probs"])).max(initial=0.0)
    score = np.abs(a["score"].to_numpy() - b["score"].to_numpy()).max(initial=0.0)
    assert probs <= atol and score <= atol, (probs, score)
    return float(probs)


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
    assert (out / "rejects.jsonl").read_bytes() == (tmp_path / "whole" / "rejects.jsonl").read_bytes()
    _same_decisions(pd.read_parquet(out / "scores.parquet"), pd.read_parquet(tmp_path / "whole" / "scores.parquet"))
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


# ------------------------------------------------------------------------------------ faults (issue 13)
def _rows(n: int, seed: int) -> list[dict]:
    return frame(n, seed).to_dict("records")


@pytest.mark.integration
def test_a_broken_line_is_rejected_alone(served, tmp_path):
    """One malformed JSONL line or CSV row goes to the rejects with its line number; the rest is scored."""
    url = served["server"].grpc_url
    lines = [json.dumps(r) for r in _rows(21, seed=7)]
    lines[18] = lines[18][:-7]  # line 19 cut short
    (tmp_path / "in.jsonl").write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n")  # a blank line
    (tmp_path / "in.csv").write_text(frame(21, seed=7).to_csv(index=False).replace("p0006,", "p0006,extra,", 1)
                                     + 'p0021,"usb cable,never closed\n')
    for name, row, reason in (("in.jsonl", 18, "line 20 is not a JSON object (Invalid control character at column"),
                              ("in.csv", 6, "line 8 has 4 field(s), the header (line 1) has 3 (id,query,title)")):
        summary = score_file(tmp_path / name, tmp_path / f"out-{name}", url, version=1, shard_size=8, progress=False)
        rejects = [json.loads(line) for line in summary["rejects"].read_text().splitlines()]
        scores = pd.read_parquet(summary["scores"])
        assert rejects[0]["row"] == row and rejects[0]["id"] is None, rejects
        assert rejects[0]["reason"].startswith(reason), rejects
        want = 21 if name == "in.jsonl" else 22
        assert summary["rows"] == want and summary["scored"] + summary["rejected"] == want
        assert sorted(list(scores["row"]) + [r["row"] for r in rejects]) == list(range(want))
    assert rejects[1] == {"row": 21, "id": None, "reason": "line 23 opens a quoted field that is never closed "
                                                           "(it runs to the end of the file); close the quote"}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
@pytest.mark.parametrize("content", ["empty", "random"])
def test_unreadable_files_name_the_file_the_format_and_the_fix(tmp_path, suffix, content):
    from click.testing import CliRunner

    from relkd.cli import main

    path = tmp_path / f"batch{suffix}"
    path.write_bytes(b"" if content == "empty" else np.random.default_rng(3).bytes(4096))
    fmt = {".csv": "CSV", ".jsonl": "JSONL", ".parquet": "Parquet"}[suffix]
    why = {"empty": "the file is empty", "random": {".csv": "binary data", ".jsonl": "none of its",
                                                    ".parquet": "magic bytes"}[suffix]}[content]
    pattern = rf"cannot read {re.escape(str(path))} as {fmt}: .*{why}.*Expected .*query.*title"
    with pytest.raises(ValueError, match=pattern):  # before any server is asked
        score_file(path, tmp_path / "out", f"127.0.0.1:{procs.free_port()}", progress=False)
    # `relkd score` without --url says so before starting a server (the repository need not even exist).
    res = CliRunner().invoke(main, ["score", str(path), "--out", str(tmp_path / "out"), "--repo", str(tmp_path / "no")])
    assert res.exit_code == 1 and re.search(pattern, " ".join(res.output.split())), res.output


def _server_processes(marker: str) -> dict[int, str]:
    """pid -> command line of every live process whose command line names `marker` (zombies have none)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found[int(entry)] = cmdline
    return found


def _wait_no_server(marker: str, pids, timeout: float = 30) -> float:
    """Seconds until no process names `marker`; reaps those that became our zombies (we are a subreaper)."""
    t0 = time.monotonic()
    while _server_processes(marker):
        assert time.monotonic() - t0 < timeout, f"still running: {_server_processes(marker)}"
        time.sleep(0.2)
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not ours: its new parent reaped it
            pass
    return time.monotonic() - t0


def _score_cli(batch, out, *args) -> list[str]:
    return [sys.executable, "-m", "relkd.cli", "score", str(batch), "--out", str(out), "--version", "1",
            "--batch-size", "4", "--concurrency", "1", "--shard-size", "200", *args]


def _wait_first_shard(out, proc, timeout: float = 180):
    first = out / "shards" / "part-00000.parquet"
    deadline = time.monotonic() + timeout
    while not first.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, "no shard written"
        time.sleep(0.01)


@pytest.mark.integration
def test_sigkill_of_relkd_score_leaves_no_server(served, tmp_path):
    """`relkd score` starting its own server is killed with SIGKILL (a scheduler's kill): within seconds no
    tritonserver and no python-backend stub of it is left."""
    import shutil

    repo = shutil.copytree(served["repo"], tmp_path / "own_repo")  # a path only this test's server names
    frame(1200, seed=8).to_parquet(tmp_path / "in.parquet", index=False)
    proc = subprocess.Popen(_score_cli(tmp_path / "in.parquet", tmp_path / "out", "--repo", str(repo)),
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_first_shard(tmp_path / "out", proc)
        running = _server_processes(str(repo))
        assert sum("tritonserver" in c for c in running.values()) == 1, running
        assert sum("triton_python_backend_stub" in c for c in running.values()) == 2, running  # one per version
        os.kill(proc.pid, signal.SIGKILL)  # the client alone, not its group
        proc.wait()
        seconds = _wait_no_server(str(repo), running)
        assert seconds < 15, f"the server outlived its killed client by {seconds:.1f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_server_killed_mid_run_is_a_clear_error_and_a_rerun_resumes(served, tmp_path):
    """kill -9 of the tritonserver while `relkd score --url` runs: the client stops after its retries
    naming the kept shards; against a restarted server (another port) the rerun scores every row once,
    with the decisions of an uninterrupted run."""
    import shutil

    repo = shutil.copytree(served["repo"], tmp_path / "own_repo")
    df = with_bad_rows(frame(1200, seed=9), surrogate=False)
    df.to_parquet(tmp_path / "in.parquet", index=False)
    out = tmp_path / "out"
    with triton(repo) as server:
        proc = subprocess.Popen(_score_cli(tmp_path / "in.parquet", out, "--url", server.grpc_url),
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            _wait_first_shard(out, proc)
            stubs = _server_processes(str(repo))
            os.kill(server.pid, signal.SIGKILL)
            t0 = time.monotonic()
            _, err = proc.communicate(timeout=120)
            stopped_after = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
        _wait_no_server(str(repo), stubs)  # the dead server's stubs are stopped too
    err = " ".join(err.decode().split())
    assert proc.returncode == 1 and stopped_after < 30, err
    kept = sorted(p.name for p in (out / "shards").glob("part-*.parquet"))
    assert 1 <= len(kept) < 6 and not (out / "scores.parquet").exists(), kept
    assert re.search(rf"Error: Triton at {re.escape(server.grpc_url)} failed .* 4 time\(s\)", err), err
    assert f"the {len(kept)} finished shard(s) are kept in {out / 'shards'}: run the same command again" in err, err

    with triton(repo) as restarted:
        res = subprocess.run(_score_cli(tmp_path / "in.parquet", out, "--url", restarted.grpc_url),
                             capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    scores = pd.read_parquet(out / "scores.parquet")
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    rows = list(scores["row"]) + [r["row"] for r in rejects]
    assert len(rows) == len(set(rows)) == 1200
    assert [r["row"] for r in rejects] == [3, 5, 8]  # row 11 is under the CLI's max_chars
    whole = score_file(tmp_path / "in.parquet", tmp_path / "whole", served["server"].grpc_url, version=1,
                       shard_size=200, progress=False)
    _same_decisions(scores, pd.read_parquet(whole["scores"]))


@pytest.mark.integration
def test_same_input_same_decisions(served, tmp_path):
    """Two runs over one file, with concurrent requests that the server batches differently each time:
    the same labels and tiers; the probabilities agree to float32 rounding (README, reliability)."""
    frame(600, seed=10).to_parquet(tmp_path / "in.parquet", index=False)
    runs = []
    for k in range(2):
        summary = score_file(tmp_path / "in.parquet", tmp_path / f"run{k}", served["server"].grpc_url, version=1,
                             batch_size=8, concurrency=4, progress=False)
        runs.append(pd.read_parquet(summary["scores"]))
    assert list(runs[0]["row"]) == list(range(600))
    diff = _same_decisions(*runs)
    print(f"largest probability difference between the two runs: {diff:.2e}; rows that differ at all: "
          f"{int((np.stack(runs[0]['probs']) != np.stack(runs[1]['probs'])).any(axis=1).sum())} of 600; "
          f"explain_id differs: {int((runs[0]['explain_id'] != runs[1]['explain_id']).sum())}")
