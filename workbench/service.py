"""The recall channels as an HTTP JSON service (`workbench serve`), on LitServe.

    POST /generative {"query": "cordless drill", "user": null, "width": null, "k": 100}
      -> {"query", "user", "personalised", "width", "latency_ms",
          "sids": [{"sid": "49-0-4", "p": 0.73, "label": "...", "products": 32}, ...],   best first
          "products": [{"product_id": "...", "score": 0.61}, ...]}                        the channel's top k
    POST /bm25, POST /dense, POST /dense-ann {"query": "cordless drill", "k": 100}   (dense: the exact scan; dense-ann: FAISS)
      -> {"query", "latency_ms", "products": [{"product_id", "score"}, ...]}
    GET /health -> "ok" once every worker has loaded the workspace

LitServe runs each channel in its own worker processes (`workers` per device; on CPU each worker
gets an equal share of the cores for torch) behind uvicorn, and batches dynamically: a worker takes
up to `max_batch` queued requests, waiting at most `batch_wait_ms` for more, and answers them with
one batched decode (requests of different beam widths in one batch are decoded per width). With
`max_batch=1` every request is decoded alone: the unbatched server the benchmark compares with.

Invariants:
- an answer does not depend on the other requests of its batch (the tests compare them), and the
  generative answer is `engine.Engine.search_many`'s: the same SIDs and products as `gen search`, at
  the width the request names or else the width the workspace serves (`ServeConfig.width`, by default
  the sweep's choice: `workbench.eval.width.served_width`);
- a bad request is a 4xx whose body names the problem, never a 500: malformed JSON, missing or unknown
  fields, out-of-range widths, infinite or NaN numbers and lone surrogates are 422 (pydantic, before
  any worker sees them; the answer names the field, never echoes the input), an unknown user is
  422 from the worker (per request, so its batch-mates are still answered), a body over `max_body`
  bytes is 413;
- every answered query becomes one row of the logbook's `served` table, off the hot path: the worker
  puts a batch's rows on LitServe's logger queue in one put, one logger process writes the rows in
  batches (every `flush_s` or `flush_rows`, retrying while the logbook is busy) and writes what it
  holds when the server stops.

(No `from __future__ import annotations` here: LitServe reads `decode_request`'s annotation, the
request model, as a class.)
"""

import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.util import Finalize
from pathlib import Path

import litserve as ls
import torch
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from workbench.ann import ANN, ANNConfig
from workbench.baselines import BM25, Dense
from workbench.embed import check_dtype, embed_workspace, get_embedder, product_texts
from workbench.engine import MAX_QUERY, MAX_WIDTH, Engine, open_workspace
from workbench.gen import names
from workbench.gen.config import ChannelConfig
from workbench.logbook import now
from workbench.sid.store import workspace_embedder
from workbench.workspace import Workspace

CHANNELS = ("generative", "bm25", "dense", "dense-ann")
MAX_K = 1000  # products one HTTP request may ask for


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP service of the recall channels (`workbench serve`)."""

    channels: tuple[str, ...] = CHANNELS  # which endpoints to serve
    max_batch: int = 32  # requests one decode may take (1: no dynamic batching)
    batch_wait_ms: float = 5.0  # how long a worker waits for a batch to fill
    workers: int = 1  # worker processes per channel and device
    api_servers: int = 1  # uvicorn processes in front of the workers
    bm25_backend: str = "numba"  # bm25s scorer: numba (compiled) or numpy (the evaluation's: ties in its order)
    threads: int = 0  # torch threads per worker (0: the machine's cores shared equally among the workers)
    accelerator: str = "cpu"  # where the workers run: cpu, cuda (every GPU) or auto
    max_body: int = 16_384  # bytes of a request body
    flush_s: float = 0.5  # the logger writes its rows at least this often
    flush_rows: int = 512  # ... or as soon as it holds this many
    log: bool = True  # record served queries in the logbook
    name: str = names.DEPLOYED  # the generator checkpoint (gen/<name>.safetensors)
    width: int = 0  # beam width of a request that names none (0: the width the workspace's sweep chose)
    ann: ANNConfig = field(default_factory=ANNConfig)  # dense-ann: the FAISS index's kind and parameters
    query_dtype: str = ChannelConfig.query_dtype  # generative and dense: the query encoder computes in this (bfloat16: docs/tutorials/serving.md)
    compact: int = ChannelConfig.compact  # generative: the in-cluster order from this many one-byte codes per product (0: float32 vectors)
    compiled: bool = False  # generative: decode through torch.compile (CUDA graphs on a GPU); each worker compiles at start, tens of seconds

    def __post_init__(self):
        check_dtype(self.query_dtype)
        names.check(self.name)
        bad = set(self.channels) - set(CHANNELS)
        if not self.channels or bad:
            raise ValueError(f"channels must be some of {CHANNELS}, got {self.channels}")
        if self.threads < 0 or self.width < 0 or self.compact < 0:
            raise ValueError(f"threads, width and compact must be >= 0, got {self.threads}, {self.width}, {self.compact}")
        if self.width > MAX_WIDTH:
            raise ValueError(f"width must be at most {MAX_WIDTH}, got {self.width}")
        for f in ("max_batch", "workers", "api_servers", "max_body", "flush_rows"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.batch_wait_ms < 0 or self.flush_s <= 0:
            raise ValueError(f"batch_wait_ms must be >= 0 and flush_s > 0, got {self.batch_wait_ms}, {self.flush_s}")
        if self.bm25_backend not in ("numba", "numpy"):
            raise ValueError(f"bm25_backend must be numba or numpy, got {self.bm25_backend!r}")
        if self.accelerator not in ("cpu", "cuda", "auto"):
            raise ValueError(f"accelerator must be cpu, cuda or auto, got {self.accelerator!r}")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    query: str = Field(min_length=1, max_length=MAX_QUERY)
    user: str | None = Field(default=None, max_length=200)  # generative only: personalise (stage 3 generators)
    width: int | None = Field(default=None, ge=1, le=MAX_WIDTH)  # generative only: the beam width (null: the served width)
    k: int = Field(default=100, ge=1, le=MAX_K)  # products to return


SERVE_PID = "WORKBENCH_SERVE_PID"  # the `workbench serve` process, set by `build` for the processes it starts


def _die_with_parent() -> None:
    """Linux: this process is killed when its parent dies (prctl PR_SET_PDEATHSIG), so a kill -9 of
    `workbench serve` takes its workers, API servers and logger with it instead of leaving them holding
    the port. Run in each process `build`'s server starts (forked: an at-fork hook; spawned: the workers'
    `setup` and the logger's start); never in the serve process itself."""
    main = int(os.environ.get(SERVE_PID, "0"))
    if not sys.platform.startswith("linux") or not main or os.getpid() == main:
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    try:
        os.kill(main, 0)
    except ProcessLookupError:  # the serve process died before the call
        os._exit(1)


def _share_cores(workers: int, threads: int = 0) -> None:
    """Torch threads of this worker: `threads`, or (0) an equal share of the cores among `workers`."""
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // workers))


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class ChannelAPI(ls.LitAPI):
    """One channel's worker: `setup` loads the workspace, `predict` answers a batch of requests."""

    channel = ""

    def __init__(self, workspace: str, cfg: ServeConfig, workers_total: int):
        super().__init__(max_batch_size=cfg.max_batch, batch_timeout=cfg.batch_wait_ms / 1000, api_path=f"/{self.channel}")
        self.workspace, self.cfg, self.workers_total = workspace, cfg, workers_total

    def setup(self, device: str) -> None:
        """In the worker process: die with the server, take a share of the cores, `load` the channel. A load
        that fails is one line on stderr naming the cause (LitServe's traceback of it is silenced), then
        LitServe stops the server."""
        _die_with_parent()
        _share_cores(self.workers_total, self.cfg.threads)
        try:
            self.load(device)
        except Exception as e:
            print(f"workbench serve: the /{self.channel} worker could not start: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            logging.getLogger("litserve").setLevel(logging.CRITICAL + 1)
            raise

    def load(self, device: str) -> None:
        raise NotImplementedError

    def decode_request(self, request: SearchRequest) -> SearchRequest:
        return request

    def batch(self, inputs):
        return list(inputs)

    def unbatch(self, outputs):
        return list(outputs)

    def predict(self, requests):
        """A batch (a list) or, with max_batch 1, one request (LitServe then calls neither batch nor unbatch)."""
        if not isinstance(requests, list):
            return self.predict([requests])[0]
        out: list = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.width if self.channel == "generative" else 0, []).append(i)
        rows: list[dict] = []
        for idx in groups.values():  # one decode per beam width in the batch
            answers, logged = self.answer([requests[i] for i in idx])
            for i, answer in zip(idx, answers):
                out[i] = answer
            rows += logged
        if rows and self.cfg.log:  # one put on the logger queue per batch: each put is a round trip to LitServe's manager
            self.log("served", rows)
        return out

    def encode_response(self, output):
        return output if isinstance(output, JSONResponse) else JSONResponse(output)

    def served(self, req: SearchRequest, ms: float, results: list, width: int | None = None) -> dict:
        """The logbook's `served` row of one answered request."""
        return {"time": now(), "query": req.query, "user_id": req.user, "beam_width": width, "latency_ms": ms,
                "results": results, "source": f"api/{self.channel}"}


class GenerativeAPI(ChannelAPI):
    channel = "generative"

    def load(self, device: str) -> None:
        self.engine = Engine(Workspace(self.workspace), device=device, name=self.cfg.name,
                             channel=ChannelConfig(query_dtype=self.cfg.query_dtype, compact=self.cfg.compact), width=self.cfg.width or None,
                             compiled=self.cfg.compiled)
        self.known = set(self.engine.user_ids)
        self.engine.search_many(["warm up"], 1 if not self.cfg.compiled else None)  # loads the query embedder before /health says ready
        if self.cfg.compiled:  # and compiles the served width's graphs: one query, then any batch (a dynamic batch size)
            self.engine.search_many(["warm up", "warm up again"])

    def answer(self, reqs: list[SearchRequest]) -> tuple[list, list[dict]]:
        """Answers to requests of one beam width, and the served rows of those answered."""
        out: list = [None] * len(reqs)
        ok, rows = [], []
        for i, r in enumerate(reqs):
            if r.user is not None and not self.engine.personal:
                out[i] = _error(422, "this generator was trained without users (stage 3): omit 'user'")
            elif r.user is not None and r.user not in self.known:
                out[i] = _error(422, f"unknown user {r.user!r}: omit 'user' for an anonymous search")
            else:
                ok.append(i)
        if ok:
            served = self.engine.search_many([reqs[i].query for i in ok], reqs[ok[0]].width, [reqs[i].user for i in ok])
            for i, s in zip(ok, served):
                r = reqs[i]
                sids = s.sids()  # Served.paths() without a DataFrame per answer
                out[i] = {"query": s.query, "user": s.user, "personalised": s.personalised, "width": s.width,
                          "latency_ms": s.latency_ms,
                          "sids": [{"sid": sid, "p": math.exp(h.logp), "label": s.label(sid), "products": len(h.products)}
                                   for sid, h in zip(sids, s.hits)],
                          "products": [{"product_id": p, "score": float(x)} for p, x in zip(s.products[:r.k], s.scores[:r.k])]}
                rows.append(self.served(r, s.latency_ms, s.results(), s.width))
        return out, rows


class BaselineAPI(ChannelAPI):
    """BM25 or dense over the same catalog (`workbench.baselines`)."""

    def load(self, device: str) -> None:
        ws = Workspace(self.workspace)
        products = ws.table("products")
        ids = products["product_id"].astype(str).tolist()
        if self.channel == "bm25":
            self.index = BM25(ids, product_texts(products), backend=self.cfg.bm25_backend)
        else:
            e = get_embedder(workspace_embedder(ws), device)
            vectors = embed_workspace(ws, e, ("products",), progress=False)["products"]
            self.index = (Dense(ids, vectors, e, device, self.cfg.query_dtype) if self.channel == "dense"
                          else ANN(ids, vectors, e, self.cfg.ann, self.cfg.query_dtype))
        self.index.scored(["warm up"], 1)  # loads the query embedder, compiles numba's scorer, before /health says ready

    def answer(self, reqs: list[SearchRequest]) -> tuple[list, list[dict]]:
        t = time.perf_counter()
        found = self.index.scored([r.query for r in reqs], max(r.k for r in reqs))
        ms = (time.perf_counter() - t) * 1000
        out, rows = [], []
        for r, (ids, scores) in zip(reqs, found):
            out.append({"query": r.query, "latency_ms": ms,
                        "products": [{"product_id": p, "score": float(x)} for p, x in zip(ids[:r.k], scores[:r.k])]})
            rows.append(self.served(r, ms, [{"products": ids[:20]}]))
        return out, rows


class BM25API(BaselineAPI):
    channel = "bm25"


class DenseAPI(BaselineAPI):
    channel = "dense"


class DenseANNAPI(BaselineAPI):
    channel = "dense-ann"


APIS = {"generative": GenerativeAPI, "bm25": BM25API, "dense": DenseAPI, "dense-ann": DenseANNAPI}


class ServedLogger(ls.Logger):
    """LitServe's logger process: collects the workers' served rows and writes them to the logbook in
    batches. Its main thread only appends (so the queue is always drained at once); a writer thread
    writes every `flush_s`, or as soon as `flush_rows` are held. Rows it could not write yet (a busy
    logbook) stay for the next write; what it holds when the process ends is written then (a
    multiprocessing finalizer: LitServe ends the logger by closing its queue)."""

    def __init__(self, workspace: str, flush_s: float, flush_rows: int):
        super().__init__()
        self.workspace, self.flush_s, self.flush_rows = workspace, flush_s, flush_rows
        self._rows: list[dict] = []
        self._lock: threading.Lock | None = None
        self._full: threading.Event | None = None
        self._writing: threading.Lock | None = None

    def _start(self) -> None:
        _die_with_parent()
        self._lock, self._writing, self._full = threading.Lock(), threading.Lock(), threading.Event()
        threading.Thread(target=self._writer, daemon=True, name="served-log").start()
        Finalize(self, self.flush, exitpriority=100)

    def process(self, key, value) -> None:
        """`value`: the served rows of one batch."""
        if self._lock is None:  # the first rows in the logger process
            self._start()
        with self._lock:
            self._rows += value
            if len(self._rows) >= self.flush_rows:
                self._full.set()

    def _writer(self) -> None:
        while True:
            self._full.wait(self.flush_s)
            self._full.clear()
            self.flush()

    def flush(self) -> int:
        """Write the buffered rows; returns how many. A failed write keeps them for the next flush."""
        if self._lock is None:
            return 0
        with self._writing:  # one write at a time: the last one (the finalizer's) waits for the writer thread's
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            return self._write(rows)

    def _write(self, rows: list[dict]) -> int:
        try:
            Workspace(self.workspace).logbook().serve_many(rows, timeout=30)
        except Exception as e:  # noqa: BLE001 - busy or unwritable: keep them, try again
            print(f"workbench serve: {len(rows)} served queries not written to the logbook yet ({type(e).__name__}: {e}); "
                  "retrying", file=sys.stderr, flush=True)
            with self._lock:
                self._rows[:0] = rows
            return 0
        return len(rows)


class BodyLimit:
    """ASGI middleware: a request body over `max_body` bytes is a 413, judged by its Content-Length or,
    without one (chunked), by reading it in first (at most `max_body` + one chunk) and replaying it."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_body:
                return await self._too_large(send)
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return await self.app(scope, receive, send)  # the client left: let the app see it
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_body:
                return await self._too_large(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _too_large(self, send):
        body = json.dumps({"detail": f"request body over {self.max_body} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


async def _invalid(request, exc: RequestValidationError) -> JSONResponse:
    """pydantic's 422 without the offending input echoed back: FastAPI's own answer carries it, and an
    infinite number, a NaN or a lone surrogate in it cannot be written as JSON, which made a 500."""
    def text(x) -> str:  # a lone surrogate (e.g. in an unknown field's name) as its escape
        return str(x).encode("utf-8", "backslashreplace").decode("utf-8")

    return JSONResponse({"detail": [{"loc": [text(x) for x in e.get("loc", ())], "msg": text(e.get("msg", "")),
                                     "type": text(e.get("type", ""))} for e in exc.errors()]}, status_code=422)


_AT_FORK = False


def build(workspace: str | Path, cfg: ServeConfig | None = None) -> ls.LitServer:
    """The LitServer for `workspace` (not started: `.run(host, port)`)."""
    cfg = cfg or ServeConfig()
    ws = open_workspace(workspace) if "generative" in cfg.channels else Workspace(Path(workspace))
    if not ws.exists():
        raise ValueError(f"no workspace at {ws.path}")
    path = str(ws.path.resolve())
    total = cfg.workers * len(cfg.channels)
    apis = [APIS[c](path, cfg, total) for c in cfg.channels]
    loggers = [ServedLogger(path, cfg.flush_s, cfg.flush_rows)] if cfg.log else None
    server = ls.LitServer(apis, accelerator=cfg.accelerator, devices=1 if cfg.accelerator == "cpu" else "auto",
                          workers_per_device=cfg.workers, timeout=60, loggers=loggers,
                          middlewares=[(BodyLimit, {"max_body": cfg.max_body})], model_metadata={"config": asdict(cfg)})
    server.app.add_exception_handler(RequestValidationError, _invalid)
    global _AT_FORK
    os.environ[SERVE_PID] = str(os.getpid())
    if not _AT_FORK:  # API servers and LitServe's helpers are forked: each dies with this process
        os.register_at_fork(after_in_child=_die_with_parent)
        _AT_FORK = True
    return server
