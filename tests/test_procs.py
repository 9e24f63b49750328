"""relkd.procs: helper servers run in their own process group and leave nothing behind."""
from __future__ import annotations

import os
import signal
import sys
import textwrap
import time

import pytest

from relkd import procs


def _assert_gone(proc):
    assert proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def _wait_for(path, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, procs.log_tail(proc)
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_free_port_is_bindable():
    import socket

    port = procs.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_http_server_started_ready_and_stopped(tmp_path):
    (tmp_path / "hello.txt").write_text("hi")
    port = procs.free_port()
    log = tmp_path / "logs" / "http.log"
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with procs.running(cmd, f"http://127.0.0.1:{port}/hello.txt", timeout=30, log_path=log) as proc:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)  # its own group
        assert proc.poll() is None
        import urllib.request

        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}/hello.txt"
        ) as r:
            assert r.read() == b"hi"
        peaks = procs.group_peak_rss_mb(proc.pid)
        assert list(peaks) == [proc.pid] and peaks[proc.pid] > 1  # the one member, its peak memory in MB
    _assert_gone(proc)
    assert procs.peak_rss_mb(proc.pid) is None  # gone: no reading
    assert "GET /hello.txt" in log.read_text()  # the server's stderr went to the log file


def test_command_that_exits_immediately_raises_with_log_tail(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('boom-marker-42', flush=True); sys.exit(3)"]
    with pytest.raises(RuntimeError) as err:
        with procs.running(cmd, f"http://127.0.0.1:{procs.free_port()}/", timeout=30):
            pytest.fail("block must not run")
    msg = str(err.value)
    assert "exited with code 3" in msg
    assert "boom-marker-42" in msg  # tail of the log
    assert sys.executable in msg  # names the command


def test_timeout_raises_and_group_is_stopped(tmp_path):
    proc = procs.start_group([sys.executable, "-c", "import time; time.sleep(600)"])
    log = proc.log_path
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="not ready after"):
        procs.wait_ready(f"http://127.0.0.1:{procs.free_port()}/", proc, timeout=1)
    assert time.monotonic() - t0 < 10
    procs.stop_group(proc)
    _assert_gone(proc)
    assert proc.returncode == -signal.SIGTERM
    assert not log.exists()  # temporary log removed


IGNORE_TERM = textwrap.dedent(
    """
    import pathlib, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pathlib.Path(sys.argv[1]).write_text("armed")
    time.sleep(600)
    """
)


def test_child_ignoring_sigterm_is_killed(tmp_path):
    marker = tmp_path / "armed"
    proc = procs.start_group([sys.executable, "-c", IGNORE_TERM, str(marker)], log_path=tmp_path / "p.log")
    _wait_for(marker, proc)
    t0 = time.monotonic()
    procs.stop_group(proc, timeout=1)
    assert 1 <= time.monotonic() - t0 < 10
    assert proc.returncode == -signal.SIGKILL
    _assert_gone(proc)


def test_orphaned_grandchild_ignoring_sigterm_is_killed_and_reaped(tmp_path):
    """The leader dies on SIGTERM first, its child (ignoring SIGTERM) is orphaned; the group must
    still end up empty: no live process and no zombie."""
    marker = tmp_path / "armed"
    script = f"{sys.executable} -c '{IGNORE_TERM}' {marker} & wait"
    proc = procs.start_group(["sh", "-c", script], log_path=tmp_path / "p.log")
    _wait_for(marker, proc)
    members = [pid for pid, _, _ in procs.group_members(proc.pid)]
    assert len(members) == 2  # sh and python
    procs.stop_group(proc, timeout=1)
    _assert_gone(proc)
    for pid in members:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _wait_gone(pgid, timeout=20):
    """Until no process of group `pgid` runs. Zombies are left: a dead member waits for its parent to
    reap it, and orphans of a killed parent are re-parented to the nearest subreaper (this test
    process, once it has started a group), which reaps them here."""
    deadline = time.monotonic() + timeout
    while True:
        members = procs.group_members(pgid)
        if not [m for m in members if m[2] != "Z"]:
            break
        assert time.monotonic() < deadline, f"group {pgid} still running: {members}"
        time.sleep(0.1)
    for pid, ppid, _ in members:
        if ppid == os.getpid():
            os.waitpid(pid, 0)


PARENT = textwrap.dedent(
    """
    import pathlib, sys, time
    from relkd import procs
    marker = pathlib.Path(sys.argv[1])
    # A leader with a grandchild that ignores SIGTERM, as tritonserver and its backend stubs are.
    script = f"{sys.executable} -c '{sys.argv[2]}' {marker}.child & wait"
    proc = procs.start_group(["sh", "-c", script], log_path=marker.with_suffix(".log"), watchdog_grace=1)
    while not pathlib.Path(f"{marker}.child").exists():
        time.sleep(0.05)
    marker.write_text(str(proc.pid))
    time.sleep(600)
    """
)


def test_group_dies_with_a_killed_parent(tmp_path):
    """SIGKILL of the process that started a group (no cleanup of ours runs): the watchdog stops the
    whole group, the grandchild ignoring SIGTERM included. What it guarantees: SIGTERM within a poll (0.25 s) of
    the parent's death, SIGKILL `watchdog_grace` (here 1 s) later; the slack allows for a loaded machine."""
    import subprocess

    marker = tmp_path / "pgid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(marker), IGNORE_TERM], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert parent.poll() is None and time.monotonic() < deadline, "parent never started its group"
            time.sleep(0.05)
        pgid = int(marker.read_text())
        assert len(procs.group_members(pgid)) == 2  # sh and python; the watchdog is outside the group
        os.kill(parent.pid, signal.SIGKILL)
        t0 = time.monotonic()
        parent.wait()
        _wait_gone(pgid)
        seconds = time.monotonic() - t0
        assert 1.0 <= seconds < 1.0 + 0.25 + 3.0, f"the group went {seconds:.2f} s after its parent's kill -9"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_dead_leader_takes_its_group_along(tmp_path):
    """The leader dies alone (kill -9 of a server): its orphaned children are stopped too."""
    marker = tmp_path / "armed"
    proc = procs.start_group(["sh", "-c", f"{sys.executable} -c '{IGNORE_TERM}' {marker} & wait"],
                             log_path=tmp_path / "p.log", watchdog_grace=1)
    _wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_gone(proc.pid)
    procs.stop_group(proc)  # still fine on a group that is already gone
    assert proc.watchdog.returncode is not None
