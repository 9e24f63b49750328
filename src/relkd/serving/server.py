"""Starts a real Triton Inference Server on CPU (from its own venv) and stops it, leaving nothing behind.

The server is the ``tritonserver`` bundled in ``nvidia-pytriton`` (python backend only), run from a
separate venv with numpy<2 (``scripts/setup_server_env.sh`` builds it; STACK.md says why). It listens
on 127.0.0.1 only and runs in its own process group (``relkd.procs``), so stopping it also stops the
python-backend stub processes it spawned.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from relkd import procs
from relkd.serving.router_model import EXPOSURES_ENV

SETUP_HINT = "create it with `bash scripts/setup_server_env.sh` (or set RELKD_TRITON_VENV to an existing one)"
START_HINT = "start it with `relkd serve` (or check the URL and port)"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 is never behind a proxy


class ServerUnreachable(ConnectionError):
    """No Triton server answers at the given URL."""


def default_venv() -> Path:
    """``$RELKD_TRITON_VENV``, else ``.venv-triton`` beside the venv this process runs in."""
    env = os.environ.get("RELKD_TRITON_VENV")
    return Path(env) if env else Path(sys.prefix).parent / ".venv-triton"


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports on 127.0.0.1 that are free now (all bound at once, so the OS cannot
    hand out the same port twice, which it does to back-to-back single probes)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@lru_cache(maxsize=8)
def _venv_facts(python: str) -> dict:
    code = ("import json, sysconfig; print(json.dumps({'site': sysconfig.get_paths()['purelib'], "
            "'libdir': sysconfig.get_config_var('LIBDIR')}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def server_paths(venv=None) -> dict:
    """The tritonserver binary, our backend directory and the server's environment for `venv`.

    LD_LIBRARY_PATH names the venv's libpython folder first: without it the backend stub can load a
    different libpython than the venv's and crash. The venv's bin/ leads PATH so the stub imports
    that venv's packages (numpy<2, onnxruntime, tokenizers).
    """
    venv = Path(venv) if venv is not None else default_venv()
    python = venv / "bin" / "python"
    backends = venv / "triton-backends"
    if not python.exists() or not (backends / "python" / "triton_python_backend_stub").exists():
        raise FileNotFoundError(f"Triton server venv {venv} is missing or incomplete; {SETUP_HINT}")
    facts = _venv_facts(str(python))
    site = Path(facts["site"])
    binary = site / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not binary.exists():
        raise FileNotFoundError(f"{binary} not found (is nvidia-pytriton installed in {venv}?); {SETUP_HINT}")
    env = dict(os.environ)
    libs = [facts["libdir"], str(site / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv)
    # Asked, though the backend stub still writes model.py's __pycache__ into the repository (a DVC
    # output); .dvcignore is what keeps the repository's hash stable.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for var in ("PYTHONPATH", "PYTHONHOME"):  # the training venv's paths must not leak into the stub
        env.pop(var, None)
    return {"binary": binary, "backend_dir": backends, "env": env, "venv": venv, "site_packages": site}


@dataclass(frozen=True)
class TritonServer:
    """A running server: tritonclient takes ``http_url``/``grpc_url`` (host:port, no scheme)."""

    http_port: int
    grpc_port: int
    metrics_port: int
    pid: int
    log_path: Path
    model_repository: Path
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = field(default=None, compare=False, repr=False)

    def exited(self) -> str | None:
        """None while the server runs; once it has died, what it said (exit code and log tail)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        # A temporary log is removed once the server is stopped: name only a log that stays.
        kept = "" if getattr(self.proc, "_relkd_temp_log", False) else f" ({self.log_path})"
        return (f"tritonserver (pid {self.pid}) exited with code {self.proc.returncode}\n"
                f"--- log tail{kept} ---\n{procs.log_tail(self.proc)}")

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def peak_rss_mb(self) -> dict:
        """Peak resident memory so far: the server process, its python-backend stubs, and their sum."""
        peaks = procs.group_peak_rss_mb(self.pid)
        server = peaks.pop(self.pid, None)
        return {"server_mb": server, "stubs_mb": sorted(peaks.values(), reverse=True),
                "total_mb": (server or 0.0) + sum(peaks.values())}


def command(paths: dict, model_repository, http_port: int, grpc_port: int, metrics_port: int,
            model_control: str = "none", load_models=None, exit_timeout: int = 5) -> list[str]:
    """The tritonserver command line (all endpoints on 127.0.0.1).

    `exit_timeout`: seconds a stopping server waits for in-flight requests and open client
    connections (Triton's default, 30 s, holds every shutdown while an idle client keeps a
    connection open).
    """
    if model_control not in ("none", "explicit"):
        raise ValueError(f"model_control must be 'none' or 'explicit', got {model_control!r}")
    if load_models and model_control != "explicit":
        raise ValueError(f"load_models={list(load_models)} needs model_control='explicit' (with 'none' every "
                         f"model in the repository loads)")
    cmd = [
        str(paths["binary"]),
        f"--model-repository={Path(model_repository).resolve()}",
        f"--backend-directory={Path(paths['backend_dir']).resolve()}",
        "--http-address=127.0.0.1", f"--http-port={http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false",
        # Per-version latency quantiles (nv_inference_request_summary_us): the online A/B's p99 guardrail.
        "--metrics-config=summary_latencies=true",
        f"--model-control-mode={model_control}",
        f"--exit-timeout-secs={int(exit_timeout)}",
    ]
    cmd += [f"--load-model={name}" for name in load_models or ()]
    return cmd


@contextmanager
def triton(model_repository, http_port: int | None = None, grpc_port: int | None = None,
           metrics_port: int | None = None, venv=None, model_control: str = "none", load_models=None,
           log_path=None, timeout: float = 120, exit_timeout: int = 5, exposures=None):
    """Run tritonserver on `model_repository` while the block runs; yields a `TritonServer` once
    ``/v2/health/ready`` answers (every model loaded). Ports default to free ones. `exposures`: the folder the
    A/B router of this server logs to (default: the one its router.json names).

    On exit, also on errors: SIGTERM to the server (it unloads models and stops its stubs), then
    the whole process group is stopped, so no process is left behind. A server that dies or never
    becomes ready raises RuntimeError with the tail of its log.
    """
    repo = Path(model_repository)
    if not repo.is_dir():
        raise FileNotFoundError(f"model repository {repo} does not exist; export a model into it first")
    paths = server_paths(venv)
    given = [http_port, grpc_port, metrics_port]
    spare = iter(free_ports(3 + len([p for p in given if p is not None])))
    taken = {p for p in given if p is not None}
    ports = [p if p is not None else next(q for q in spare if q not in taken) for p in given]
    cmd = command(paths, repo, *ports, model_control=model_control, load_models=load_models,
                  exit_timeout=exit_timeout)
    env = paths["env"]
    if exposures is not None:
        env = {**env, EXPOSURES_ENV: str(Path(exposures).absolute())}
    proc = procs.start_group(cmd, env=env, log_path=log_path)
    log = Path(proc.log_path)
    try:
        try:
            procs.wait_ready(f"http://127.0.0.1:{ports[0]}/v2/health/ready", proc, timeout)
            time.sleep(0.2)  # a server that exits right after answering (e.g. a port clash) is caught here
            if proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {proc.returncode} right after becoming ready\n"
                                   f"--- log tail ({log}) ---\n{procs.log_tail(proc)}")
        except RuntimeError as e:
            errors = log_errors(log)
            raise RuntimeError(f"{e}\n--- errors in the log ---\n{errors}" if errors else str(e)) from None
        yield TritonServer(*ports, pid=proc.pid, log_path=log, model_repository=repo, proc=proc)
    finally:
        stop(proc, grace=exit_timeout + 10)


def log_errors(log_path, limit: int = 20) -> str:
    """The error lines of a Triton log (a model's load failure sits above the long options table
    that ends the log), without the CUDA complaints every CPU-only start logs."""
    try:
        lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if re.match(r"^E\d{4} ", line) and "cuda" not in line.lower()]
    errors += [line for line in lines if line.startswith("error:")]
    return "\n".join(line[:2000] for line in errors[-limit:])


def stop(proc, grace: float = 15) -> None:
    """SIGTERM the server alone first (a clean shutdown stops its stubs), then its whole group."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    procs.stop_group(proc)


def _http_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.startswith(("http://", "https://")) else f"http://{url}"


def _request(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 5.0):
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check(url: str, timeout: float = 5.0) -> dict:
    """Health and loaded models of the server whose HTTP endpoint is `url` (``host:port`` or http://...).

    Returns {url, live, ready, models: [{name, version, state, reason}]}; raises ServerUnreachable
    naming the URL when nothing answers there.
    """
    base = _http_base(url)
    try:
        live, _ = _request(f"{base}/v2/health/live", timeout=timeout)
        ready, _ = _request(f"{base}/v2/health/ready", timeout=timeout)
        status, body = _request(f"{base}/v2/repository/index", "POST", b"{}", timeout=timeout)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerUnreachable(f"no Triton server answers at {base} ({reason}); {START_HINT}") from e
    if status != 200:
        raise ServerUnreachable(f"{base} answered HTTP {status} to the repository index: is it a Triton "
                                f"server's HTTP port? {START_HINT}")
    models = [{"name": m.get("name"), "version": m.get("version", ""), "state": m.get("state", ""),
               "reason": m.get("reason", "")} for m in json.loads(body or b"[]")]
    return {"url": base, "live": live == 200, "ready": ready == 200,
            "models": sorted(models, key=lambda m: (m["name"], int(m["version"] or 0)))}
