"""Starts and stops helper servers (MLflow, Triton) in their own process group, leaving nothing behind.

A helper server is started with ``start_new_session=True``, so it leads a new process group whose
id is its PID; everything it spawns (uvicorn workers, job runners, ...) stays in that group unless
it deliberately leaves it. ``stop_group`` signals the whole group (SIGTERM, then SIGKILL) and waits
until no member of the group is left.

Orphans: when a server's leader exits before its workers, the workers are re-parented. On a machine
whose PID 1 does not reap orphans (some container/microVM inits) they would stay as zombies and keep
the group alive. ``start_group`` therefore marks this process as a *child subreaper* (Linux
``prctl(PR_SET_CHILD_SUBREAPER)``), so such orphans are re-parented to us and ``stop_group`` reaps
the ones that belong to the group it stops. The flag is process-wide and harmless otherwise: the
only visible effect is that orphaned descendants become our children instead of PID 1's.

Parent death: a group outlives a parent that is killed (SIGKILL, a scheduler's kill, an interrupted
`dvc repro`), since nothing of ours runs to stop it. ``start_group`` therefore starts a small
*watchdog* beside each group (``python -m relkd.procs``, its own session, so a kill of the parent's
process group spares it): it polls the parent's pid and the group's leader and stops the whole group
(SIGTERM, then SIGKILL) as soon as the parent is gone or the leader has exited, which also catches
the grandchildren (Triton's python-backend stubs). A parent-death signal (PR_SET_PDEATHSIG) would
reach only the direct child, and fires when the *thread* that started it exits. What that guarantees:
SIGTERM to the group within one poll (0.25 s) of the parent's death, SIGKILL `watchdog_grace` seconds
later, plus however late a loaded machine wakes the watchdog (docs/reliability.md has measured figures).
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
_subreaper = False
# urllib without proxies: helper servers listen on 127.0.0.1, never behind an HTTP proxy.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _become_subreaper() -> None:
    global _subreaper
    if _subreaper or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc/prctl: fall back to PID 1 reaping orphans
        pass


def start_group(cmd: list[str], env=None, log_path=None, cwd=None, watchdog: bool = True,
                watchdog_grace: float = 5.0) -> subprocess.Popen:
    """Start `cmd` as the leader of a new process group; stdout and stderr go to a log file.

    `env` is the complete environment, as for `subprocess.Popen` (None inherits ours). Without
    `log_path` the log goes to a temporary file, removed again by `stop_group`. The log's path is
    kept as `proc.log_path`. With `watchdog` (the default) the group dies with this process (see
    the module doc); `watchdog_grace` is how long it waits after SIGTERM before SIGKILL.
    """
    _become_subreaper()
    cmd = [str(c) for c in cmd]
    temp_log = log_path is None
    if temp_log:
        fd, log_path = tempfile.mkstemp(prefix=f"relkd-{Path(cmd[0]).name}-", suffix=".log")
        os.close(fd)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.log_path = log_path
    proc._relkd_temp_log = temp_log
    proc.watchdog = _start_watchdog(proc.pid, watchdog_grace) if watchdog else None
    return proc


def _start_watchdog(pgid: int, grace: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "relkd.procs", str(os.getpid()), str(pgid), str(grace)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)


def _leader_running(pgid: int) -> bool:
    try:
        with open(f"/proc/{pgid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")


def watch(parent: int, pgid: int, grace: float = 5.0, poll: float = 0.25) -> None:
    """The watchdog's loop: stop group `pgid` once process `parent` is gone or the group's leader
    has exited (the rest of a dead server's group is of no use); return when the group is empty."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the parent, which then stops the group
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while group_alive(pgid):
        if os.getppid() != parent or not _leader_running(pgid):
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            _signal_group(pgid, signal.SIGKILL)
            return
        time.sleep(poll)


def log_tail(proc, lines: int = 30, max_bytes: int = 16_384) -> str:
    """The last `lines` lines of a process's log file ('' if there is none)."""
    path = getattr(proc, "log_path", None)
    if path is None or not Path(path).exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - max_bytes))
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _describe(proc) -> str:
    return " ".join(proc.args) if isinstance(proc.args, (list, tuple)) else str(proc.args)


def wait_ready(url: str, proc, timeout: float) -> None:
    """Poll `url` until it answers HTTP 200.

    Raises RuntimeError (with the tail of the process's log) if the process exits first or if
    `timeout` seconds pass.
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while True:
        code = proc.poll()
        if code is not None:
            raise RuntimeError(
                f"process exited with code {code} before {url} was ready: {_describe(proc)}\n"
                f"--- log tail ({proc.log_path}) ---\n{log_tail(proc)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(
                f"{url} not ready after {timeout:.0f}s (last error: {last_error}): {_describe(proc)}\n"
                f"--- log tail ({proc.log_path}) ---\n{log_tail(proc)}"
            )
        try:
            with _opener.open(url, timeout=max(0.1, min(5.0, remaining))) as resp:
                if resp.status == 200:
                    return
                last_error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            last_error = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
            last_error = str(getattr(e, "reason", e))
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def group_members(pgid: int) -> list[tuple[int, int, str]] | None:
    """(pid, ppid, state) of every process in group `pgid`, from /proc; None without /proc."""
    if not os.path.isdir("/proc/self"):
        return None
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        if len(fields) >= 3 and int(fields[2]) == pgid:
            found.append((int(entry), int(fields[1]), fields[0]))
    return found


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of process `pid` in MB; None when it is gone or there is no /proc."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def group_peak_rss_mb(pgid: int) -> dict[int, float]:
    """pid -> peak resident memory (MB) of every live process in group `pgid` (empty without /proc).
    Their sum bounds the group's peak from above: the members need not peak at the same moment."""
    peaks = {pid: peak_rss_mb(pid) for pid, _, state in group_members(pgid) or [] if state != "Z"}
    return {pid: mb for pid, mb in peaks.items() if mb is not None}


def group_alive(pgid: int) -> bool:
    """True while any process (zombies included) is in process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but is not ours
        return True
    return True


def _reap(proc, pgid: int) -> None:
    """Reap the leader and any zombie of the group that became our child (see module doc)."""
    proc.poll()
    me = os.getpid()
    for pid, ppid, state in group_members(pgid) or ():
        if state == "Z" and ppid == me and pid != proc.pid:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def _wait_gone(proc, pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(proc, pgid)
        if not group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_group(proc, timeout: float = 10) -> None:
    """Stop `proc`'s whole process group: SIGTERM, wait up to `timeout` s, then SIGKILL; reap.

    Raises RuntimeError if processes of the group survive even SIGKILL (e.g. stuck in the kernel).
    """
    pgid = proc.pid  # start_new_session: the leader's PID is the group id
    try:
        _signal_group(pgid, signal.SIGTERM)
        if not _wait_gone(proc, pgid, timeout):
            _signal_group(pgid, signal.SIGKILL)
            if not _wait_gone(proc, pgid, 10):
                left = [pid for pid, _, _ in group_members(pgid) or ()]
                raise RuntimeError(f"process group {pgid} survived SIGKILL (pids {left}): {_describe(proc)}")
        proc.wait()
    finally:
        watchdog = getattr(proc, "watchdog", None)
        if watchdog is not None and watchdog.poll() is None:
            watchdog.terminate()
            watchdog.wait()
        if getattr(proc, "_relkd_temp_log", False):
            Path(proc.log_path).unlink(missing_ok=True)


@contextmanager
def running(cmd: list[str], ready_url: str, timeout: float = 60, env=None, log_path=None, cwd=None):
    """Run `cmd` in its own process group while the block runs; yields the Popen once `ready_url`
    answers 200. The group is stopped on exit, also on errors and when it never became ready."""
    proc = start_group(cmd, env=env, log_path=log_path, cwd=cwd)
    try:
        wait_ready(ready_url, proc, timeout)
        yield proc
    finally:
        stop_group(proc)


if __name__ == "__main__":  # the watchdog process of start_group
    watch(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
