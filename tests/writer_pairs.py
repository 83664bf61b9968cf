"""Two writing verbs at once on one workspace, for every pair of verbs (`test_workspace.py`).

    python tests/writer_pairs.py WORKSPACE VERBS_JSON SEED

For each unordered pair of the verbs (each with itself too), on a fresh copy of WORKSPACE: fork two
processes of this interpreter (the imports are paid once, before any torch thread exists), start them a
seeded moment apart in a seeded order, run `workbench -w COPY VERB` in each, wait for both, and load
every artifact of the copy (`pipeline.report`). Prints one JSON row per pair: the verbs, each one's exit
code and last output, and the artifacts' statuses.
"""

import json
import os
import random
import shutil
import sys
import tempfile
import time
from itertools import combinations_with_replacement
from pathlib import Path

import torch  # noqa: F401  imported before the fork, like everything the verbs need

from workbench import Workspace, pipeline
from workbench.cli import main


def run(ws: str, args: list[str], delay: float, out) -> int:
    """In a forked child: wait `delay` s, run the verb with its output into `out`, exit with its code."""
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    time.sleep(delay)
    try:
        main.main(["-w", ws, *args], prog_name="workbench", standalone_mode=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException as e:  # an error the CLI let escape: reported as a failure with its name
        print(f"ESCAPED {type(e).__name__}: {e}", flush=True)
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def pair(source: Path, a: list[str], b: list[str], rng: random.Random, scratch: Path) -> dict:
    ws = scratch / "ws"
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(source, ws, ignore=shutil.ignore_patterns(".writer.lock"))
    verbs, delays = [a, b], [0.0, rng.uniform(0.0, 0.5)]
    if rng.random() < 0.5:
        verbs.reverse()
    kids = []
    for args, delay in zip(verbs, delays):
        out = tempfile.NamedTemporaryFile("w+", dir=scratch, delete=False)
        pid = os.fork()
        if pid == 0:
            run(str(ws), args, delay, out)
        kids.append((pid, out.name))
    done = []
    for pid, name in kids:
        _, status = os.waitpid(pid, 0)
        done.append({"verb": verbs[len(done)], "code": os.waitstatus_to_exitcode(status), "output": Path(name).read_text()[-1500:]})
    return {"runs": done, "report": in_child(lambda: {r["artifact"]: [r["status"], r["detail"]] for r in pipeline.report(Workspace(ws))},
                                             scratch)}


def in_child(fn, scratch: Path):
    """`fn()` (JSON-able) computed in a forked child: this process never runs torch, so no thread pool of its
    own is copied half-held into the next pair's children."""
    out = tempfile.NamedTemporaryFile("w+", dir=scratch, delete=False)
    pid = os.fork()
    if pid == 0:
        out.write(json.dumps(fn()))
        out.flush()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the report failed"
    return json.loads(Path(out.name).read_text())


if __name__ == "__main__":
    source, verbs, seed = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), int(sys.argv[3])
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as scratch:
        for a, b in combinations_with_replacement(verbs, 2):
            print(json.dumps(pair(source, a, b, rng, Path(scratch))), flush=True)
