"""Shared by tests/ and notebooks/: the demo workspace is built once per pytest session.

`workbench demo --no-app` is the slowest thing the suite does, so it runs once (with hashing-64
embeddings): `tests/test_project.py` checks what it printed, and every notebook executes against it
(its kernel starts with WORKBENCH_WORKSPACE pointing there). Set WORKBENCH_WORKSPACE yourself to run
the notebooks on another workspace instead.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach for a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_DEMO: dict = {}


def build_demo() -> tuple[Path, str]:
    """(workspace path, what `workbench demo` printed), built on first call."""
    if not _DEMO:
        from click.testing import CliRunner

        from workbench.cli import main

        root = Path(tempfile.mkdtemp(prefix="workbench-demo-"))
        ws = root / "default"
        r = CliRunner().invoke(main, ["-w", str(ws), "demo", "--embedder", "hashing-64", "--no-app"])
        if r.exit_code != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"workbench demo failed: {r.output[-3000:]}") from r.exception
        _DEMO.update(root=root, ws=ws, output=r.output)
    return _DEMO["ws"], _DEMO["output"]


@pytest.fixture(scope="session")
def demo_workspace():
    return build_demo()


def pytest_runtest_setup(item):
    if item.path.suffix == ".ipynb" and "WORKBENCH_WORKSPACE" not in os.environ:
        os.environ["WORKBENCH_WORKSPACE"] = str(build_demo()[0])
        item._set_workspace = True


def pytest_runtest_teardown(item):
    if getattr(item, "_set_workspace", False):
        del os.environ["WORKBENCH_WORKSPACE"]


def pytest_unconfigure(config):
    if _DEMO:
        shutil.rmtree(_DEMO["root"], ignore_errors=True)
