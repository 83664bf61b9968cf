"""A local server for a benchmark or a test: the app (`streamlit run`) or the HTTP service
(`workbench serve`).

`start` runs the command for a free port of 127.0.0.1 in a process group of its own, its output to a
log file, and returns once GET `health` answers one of `ready`; if the process ends or `timeout`
passes first, it is stopped and the error carries the log's tail (the log is then removed; else it
is the caller's). `stop` sends SIGTERM to the main process, as a service manager would (both servers
stop gracefully on it), and kills what is left of the group after `timeout`: a stopped server leaves
no process behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: Callable[[int], list[str]], health: str, ready: tuple[bytes, ...] = (b"ok",), env: dict | None = None,
          timeout: float = 90) -> tuple[subprocess.Popen, str, Path]:
    """(process, its URL, its log file) once `health` (a path such as "/health") answers a `ready` body."""
    port = free_port()
    cmd = argv(port)
    log = Path(tempfile.mkstemp(prefix="workbench-server-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(f"{url}{health}", timeout=2).read().strip() in ready:
                return proc, url, log
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            tail = log.read_text(errors="replace")[-3000:]
            log.unlink(missing_ok=True)
            raise RuntimeError(f"`{' '.join(map(str, cmd))}` did not start on {url}: {tail}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM, then SIGKILL to whatever is left of the process group; the exit code (-9 if killed)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # children (LitServe's workers and logger) are in the server's process group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.returncode
