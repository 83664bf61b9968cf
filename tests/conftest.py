import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach for a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
DATASETS = ROOT.parent / "shared" / "datasets"


def need_dataset(name: str) -> Path:
    p = DATASETS / name
    if not p.exists():
        pytest.skip(f"real data set {p} is absent (it lives in ../shared/datasets beside the project)")
    return p


@pytest.fixture
def sample_ws(tmp_path):
    """A copy of the committed sample workspace (tables only), safe to write into."""
    from workbench import Workspace

    shutil.copytree(SAMPLE, tmp_path / "ws")
    return Workspace(tmp_path / "ws")
