"""The README stays true: its commands are what CI runs, its docs match the code, notebooks carry no outputs."""

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from workbench import Workspace
from workbench.cli import main
from workbench.data.schema import describe
from workbench.engine import Engine
from workbench.eval import width
from workbench.pipeline import missing, open_or_build

from .conftest import ROOT, subcommands


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_two_commands_and_ci_runs_them():
    setup, test = readme_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci[0] == setup.split(" && ")[0] and ci[-1] == test  # CI installs as the README does, then runs its test command
    docs = [line for line in ci[1:-1] if "mkdocs build --strict" in line]
    assert len(docs) == 1  # the documentation site is built, strictly
    extra = "\n".join(line for line in ci[1:-1] if line not in docs)  # else only the system browser the browser test needs
    assert not extra or ("apt-get install" in extra and "chromium" in extra and "pip" not in extra and "pytest" not in extra)
    assert not extra or "apt-get install chromium" in (ROOT / "README.md").read_text().split("## Two commands", 1)[1]


def test_data_model_doc_matches_schema():
    assert describe() in (ROOT / "docs" / "data_model.md").read_text()


def test_notebooks_are_committed_without_outputs():
    nbs = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert nbs
    for nb in nbs:
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, nb.name


def test_python_m_workbench_and_help_on_every_verb():
    out = subprocess.run([sys.executable, "-m", "workbench", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "demo" in out.stdout
    runner = CliRunner()

    def walk(group, path):
        for name, cmd in subcommands(group).items():
            r = runner.invoke(main, [*path, name, "--help"])
            assert r.exit_code == 0 and "Usage:" in r.output, (path, name, r.output)
            if hasattr(cmd, "commands"):
                walk(cmd, [*path, name])

    walk(main, [])


@pytest.mark.slow
def test_demo_builds_then_skips_and_sql_reads_the_logbook(demo_workspace):
    ws, output = demo_workspace  # `workbench demo --embedder hashing-64 --no-app`, run once (conftest.py)
    runner = CliRunner()
    assert "sweep    width " in output and "rl       ranker; 40 steps each: grpo click hit@10" in output
    chosen = int(re.search(r"sweep    width (\d+) ", output).group(1))  # the width the build's sweep chose is the one served
    assert width.load_choice(Workspace(ws))["width"] == chosen and Engine(Workspace(ws)).width == chosen
    r = runner.invoke(main, ["-w", str(ws), "gen", "search", "cordless drill", "--top", "1"])
    assert r.exit_code == 0 and f"beam width {chosen} (the sweep's choice)" in r.output, r.output
    assert (ws / "gen" / "generator-eg-grpo.safetensors").exists() and (ws / "rl" / "ranker.safetensors").exists()
    assert "products 3,000" in output and "hashing-64: products 3,000x64" in output and "CQ-SID (64, 16, 8)" in output
    assert "map      Codebooks map of 3,000 products" in output and (ws / "sid" / "map.parquet").exists()
    assert (ws / "sid" / "sids.parquet").exists() and (ws / "sid" / "index.parquet").exists()
    assert missing(Workspace(ws)) == [] and missing(Workspace(ws.parent / "none")) == ["data", "sid", "map", "gen", "sweep", "rl"]
    assert open_or_build(ws, echo=pytest.fail).path == ws  # built: opened without a build run (counted below)
    for wrong in (ws / "logbook.duckdb", ws / "tables"):  # a file, a folder that is not a workspace: refused
        with pytest.raises(FileExistsError, match="is not a workspace"):
            open_or_build(wrong, echo=pytest.fail)
    r = runner.invoke(main, ["-w", str(ws), "demo", "--embedder", "hashing-64", "--no-app"])
    assert r.exit_code == 0 and "tables present" in r.output and "SIDs present" in r.output
    assert "width sweep present" in r.output and "stage-4 models present" in r.output
    assert Workspace(ws).meta["copied_from"].endswith("sample_data") and "name" not in Workspace(ws).meta
    r = runner.invoke(main, ["-w", str(ws), "sql", "SELECT kind, status FROM runs"])
    assert r.exit_code == 0 and r.output.count("build finished") == 2 and r.output.count("sid-train finished") == 1
    r = runner.invoke(main, ["-w", str(ws), "sql", "SELECT nonsense FROM runs"])
    assert r.exit_code != 0 and "SQL error" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["-w", str(ws), "data", "stats"])
    assert r.exit_code == 0 and re.search(r"CTR 0\.\d{3}\), [\d,]+ purchases", r.output)


@pytest.mark.slow
def test_demo_on_a_real_catalog(tmp_path):
    """`demo --catalog homedepot` on a 400-product slice of Home Depot: import, the few-logs recipe, no stage 4."""
    import pandas as pd

    from tests.conftest import need_dataset
    from workbench import app_data

    hd, d = need_dataset("homedepot"), tmp_path / "datasets" / "homedepot"
    d.mkdir(parents=True)
    products = pd.read_csv(hd / "products.csv").head(400)
    products.to_csv(d / "products.csv", index=False)
    judged = pd.read_csv(hd / "judgments_dev.csv")
    judged[judged["product_uid"].isin(products["product_uid"])].to_csv(d / "judgments_dev.csv", index=False)
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "demo", "--catalog", "homedepot", "--datasets", str(d.parent),
                                  "--embedder", "hashing-64", "--no-app"])
    assert r.exit_code == 0, r.output
    assert "importing homedepot" in r.output and "rl       skipped: stage 4 rewards the generator with a ranker" in r.output
    ws = Workspace(tmp_path / "ws")
    assert missing(ws) == [] and len(ws.table("products")) == 400 and not ws.has("search_log")
    assert (ws.path / "sid" / "map.parquet").exists() and (ws.path / "gen" / "generator.safetensors").exists()
    ov = app_data.overview(ws)
    assert ov.examples and "generator-stage2" in set(ov.models["model"]) and "judged pairs" in set(ov.facts["what"])
    r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), "demo", "--catalog", "homedepot", "--source", str(tmp_path)])
    assert r.exit_code == 2 and "give one" in r.output


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["-w", str(tmp_path / "none"), "data", "stats"])
    assert r.exit_code != 0 and "no workspace at" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["-w", str(tmp_path / "none"), "demo", "--embedder", "nope"])
    assert r.exit_code != 0 and "unknown embedder 'nope'" in r.output
    r = runner.invoke(main, ["-w", str(tmp_path / "w"), "data", "import", "csv", "--map", "oops"])
    assert r.exit_code != 0


def layout_block() -> dict[str, str]:
    """The Architecture page's Layout block: path -> what it holds."""
    text = (ROOT / "docs" / "contributing" / "architecture.md").read_text()
    block = re.search(r"```text\n(.+?)\n```", text.split("## Layout", 1)[1], re.S).group(1)
    return dict(re.match(r"(\S+)\s{2,}(.+)", line).groups() for line in block.splitlines())


def test_the_layout_block_is_the_package_tree():
    """Every module and package of workbench/ has its line, in order, and every line names a real path."""
    listed = layout_block()
    tree = {"workbench/"} | {str(p.relative_to(ROOT)) for p in (ROOT / "workbench").rglob("*.py") if "__pycache__" not in p.parts}
    tree |= {f"{p.relative_to(ROOT)}/" for p in (ROOT / "workbench").rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert not tree - set(listed), f"modules missing from the Layout block: {sorted(tree - set(listed))}"
    assert not set(listed) - tree, f"the Layout block lists paths that do not exist: {sorted(set(listed) - tree)}"
    assert list(listed) == sorted(listed) and all(what.strip() for what in listed.values())
