"""bench.launch: a server that never answers its health check fails with its own output, and a stopped
server leaves no process of its group behind."""

import sys
import time
from pathlib import Path

import pytest

from workbench.bench import launch


def test_a_server_that_dies_at_start_is_reported_with_its_output():
    argv = lambda port: [sys.executable, "-c", "import sys; print('cannot bind: port taken', flush=True); sys.exit(3)"]  # noqa: E731
    with pytest.raises(RuntimeError, match="did not start.*cannot bind: port taken"):
        launch.start(argv, "/health", timeout=30)


def test_start_waits_for_health_and_stop_ends_the_whole_group(tmp_path):
    server = tmp_path / "server.py"
    server.write_text(
        "import http.server, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"  # a worker in the group
        "open(sys.argv[2], 'w').write(str(child.pid))\n"
        "time.sleep(1)  # not ready at once\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok' if self.path == '/health' else b'no')\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")
    pid_file = tmp_path / "child.pid"
    proc, url, log = launch.start(lambda port: [sys.executable, str(server), str(port), str(pid_file)], "/health", timeout=60)
    assert url.startswith("http://127.0.0.1:") and proc.poll() is None
    child = int(pid_file.read_text())
    assert launch.stop(proc, timeout=10) == -15  # SIGTERM ends a server without a handler
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child), "the server's child outlived it"
    log.unlink()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaping depends on the machine's init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_server_that_never_gets_ready_times_out():
    argv = lambda port: [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(600)"]  # noqa: E731
    with pytest.raises(RuntimeError, match="did not start.*loading"):
        launch.start(argv, "/health", timeout=2)
