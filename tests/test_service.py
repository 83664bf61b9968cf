"""`workbench serve` (workbench.service on LitServe) as a client sees it, on 127.0.0.1: answers equal to
`gen search`'s, batched equal to unbatched, 4xx for bad requests, every answer in the logbook, and
`workbench bench serve` end to end."""

import json
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner

from workbench import engine
from workbench.bench import launch
from workbench.bench.serve import post, start_server
from workbench.cli import main
from workbench.eval.width import DEFAULT_WIDTH, served_width

pytestmark = pytest.mark.slow  # real servers: worker processes load torch and the workspace


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """Every channel, batches of up to 8 gathered for up to 50 ms."""
    import shutil

    from workbench import Workspace

    ws, _ = trained
    path = tmp_path_factory.mktemp("api") / "ws"
    shutil.copytree(ws.path, path)
    r = CliRunner().invoke(main, ["-w", str(path), "bench", "beam", "--no-speed", "--ids", "workspace", "--widths", "1,2",
                                  "--batch-sizes", "1", "--rounds", "1", "--k", "20"])  # the width this workspace serves
    assert r.exit_code == 0, r.output
    proc, url, log = start_server(path, "generative,bm25,dense,dense-ann", max_batch=8, batch_wait_ms=50)
    yield url, Workspace(path), proc
    launch.stop(proc)
    log.unlink()


def _raw(url: str, data: bytes, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_generative_answer_is_gen_search(server, trained):
    url, ws, _ = server
    eng = engine.Engine(ws)
    for q, width in (("cordless drill", 8), ("garden hose nozzle", 16)):
        status, got = post(f"{url}/generative", {"query": q, "width": width, "k": 50})
        assert status == 200, got
        want = eng.search_many([q], width)[0]
        assert [s["sid"] for s in got["sids"]] == list(want.paths()["sid"])
        assert [p["product_id"] for p in got["products"]] == want.products[:50]
        assert [round(s["p"], 5) for s in got["sids"]] == [round(float(p), 5) for p in want.paths()["probability"]]
        assert got["sids"][0]["label"] == want.label(got["sids"][0]["sid"]) != ""
        scores = [p["score"] for p in got["products"]]
        assert scores == sorted(scores, reverse=True) and got["width"] == width and got["personalised"] is False


def test_a_request_without_a_width_decodes_at_the_served_width(server):
    url, ws, _ = server
    chosen = served_width(ws)
    assert chosen in (1, 2) and chosen != DEFAULT_WIDTH  # the sweep's choice, not the default
    status, got = post(f"{url}/generative", {"query": "cordless drill", "k": 20})
    assert status == 200 and got["width"] == chosen and len(got["sids"]) == chosen, got
    want = engine.Engine(ws).search_many(["cordless drill"], chosen)[0]
    assert [s["sid"] for s in got["sids"]] == want.sids() and [p["product_id"] for p in got["products"]] == want.products[:20]
    status, got = post(f"{url}/generative", {"query": "cordless drill", "width": 4})
    assert status == 200 and got["width"] == 4 and len(got["sids"]) == 4


def test_user_personalises_and_baselines_answer(server):
    url, ws, _ = server
    user = str(ws.table("users")["user_id"].iloc[0])
    status, got = post(f"{url}/generative", {"query": "drill", "user": user, "width": 4})
    assert status == 200 and got["personalised"] is True and got["user"] == user
    for channel in ("bm25", "dense", "dense-ann"):
        status, got = post(f"{url}/{channel}", {"query": "cordless drill", "k": 7})
        assert status == 200 and len(got["products"]) == 7, got
        scores = [p["score"] for p in got["products"]]
        assert scores == sorted(scores, reverse=True)
    from workbench.baselines import BM25
    from workbench.embed import product_texts

    products = ws.table("products")
    want = BM25(products["product_id"].astype(str).tolist(), product_texts(products), backend="numba").search(["cordless drill"], 7)[0]
    assert [p["product_id"] for p in post(f"{url}/bm25", {"query": "cordless drill", "k": 7})[1]["products"]] == want


def test_batched_answers_equal_unbatched(server):
    """Sixteen concurrent requests are gathered into batches (batch-mates share one latency figure);
    each answer equals the one the same query gets alone, whatever its batch-mates' widths and users."""
    url, ws, _ = server
    user = str(ws.table("users")["user_id"].iloc[1])
    bodies = [{"query": q, "width": w, **({"user": user} if i % 3 == 0 else {})}
              for i, (q, w) in enumerate([(q, w) for q in ("drill", "hose", "led bulb", "office chair", "paint", "rug", "saw", "tent")
                                          for w in (4, 8)])]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda b: post(f"{url}/generative", b), bodies))
    alone = [post(f"{url}/generative", b) for b in bodies]
    assert all(s == 200 for s, _ in together + alone)
    latencies = [a["latency_ms"] for _, a in together]
    assert len(set(latencies)) < len(latencies)  # some requests shared a batch
    for (_, a), (_, b) in zip(together, alone):
        assert [s["sid"] for s in a["sids"]] == [s["sid"] for s in b["sids"]]
        assert [p["product_id"] for p in a["products"]] == [p["product_id"] for p in b["products"]]
        assert [s["p"] for s in a["sids"]] == pytest.approx([s["p"] for s in b["sids"]], rel=1e-4, abs=1e-6)
        assert a["personalised"] == b["personalised"]


@pytest.mark.parametrize("body, status, says", [
    (b'{"query": ""}', 422, "query"),
    (b'{"query": "   "}', 422, "query"),
    (b'{"width": 4}', 422, "query"),
    (b'{"query": "drill", "width": 0}', 422, "width"),
    (b'{"query": "drill", "width": 100000}', 422, "width"),
    (b'{"query": "drill", "k": 0}', 422, "k"),
    (b'{"query": "drill", "beam": 4}', 422, "beam"),
    (b'{"query": "drill", "user": "no-such-user"}', 422, "unknown user 'no-such-user'"),
    (b'{"query": "drill"', 422, "JSON"),
    (b'not json at all', 422, "JSON"),
    (b'{"query": "drill", "k": 1e400}', 422, "finite"),  # these three were 500s with a server traceback
    (b'{"query": "drill", "width": NaN}', 422, "finite"),
    (b'{"query": "\\ud800 drill"}', 422, "query"),
    (b'{"query": "drill", "\\ud800": 1}', 422, "unicode"),
    (json.dumps({"query": "x" * 20_000}).encode(), 413, "over 16384 bytes"),
])
def test_bad_requests_are_4xx_with_a_message(server, body, status, says):
    url, _, _ = server
    got, text = _raw(f"{url}/generative", body)
    assert got == status, text
    assert says.lower() in text.lower(), text


def test_a_bad_request_does_not_spoil_its_batch(server):
    url, _, _ = server
    bodies = [{"query": "drill", "width": 4}, {"query": "drill", "user": "nobody", "width": 4}] * 4
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda b: post(f"{url}/generative", b), bodies))
    assert [s for s, _ in got] == [200, 422] * 4


def test_oversize_body_without_content_length_is_413(server):
    url, _, _ = server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /bm25 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b'{"query": "' + b"x" * 20_000 + b'"}'
        s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
        head = s.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head[:200]


def test_every_answer_is_in_the_logbook_when_the_server_stops(trained, tmp_path):
    import shutil

    from workbench import Workspace
    from workbench.logbook import now

    ws, _ = trained
    shutil.copytree(ws.path, tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    since = now()
    proc, url, log = start_server(ws.path, "generative", max_batch=4, batch_wait_ms=5)
    try:
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda i: post(f"{url}/generative", {"query": f"drill {i}", "width": 4}), range(60)))
        assert all(s == 200 for s, _ in got)
    finally:
        assert launch.stop(proc) is not None
        log.unlink()
    rows = ws.logbook().query("SELECT query, beam_width, source, n_results FROM served WHERE time >= ?", [since])
    assert sorted(rows["query"]) == sorted(f"drill {i}" for i in range(60))
    assert set(rows["source"]) == {"api/generative"} and set(rows["beam_width"]) == {4} and (rows["n_results"] > 0).all()


def test_serve_refuses_bad_settings(trained, tmp_path):
    from click.testing import CliRunner

    from workbench.cli import main

    ws, _ = trained
    for args, says in ((["--channels", "generative,sparse"], "channels must be some of"), (["--max-batch", "0"], "max_batch must be >= 1"),
                       (["--workers", "0"], "workers must be >= 1"), (["--query-dtype", "float16"], "'float16' is not one of")):
        res = CliRunner().invoke(main, ["-w", str(ws.path), "serve", *args])
        assert res.exit_code == 2 and says in res.output, res.output
    for args, says in ((["--channels", "sparse"], "channels must be some of"), (["--p99-ms", "50,abc"], "expected comma-separated"),
                       (["--p99-ms", "0"], "budgets must be > 0"), (["--users", "0"], "values must be >= 1"),
                       (["--query-dtype", "int8"], "'int8' is not one of")):
        res = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "serve", *args])
        assert res.exit_code == 2 and says in res.output, res.output
    res = CliRunner().invoke(main, ["-w", str(tmp_path / "none"), "serve"])
    assert res.exit_code != 0 and "workspace" in res.output


def test_bench_serve_measures_logs_and_sizes(trained_copy):
    from click.testing import CliRunner

    from workbench.cli import main

    res = CliRunner().invoke(main, ["-w", str(trained_copy.path), "bench", "serve", "--channels", "generative,bm25", "--widths", "4",
                                    "--users", "1,4", "--seconds", "2", "--batches", "8,1", "--p99-ms", "100000,0.001", "--target-qps", "1000"])
    assert res.exit_code == 0, res.output
    got = trained_copy.logbook().query("SELECT bench, case_name, metric, value FROM bench WHERE bench LIKE 'serve%'")
    load = got[got["bench"] == "serve-load"]
    assert set(load["case_name"]) == {f"{c} batch {b} c{u}" for c in ("generative w4", "bm25") for b in (8, 1) for u in (1, 4)}
    assert (load[load["metric"] == "queries_per_s"]["value"] > 0).all() and (load[load["metric"] == "failures"]["value"] == 0).all()
    lost = got[(got["bench"] == "serve-logbook") & got["metric"].isin(["lost_rows", "exit_code"])]
    assert len(lost) == 8 and (lost["value"] == 0).all()  # every answer logged, every server stopped cleanly
    assert set(got[got["bench"] == "serve-batching"]["case_name"]) == {"generative w4 c4", "bm25 c4"}
    cap = got[got["bench"].str.startswith("serve-capacity") & (got["metric"] == "machines")]
    assert len(cap) == 4 and (cap["value"] >= 1).all()  # within 100 s, every setting; within 1 us, none
    assert all(c.startswith("p99 <= 100000 ms: ") for c in cap["case_name"])


@pytest.mark.slow
def test_bench_serve_compiled_warms_each_width_and_loses_no_answer(trained_copy):
    from click.testing import CliRunner

    from workbench.cli import main
    from workbench.eval.width import served_width

    w = served_width(trained_copy)  # the width the server compiles at start: no second width's compiles to wait for
    res = CliRunner().invoke(main, ["-w", str(trained_copy.path), "bench", "serve", "--channels", "generative",
                                    "--users", "3", "--seconds", "1", "--batches", "4", "--compiled", "--p99-ms", "100000"])
    assert res.exit_code == 0, res.output
    got = trained_copy.logbook().query("SELECT bench, case_name, metric, value FROM bench WHERE bench LIKE 'serve%'")
    load = got[got["bench"] == "serve-load"]
    assert set(load["case_name"]) == {f"generative w{w} compiled batch 4 c3"}
    cap = got[got["bench"].str.startswith("serve-capacity") & (got["metric"] == "machines")]
    assert set(cap["case_name"]) == {f"p99 <= 100000 ms: generative w{w} compiled batch 4"}  # the compiled setting named
    assert (load[load["metric"] == "failures"]["value"] == 0).all()
    check = got[(got["bench"] == "serve-logbook") & got["metric"].isin(["lost_rows", "exit_code"])]
    assert len(check) == 2 and (check["value"] == 0).all()  # the warm-up load's answers counted and logged too


def test_a_killed_server_takes_its_workers_and_port_with_it(trained_copy):
    """kill -9 of `workbench serve` used to leave its workers answering as orphans, so a restart on the port
    failed with "Address already in use". Every worker and API server now dies with its parent."""
    import os
    import signal
    import socket
    import time

    proc, url, log = start_server(trained_copy.path, "bm25", max_batch=4, batch_wait_ms=5, workers=2)
    port = int(url.rsplit(":", 1)[1])
    try:
        assert post(f"{url}/bm25", {"query": "drill", "k": 3})[0] == 200
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as a crash or the OOM killer would
        proc.wait()
        deadline, left = time.monotonic() + 15, True
        while time.monotonic() < deadline and left:
            try:
                os.killpg(proc.pid, 0)  # any process of its group still alive?
                time.sleep(0.2)
            except ProcessLookupError:
                left = False
        assert not left, "processes of the killed server are still running"
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # the port is free for a restart
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.unlink(missing_ok=True)


def test_a_worker_that_cannot_load_is_one_line_naming_the_cause(trained_copy):
    """A damaged generator used to print 2-4 tracebacks (the worker's, the logger's EOFError, LitServe's)."""
    import subprocess
    import sys

    from workbench.bench.launch import free_port

    (trained_copy.path / "gen" / "generator.safetensors").write_bytes(b"garbage")
    r = subprocess.run([sys.executable, "-m", "workbench", "-w", str(trained_copy.path), "serve", "--port", str(free_port()),
                        "--channels", "generative"], capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert "the /generative worker could not start: CheckpointError" in out and "workbench deploy --repair" in out
    assert out.count("could not start") == 1 and "the server did not start" in out
