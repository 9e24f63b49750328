"""The online A/B through a real tritonserver: the router (python backend, BLS) in front of two versions of a tiny
student, its exposure log and metrics, sticky assignment across restarts, faults, and a replay that survives
kill -9 of the server."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from test_serving_server import MODEL, build_repository, ensure_server_venv, texts

from relkd.serving.assignment import Assigner
from relkd.serving.config import AbConfig, OnlineConfig, ScoreConfig, TritonConfig
from relkd.serving.exposures import read_folder, read_lines
from relkd.serving.router import write_router
from relkd.serving.server import ServerUnreachable, triton

pytestmark = pytest.mark.integration
ROUTER = OnlineConfig().router_name
# Wider arms than the paper's 10% / 10% so a few dozen units reach every arm; the shares themselves are tested on
# 10,000 units in test_serving_online_ab.
AB = AbConfig(salt="exp-test", champion_share=0.3, challenger_share=0.3)
ASSIGN = Assigner(AB.salt, {"champion": 0.3, "challenger": 0.3})
VERSION = {"champion": 1, "challenger": 2, "unassigned": 1}


def grpc(server):
    import tritonclient.grpc as module

    return module, module.InferenceServerClient(server.grpc_url)


def route(server, queries, titles, units=None, request_id="", experiment=None, outputs=None):
    """One request to the router; returns {output: array} (the outputs the response carries)."""
    module, client = grpc(server)
    try:
        inputs = []
        columns = [("QUERY", queries), ("TITLE", titles)] + ([("UNIT_ID", units)] if units is not None else []) \
            + ([("EXPERIMENT", [experiment] * len(queries))] if experiment is not None else [])
        for name, values in columns:
            tensor = module.InferInput(name, [len(values), 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[v.encode()] for v in values], dtype=np.object_))
            inputs.append(tensor)
        asked = [module.InferRequestedOutput(o) for o in outputs] if outputs else None
        result = client.infer(ROUTER, inputs, outputs=asked, request_id=request_id)
        names = ("PROBS", "LABEL", "TIER", "SCORE", "ARM", "VERSION", "EXPLAIN_ID")
        return {o: got for o in names if (got := result.as_numpy(o)) is not None}
    finally:
        client.close()


def direct(server, queries, titles, version):
    module, client = grpc(server)
    try:
        inputs = []
        for name, values in (("QUERY", queries), ("TITLE", titles)):
            tensor = module.InferInput(name, [len(values), 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[v.encode()] for v in values], dtype=np.object_))
            inputs.append(tensor)
        return client.infer(MODEL, inputs, model_version=str(version)).as_numpy("PROBS")
    finally:
        client.close()


def arms_of(result) -> list[str]:
    return [a.decode() for a in result["ARM"].ravel()]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    ensure_server_venv()
    root = tmp_path_factory.mktemp("online")
    built = build_repository(root, tmp_path_factory.getbasetemp() / "serving-student")
    write_router(built["repo"], {"champion": 1, "challenger": 2}, AB,
                 OnlineConfig(exposures=str(root / "default-exposures")), TritonConfig(model_name=MODEL))
    return built["repo"]


@pytest.fixture(scope="module")
def served(repo, tmp_path_factory):
    exposures = tmp_path_factory.mktemp("exposures")
    with triton(repo, exposures=exposures) as server:
        yield server, exposures


def test_each_unit_gets_its_arm_that_versions_scores_and_one_exposure_per_row(served):
    server, exposures = served
    queries, titles = texts(48, seed=5)
    units = [f"user-{i}" for i in range(48)]
    got = route(server, queries, titles, units, request_id="req-arms")
    arms = arms_of(got)
    assert arms == [ASSIGN(u) for u in units] and set(arms) == {"champion", "challenger", "unassigned"}
    assert got["VERSION"].ravel().tolist() == [VERSION[a] for a in arms]
    for version in (1, 2):  # each row carries the scores of the version that served it
        mine = np.array([VERSION[a] == version for a in arms])
        np.testing.assert_allclose(got["PROBS"][mine], direct(server, queries, titles, version)[mine], atol=1e-5)
    records = [r for r in read_folder(exposures)[0] if r["request_id"] == "req-arms"]
    assert [r["row"] for r in records] == list(range(48))
    assert [(r["unit_id"], r["arm"], r["version"], r["label"], r["tier"]) for r in records] == [
        (u, a, VERSION[a], lab.decode(), int(t)) for u, a, lab, t in
        zip(units, arms, got["LABEL"].ravel(), got["TIER"].ravel())]
    assert {r["experiment"] for r in records} == {AB.salt} and all(r["unit_from"] == "UNIT_ID" for r in records)


def test_exposures_equal_responses_under_4_concurrent_clients_and_metrics_count_them(served):
    server, exposures = served

    def metric_rows() -> dict:
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        found = re.findall(r'relkd_ab_requests_total\{arm="(\w+)",experiment="exp-test",version="\d"\} (\d+)', text)
        return {arm: int(n) for arm, n in found}

    before = metric_rows()
    queries, titles = texts(30, seed=6)

    def client(c: int) -> list:
        ok = []
        for k in range(30):
            rid = f"conc-{c}-{k}"
            if k % 10 == 3:  # a bad request now and then: refused, and not logged
                with pytest.raises(Exception, match="TITLE"):
                    route(server, [queries[k]], [""], [f"u{c}-{k}"], rid)
                continue
            rows = 1 + k % 3
            ok += [(rid, arm) for arm in arms_of(route(server, [queries[k]] * rows, [titles[k]] * rows,
                                                       [f"u{c}-{k}-{j}" for j in range(rows)], rid))]
        return ok

    with ThreadPoolExecutor(4) as pool:
        answered = [x for part in pool.map(client, range(4)) for x in part]
    records = [r for r in read_folder(exposures)[0] if r["request_id"].startswith("conc-")]
    assert len(records) == len(answered) == 4 * 27 * 2  # rows of 27 answered requests per client, 1-3 rows each
    assert sorted((r["request_id"], r["arm"]) for r in records) == sorted(answered)
    after = metric_rows()
    for arm in ("champion", "challenger", "unassigned"):
        assert after[arm] - before.get(arm, 0) == sum(a == arm for _, a in answered)
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert 'relkd_ab_latency_ms_bucket{arm="challenger",experiment="exp-test",le="+Inf"}' in text
    assert 'relkd_ab_failures_total{arm="none",experiment="exp-test",reason="bad_request"}' in text


def test_bad_requests_get_clear_errors(served):
    from tritonclient.utils import InferenceServerException

    server, exposures = served
    with pytest.raises(InferenceServerException, match="neither UNIT_ID nor a request id"):
        route(server, ["usb cable"], ["a cable"])
    with pytest.raises(InferenceServerException, match=r"unknown experiment 'old-exp'.*runs experiment 'exp-test'"):
        route(server, ["usb cable"], ["a cable"], ["u1"], "r-exp", experiment="old-exp")
    with pytest.raises(InferenceServerException, match=r"UNIT_ID\[0\] is empty"):
        route(server, ["usb cable"], ["a cable"], [" "], "r-empty")
    # Without a unit id the request id is the unit; naming the running experiment is fine; outputs as asked.
    got = route(server, ["usb cable"], ["a cable"], request_id="only-an-id", experiment="exp-test",
                outputs=["ARM", "TIER"])
    assert set(got) == {"ARM", "TIER"} and arms_of(got) == [ASSIGN("only-an-id")]
    record = next(r for r in read_folder(exposures)[0] if r["request_id"] == "only-an-id")
    assert record["unit_id"] == "only-an-id" and record["unit_from"] == "request_id"


def test_sticky_across_two_restarts_one_of_them_relkd_serve(repo, served, tmp_path):
    server, _ = served
    units = [f"sticky-{i}" for i in range(40)]
    queries, titles = texts(40, seed=7)
    first = arms_of(route(server, queries, titles, units, "sticky-0"))
    with triton(repo, exposures=tmp_path / "second") as again:
        second = arms_of(route(again, queries, titles, units, "sticky-1"))
    proc = subprocess.Popen([sys.executable, "-m", "relkd.cli", "serve", "--repo", str(repo), "--exposures",
                             str(tmp_path / "third")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"gRPC 127\.0\.0\.1:(\d+)", line)
        assert m, f"relkd serve did not come up: {line!r} {proc.stderr.read()[-2000:] if proc.poll() else ''}"

        class Third:
            grpc_url = f"127.0.0.1:{m.group(1)}"

        third = arms_of(route(Third, queries, titles, units, "sticky-2"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert first == second == third == [ASSIGN(u) for u in units]
    assert len(read_folder(tmp_path / "third")[0]) == 40  # `relkd serve --exposures` put the log there


def test_an_unloaded_challenger_fails_clearly_and_the_champion_still_serves(repo, tmp_path):
    from tritonclient.utils import InferenceServerException

    from relkd.serving.repository import write_config

    partial = tmp_path / "repo"
    shutil.copytree(repo, partial)
    shutil.rmtree(partial / MODEL / "2")
    write_config(partial, MODEL, [1])  # the router still names version 2 as the challenger
    units = [f"c-{i}" for i in range(40)]
    challenger = next(u for u in units if ASSIGN(u) == "challenger")
    others = [u for u in units if ASSIGN(u) != "challenger"][:5]
    with triton(partial, exposures=tmp_path / "exp") as server:
        with pytest.raises(InferenceServerException, match=r"challenger arm \(version 2 of relevance_student\) did "
                                                           r"not answer.*Is that version loaded"):
            route(server, ["usb cable"], ["a cable"], [challenger], "to-challenger")
        got = route(server, ["usb cable"] * 5, ["a cable"] * 5, others, "to-champion")
        assert set(got["VERSION"].ravel().tolist()) == {1}
    records, _ = read_folder(tmp_path / "exp")
    assert [r["request_id"] for r in records] == ["to-champion"] * 5  # the failed request was not logged


def test_the_router_refuses_to_start_without_a_writable_exposure_folder(repo, tmp_path):
    alone = tmp_path / "repo"  # the router alone: it fails in its initialize, before it would call a student
    shutil.copytree(repo / ROUTER, alone / ROUTER)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(RuntimeError, match=r"(?s)exposure folder .*a-file/exposures is not writable.*refuses"):
        with triton(alone, exposures=tmp_path / "a-file" / "exposures", timeout=60):
            pass


def test_kill_9_mid_replay_keeps_the_log_and_the_replay_resumes_without_double_counting(repo, tmp_path):
    from relkd.serving.replay import replay_file

    queries, titles = texts(300, seed=8)
    rng = np.random.default_rng(8)
    batch = pd.DataFrame({"query": queries, "title": titles,
                          "unit_id": [f"user-{k}" for k in rng.integers(0, 120, 300)]})
    batch.loc[5, "title"] = ""  # not sendable: a reject, never a request
    batch.to_parquet(tmp_path / "batch.parquet")
    exposures, out = tmp_path / "exposures", tmp_path / "replay"
    with triton(repo, exposures=exposures) as server:
        failure = []
        worker = threading.Thread(target=lambda: failure.append(_expect_unreachable(
            replay_file, tmp_path / "batch.parquet", out, server.grpc_url,
            OnlineConfig(router_name=ROUTER, rate=120, concurrency=4), ScoreConfig(retries=1, backoff=0.1),
            progress=False)))
        worker.start()
        deadline = time.monotonic() + 60
        while (not (out / "journal.jsonl").exists() or len(read_lines(out / "journal.jsonl")[0]) < 60) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)
        worker.join(timeout=120)
    assert failure and "run the same command again" in failure[0]
    before, counts = read_folder(exposures)  # readable after the kill; a torn last line would be counted
    journal = read_lines(out / "journal.jsonl")[0]
    assert 60 <= len(journal) < 299 and counts["corrupt"] == 0
    assert {r["request_id"] for r in journal} <= {r["request_id"] for r in before}  # every answer was logged first

    with triton(repo, exposures=exposures) as server:
        summary = replay_file(tmp_path / "batch.parquet", out, server.grpc_url,
                              OnlineConfig(router_name=ROUTER, rate=0, concurrency=4), progress=False)
    assert summary["resumed"] == len(journal) and summary["sent"] == 299 - len(journal)
    assert summary["answered"] == 299 and summary["rejected"] == 1
    rows = read_lines(out / "journal.jsonl")[0]
    assert sorted(r["row"] for r in rows) == [i for i in range(300) if i != 5]  # each row answered once
    after, counts = read_folder(exposures)
    assert counts["files"] == 2  # the second server wrote its own file
    from relkd.serving.online_ab import online_report

    report = online_report(after, counts, None, None, AB.salt, ASSIGN.expected(), OnlineConfig(), 200, 0)
    assert sum(report["exposures"].values()) == 299  # a row resent after the kill is counted once
    assert sum(report["units"].values()) == batch.loc[batch.index != 5, "unit_id"].nunique()
    assert report["log"]["duplicates"] == len(after) - 299


def _expect_unreachable(fn, *args, **kwargs) -> str:
    try:
        fn(*args, **kwargs)
    except ServerUnreachable as e:
        return str(e)
    return "the replay finished although the server was killed"
