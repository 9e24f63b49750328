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
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_serving_server import MODEL, build_repository, ensure_server_venv, reference, texts

from relkd import procs
from relkd.serving.client import ScoringRejected, _with_retries, score_file, score_frame
from relkd.serving.config import ScoreConfig as Score
from relkd.serving.inputs import read_table
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
    scores, rejects = score_frame(df, url, Score(protocol=protocol, batch_size=16, concurrency=2, max_chars=MAX_CHARS),
                                  version=1, progress=False)
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
    big, _ = score_frame(df, server.http_url, Score(protocol="http", batch_size=500), version=1,
                         progress=False)  # > max_batch_size
    np.testing.assert_allclose(np.stack(big["probs"]), np.stack(one["probs"]), atol=1e-6)
    plain, _ = score_frame(df, server.grpc_url, Score(explain=False), version="1", progress=False)  # no lookup
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
        summary = score_file(tmp_path / name, tmp_path / f"out-{name}", served["server"].grpc_url, Score(shard_size=8),
                             version=1, progress=False)
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
from relkd.serving.config import ScoreConfig
score_file(sys.argv[1], sys.argv[2], sys.argv[3], ScoreConfig(batch_size=4, concurrency=1, shard_size=300,
           max_chars=1000), version=1, progress=False)
"""


@pytest.mark.integration
def test_killed_run_resumes_to_identical_bytes(served, tmp_path):
    url = served["server"].grpc_url
    df = with_bad_rows(frame(3000, seed=6), surrogate=False)
    df.to_parquet(tmp_path / "in.parquet", index=False)
    score_file(tmp_path / "in.parquet", tmp_path / "whole", url,
               Score(batch_size=32, concurrency=2, shard_size=300, max_chars=MAX_CHARS), version=1, progress=False)

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

    summary = score_file(tmp_path / "in.parquet", out, url,
                         Score(batch_size=4, concurrency=1, shard_size=300, max_chars=MAX_CHARS), version=1,
                         progress=False)
    assert summary["shards_reused"] == len(done) and summary["rows"] == 3000
    assert (out / "rejects.jsonl").read_bytes() == (tmp_path / "whole" / "rejects.jsonl").read_bytes()
    _same_decisions(pd.read_parquet(out / "scores.parquet"), pd.read_parquet(tmp_path / "whole" / "scores.parquet"))
    assert summary["scored"] + summary["rejected"] == 3000 and summary["rejected"] == len(BAD)
    with pytest.raises(ValueError, match=r"shards of another run \(different \['max_chars'\]\)"):
        score_file(tmp_path / "in.parquet", out, url, Score(shard_size=300, max_chars=100), version=1, progress=False)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_dead_server_is_a_clear_error(protocol, tmp_path):
    url = f"127.0.0.1:{procs.free_port()}"
    with pytest.raises(ServerUnreachable, match=rf"Triton at {url} failed a health check 2 time\(s\).*relkd serve"):
        score_frame(frame(3), url, Score(protocol=protocol, retries=1, backoff=0.01), progress=False)
    pd.DataFrame({"query": ["a"], "title": ["b"]}).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(ServerUnreachable, match=url):
        score_file(tmp_path / "in.csv", tmp_path / "out", url, Score(protocol=protocol, retries=0), progress=False)


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
        scores, _ = score_frame(frame(8), f"127.0.0.1:{grpc_port}", Score(retries=8, backoff=0.25), version=1,
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
    for name, row, reason in (("in.jsonl", 18, "line 20 is not a JSON object (Unterminated string starting at column"),
                              ("in.csv", 6, "line 8 has 4 field(s), the header (line 1) has 3 (id,query,title)")):
        summary = score_file(tmp_path / name, tmp_path / f"out-{name}", url, Score(shard_size=8), version=1,
                             progress=False)
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
    whole = score_file(tmp_path / "in.parquet", tmp_path / "whole", served["server"].grpc_url, Score(shard_size=200),
                       version=1, progress=False)
    _same_decisions(scores, pd.read_parquet(whole["scores"]))


@pytest.mark.integration
def test_same_input_same_decisions(served, tmp_path):
    """Two runs over one file, with concurrent requests that the server batches differently each time:
    the same labels and tiers; the probabilities agree to float32 rounding (README, reliability)."""
    frame(600, seed=10).to_parquet(tmp_path / "in.parquet", index=False)
    runs = []
    for k in range(2):
        summary = score_file(tmp_path / "in.parquet", tmp_path / f"run{k}", served["server"].grpc_url,
                             Score(batch_size=8, concurrency=4), version=1, progress=False)
        runs.append(pd.read_parquet(summary["scores"]))
    assert list(runs[0]["row"]) == list(range(600))
    diff = _same_decisions(*runs)
    print(f"largest probability difference between the two runs: {diff:.2e}; rows that differ at all: "
          f"{int((np.stack(runs[0]['probs']) != np.stack(runs[1]['probs'])).any(axis=1).sum())} of 600; "
          f"explain_id differs: {int((runs[0]['explain_id'] != runs[1]['explain_id']).sum())}")


# ------------------------------------------------------------------------------- a nightly job (issue 34)
def _rejects(summary) -> list[dict]:
    return [json.loads(line) for line in summary["rejects"].read_text().splitlines()]


@pytest.mark.integration
def test_compressed_inputs_are_read(served, tmp_path):
    """.csv.gz and .jsonl.gz are read like their plain files, Parquet with any codec; a gzipped Parquet file and a
    broken gzip file are named with the fix before any server is asked."""
    import gzip

    df = frame(20, seed=11)
    df.loc[4, "title"] = ""  # rejected in every format alike
    df.to_parquet(tmp_path / "plain.parquet", index=False, compression=None)
    with gzip.open(tmp_path / "in.csv.gz", "wt", encoding="utf-8") as f:
        f.write(df.to_csv(index=False))
    with gzip.open(tmp_path / "in.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in df.to_dict("records"))
    names = ["in.csv.gz", "in.jsonl.gz"]
    for codec in ("snappy", "gzip", "zstd", "brotli", "lz4"):
        df.to_parquet(tmp_path / f"{codec}.parquet", index=False, compression=codec)
        names.append(f"{codec}.parquet")
    url = served["server"].grpc_url
    want = score_file(tmp_path / "plain.parquet", tmp_path / "out-plain", url, version=1, progress=False)
    want_scores = pd.read_parquet(want["scores"])
    for name in names:
        got = score_file(tmp_path / name, tmp_path / f"out-{name}", url, version=1, progress=False)
        assert _rejects(got) == _rejects(want) == [{"row": 4, "id": "p0004", "reason": "title is empty"}], name
        _same_decisions(pd.read_parquet(got["scores"]), want_scores)
    (tmp_path / "in.parquet.gz").write_bytes(gzip.compress((tmp_path / "plain.parquet").read_bytes()))
    with pytest.raises(ValueError, match=r"a gzipped Parquet file; Parquet compresses inside the file.*gunzip it"):
        score_file(tmp_path / "in.parquet.gz", tmp_path / "out", url, progress=False)
    (tmp_path / "cut.csv.gz").write_bytes((tmp_path / "in.csv.gz").read_bytes()[:-30])
    with pytest.raises(ValueError, match=r"cut\.csv\.gz as CSV: it is not a complete gzip file"):
        score_file(tmp_path / "cut.csv.gz", tmp_path / "out", url, progress=False)


@pytest.mark.integration
def test_an_over_long_field_is_one_rule_in_csv_and_jsonl(served, tmp_path):
    """A field over the csv module's 131,072-character limit is read, and rejected by max_chars with its id,
    exactly as the same row in JSONL (it lost its id to the parser's own error before)."""
    import csv as csv_module

    df = frame(6, seed=12)
    df.loc[2, "title"] = "x" * 300_000
    df.to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    got = {}
    for name in ("in.csv", "in.jsonl"):
        summary = score_file(tmp_path / name, tmp_path / f"out-{name}", served["server"].grpc_url,
                             Score(max_chars=MAX_CHARS), version=1, progress=False)
        assert summary["scored"] == 5, summary
        got[name] = _rejects(summary)
    assert got["in.csv"] == got["in.jsonl"] == [{"row": 2, "id": "p0002", "reason": (
        "title has 300000 characters, over max_chars=1000 (the model reads only its first max_length tokens; "
        "shorten the text or raise max_chars)")}]
    assert csv_module.field_size_limit() == 131072  # the reader's raised limit does not outlive the read


def test_a_broken_jsonl_line_is_named_at_the_column_where_it_breaks(tmp_path):
    from relkd.serving.inputs import read_rows

    good = '{"id": "a", "query": "usb cable", "title": "usb c cable 2m"}'
    lines = [good, good[:-1], '{"id": "c", "query": "usb" "title": "x"}', good[:-9]]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    _, errors = read_rows(tmp_path / "in.jsonl")
    assert errors == {
        1: f"line 2 is not a JSON object (Expecting ',' delimiter at its end, column {len(good)}: the line is cut "
           "short); write one JSON object per line",
        2: "line 3 is not a JSON object (Expecting ',' delimiter at column 28 of its 40 characters); write one JSON "
           "object per line",
        3: "line 4 is not a JSON object (Unterminated string starting at column 44 of its 51 characters); write one "
           "JSON object per line"}


@pytest.mark.integration
def test_repeated_ids_keep_the_first_row_and_reject_the_later_ones(served, tmp_path):
    """The first row with an id keeps it, whatever becomes of it (row 3 is itself rejected for its empty query);
    later rows with that id are rejected, so every scored id names one row; rows without an id are not
    duplicates. score_frame applies the same rule."""
    df = frame(10, seed=13)
    df.loc[3, "query"] = ""
    df.loc[[6, 8], "id"] = "p0003"
    df.loc[[1, 4], "id"] = None
    df.to_parquet(tmp_path / "in.parquet", index=False)
    summary = score_file(tmp_path / "in.parquet", tmp_path / "out", served["server"].grpc_url, version=1,
                         progress=False)
    rule = ("id 'p0003' repeats the id of row 3 (the first row with an id keeps it, later ones are rejected so scores "
            "join back by id); give each row its own id")
    assert _rejects(summary) == [{"row": 3, "id": "p0003", "reason": "query is empty"},
                                 {"row": 6, "id": "p0003", "reason": rule}, {"row": 8, "id": "p0003", "reason": rule}]
    assert summary["duplicate_ids"] == 2 and summary["scored"] == 7
    scores = pd.read_parquet(summary["scores"])
    assert scores["id"].dropna().is_unique and scores["id"].isna().sum() == 2
    _, rejects = score_frame(df, served["server"].grpc_url, version=1, progress=False)
    assert list(rejects["row"]) == [3, 6, 8] and list(rejects["reason"])[1:] == [rule, rule]


@pytest.mark.integration
def test_a_full_disk_names_the_folder_keeps_the_shards_and_the_rerun_resumes(served, tmp_path, monkeypatch):
    """ENOSPC from the parquet writer (simulated: no privileges for a small filesystem in CI) while a shard and
    then while the final scores are written: an error naming the folder, the rows kept and the same command;
    no half-written file is left; the rerun resumes and accounts for every row."""
    import errno

    from click.testing import CliRunner

    from relkd.cli import main

    frame(30, seed=14).to_parquet(tmp_path / "in.parquet", index=False)
    out, url = tmp_path / "out", served["server"].grpc_url
    real = pd.DataFrame.to_parquet
    writes = []

    def full_disk_at(k: int, name: str = ""):
        def to_parquet(self, path, *args, **kwargs):
            writes.append(Path(path).name)
            if len(writes) == k or (name and Path(path).name.startswith(f".{name}.")):
                Path(path).write_bytes(b"PAR1 half")  # the device filled up mid-write
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, path, *args, **kwargs)
        return to_parquet

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk_at(2))
    res = CliRunner().invoke(main, ["score", str(tmp_path / "in.parquet"), "--out", str(out), "--url", url,
                                    "--version", "1", "--shard-size", "10"])
    message = " ".join(res.output.split())
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert (f"Error: no space left on the device of {out} (No space left on device); 10 of 30 rows are done and "
            f"kept; the 1 finished shard(s) are kept in {out / 'shards'}: run the same command again once space is "
            "freed on that device and it resumes there") in message, message
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["manifest.json", "part-00000.parquet"]

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk_at(0, name="scores.parquet"))
    with pytest.raises(OSError, match=r"30 of 30 rows are done and kept; the 3 finished shard\(s\)") as err:
        score_file(tmp_path / "in.parquet", out, url, Score(shard_size=10), version=1, progress=False)
    assert err.value.errno == errno.ENOSPC and not list(out.glob("*.tmp")) and not (out / "scores.parquet").exists()

    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    summary = score_file(tmp_path / "in.parquet", out, url, Score(shard_size=10), version=1, progress=False)
    assert summary["shards_reused"] == 3 and summary["scored"] + summary["rejected"] == 30
    assert list(pd.read_parquet(summary["scores"])["row"]) == list(range(30))


@pytest.mark.integration
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_files_follow_the_umask(served, tmp_path, umask):
    """A nightly job's consumers often run as another user: the outputs get the umask's permissions (0600
    before: the temporary files of atomic writes kept mkstemp's)."""
    frame(5, seed=15).to_parquet(tmp_path / "in.parquet", index=False)
    old = os.umask(umask)
    try:
        score_file(tmp_path / "in.parquet", tmp_path / "out", served["server"].grpc_url, version=1, progress=False)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"scores.parquet", "rejects.jsonl", "manifest.json", "part-00000.parquet"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


@pytest.mark.integration
def test_sigterm_of_relkd_score_says_what_is_kept_and_returns_once_its_server_is_gone(served, tmp_path):
    """A scheduler's SIGTERM: `relkd score` (starting its own server) says that it stopped, how many rows are kept
    and how to resume, exits 143, and by then no process of its server is left; the same command resumes."""
    import shutil

    repo = shutil.copytree(served["repo"], tmp_path / "own_repo")
    frame(1200, seed=16).to_parquet(tmp_path / "in.parquet", index=False)
    out = tmp_path / "out"
    proc = subprocess.Popen(_score_cli(tmp_path / "in.parquet", out, "--repo", str(repo)),
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_first_shard(out, proc)
        assert _server_processes(str(repo))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        left = _server_processes(str(repo))  # at once: the command returns only after its server is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = " ".join(err.decode().split())
    assert proc.returncode == 143 and not left, (proc.returncode, left, err)
    kept = sorted(p.name for p in (out / "shards").glob("part-*.parquet"))
    assert 1 <= len(kept) < 6, kept
    assert (f"relkd score stopped by SIGTERM: scoring stopped: {200 * len(kept)} of 1200 rows are done and kept; "
            f"the {len(kept)} finished shard(s) are kept in {out / 'shards'}: run the same command again and it "
            "resumes there; its server is stopped") in err, err
    summary = score_file(tmp_path / "in.parquet", out, served["server"].grpc_url, Score(shard_size=200),
                         version="1", progress=False)
    assert summary["shards_reused"] == len(kept) and summary["scored"] == 1200
