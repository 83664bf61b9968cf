"""The CLI layer: every verb and option users had before the cli/ package is still there, options come
from config fields, and a named recipe is overridden only by the options given."""

import json
import shutil
import time

import click
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.cli.options import apply, config_options
from workbench.config import field_help
from workbench.gen.config import GenConfig, StagesConfig
from workbench.recipes import RECIPES, get
from workbench.rl.config import LossConfig, RLConfig

from .conftest import ROOT, SAMPLE, subcommands


def surface(cmd, path=("workbench",)) -> dict[str, list[str]]:
    out = {" ".join(path): sorted(o for p in cmd.params for o in (p.opts + p.secondary_opts if isinstance(p, click.Option)
                                                                    else [p.name.upper()]))}
    for name, sub in subcommands(cmd).items():
        out.update(surface(sub, (*path, name)))
    return out


def test_every_verb_and_option_of_before_is_kept():
    before = json.loads((ROOT / "tests" / "cli_surface.json").read_text())  # the CLI's surface before workbench/cli/
    now = surface(main)
    assert set(before) <= set(now), f"verbs lost: {sorted(set(before) - set(now))}"
    lost = {verb: sorted(set(opts) - set(now[verb])) for verb, opts in before.items() if set(opts) - set(now[verb])}
    assert not lost, f"options lost: {lost}"


def test_field_help_reads_the_comment_beside_each_field():
    h = field_help(RLConfig)
    assert h["prompts"].startswith("searches per step") and h["group"] == "SIDs sampled per search (G)"
    assert "loss" not in h  # no comment, no help


def test_options_from_fields_and_overrides_only_what_was_given():
    @click.command()
    @config_options(StagesConfig, "stages", "epochs", "train.lr", "eval_width")
    @click.pass_context
    def cmd(ctx, **kw):
        cfg = apply(ctx, get("homedepot").gen, kw)
        click.echo(json.dumps([cfg.stages, cfg.epochs, cfg.train.lr, cfg.eval_width, sorted(kw)]))

    r = CliRunner().invoke(cmd, ["--lr", "0.5", "--eval-width", "8"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == [[1, 2], [6, 12], 0.5, 8, []]  # the recipe's stages and epochs, the given lr and width
    help_ = CliRunner().invoke(cmd, ["--help"]).output
    assert "[default: 1,2,3]" in help_ and "beam width of the per-epoch" in help_.lower()
    bad = CliRunner().invoke(cmd, ["--stages", "1,x"])
    assert bad.exit_code == 2 and "comma-separated integers" in bad.output


def test_recipes_are_listed_printed_and_refused_by_name(tmp_path):
    r = CliRunner().invoke(main, ["recipes"])
    assert r.exit_code == 0 and all(name in r.output for name in RECIPES)
    demo = json.loads(CliRunner().invoke(main, ["recipes", "demo"]).output)
    assert demo["sid"]["model"]["codebook_sizes"] == [64, 16, 8] and demo["rl"]["steps"] == 40
    bad = CliRunner().invoke(main, ["recipes", "nope"])
    assert bad.exit_code == 1 and "unknown recipe 'nope'; recipes: default, demo, market, homedepot" in bad.output
    bad = CliRunner().invoke(main, ["-w", str(tmp_path / "w"), "train", "--recipe", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output


@pytest.mark.slow
def test_a_recipe_trains_and_is_recorded_with_the_run(tmp_path):
    from workbench import Workspace

    shutil.copytree(SAMPLE, tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    r = CliRunner().invoke(main, ["-w", str(ws.path), "sid", "train", "--recipe", "demo", "--embedder", "hashing-32",
                                  "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert "(cluster IDs)" in r.output
    run = ws.logbook().query("SELECT config FROM runs WHERE kind = 'sid-train'")
    cfg = json.loads(run["config"].iloc[0])
    assert cfg["recipe"] == "demo"
    assert cfg["cqsid"]["model"]["codebook_sizes"] == [64, 16, 8] and cfg["cqsid"]["epochs"] == 2  # recipe + the option given


def test_set_changes_one_recipe_setting_by_its_dotted_name():
    from workbench.cli.options import set_fields

    r = set_fields(get("few-logs"), ("gen.pseudo=0", "eval.width=64", "gen.epochs=5,5", "gen.tree=false", "gen.backbone=scratch"))
    assert (r.gen.pseudo, r.eval.width, r.gen.epochs, r.gen.tree, r.gen.backbone) == (0, 64, (5, 5), False, "scratch")
    with pytest.raises(click.BadParameter, match="tree head needs the sentence backbone"):  # settings apply in order
        set_fields(get("few-logs"), ("gen.backbone=scratch",))
    assert get("few-logs").gen.pseudo == 4  # the named recipe itself is untouched
    for bad, msg in [("gen.nope=1", "not a setting of Recipe"), ("gen.pseudo=x", "invalid literal"),
                     ("gen.pseudo", "expected FIELD=VALUE"), ("gen.pseudo=-1", "pseudo >= 0")]:
        with pytest.raises(click.BadParameter, match=msg):
            set_fields(get("few-logs"), (bad,))


def test_options_checked_against_each_other_are_set_together():
    from workbench.config import replace_paths
    from workbench.eval.config import EvalConfig

    cfg = replace_paths(EvalConfig(), {"fusions": ("bm25+dense-tuned", "bm25+dense-tuned+generative"),
                                       "fusion_reference": "bm25+dense-tuned", "channel.pool": 4})
    assert cfg.fusion_reference == "bm25+dense-tuned" and cfg.channel.pool == 4 and EvalConfig().channel.pool == 16
    with pytest.raises(ValueError, match="fusion reference 'bm25' is not among"):
        replace_paths(EvalConfig(), {"fusions": ("bm25+dense", "bm25+dense-tuned"), "fusion_reference": "bm25"})
    r = CliRunner().invoke(main, ["-w", "/nonexistent-ws", "eval", "--fusions", "bm25+dense-tuned,bm25+dense-tuned+generative",
                                  "--fusion-reference", "bm25+dense-tuned"])
    assert "fusion reference" not in r.output and "/nonexistent-ws" in r.output  # the config was accepted; the workspace is what is missing


# -- the error boundary ---------------------------------------------------------------------------
def _boundary(exc: BaseException) -> click.Group:
    """A group with the CLI's error boundary and one command that raises `exc`."""
    from workbench.cli import Errors

    @click.group(cls=Errors)
    def grp():
        pass

    @grp.command()
    def boom():
        raise exc
    return grp


@pytest.mark.parametrize("exc,line", [
    (RuntimeError("CUDA error: out of memory"), "RuntimeError: CUDA error: out of memory"),
    (PermissionError(13, "Permission denied", "/x/tables"), "PermissionError: [Errno 13] Permission denied: '/x/tables'"),
    (KeyError("no table 'users'"), "KeyError: no table 'users'"),
    (ZeroDivisionError("division by zero"), "internal error: ZeroDivisionError: division by zero; rerun with WORKBENCH_DEBUG=1"),
])
def test_every_failure_is_one_line_and_a_nonzero_exit(exc, line, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DEBUG", raising=False)
    r = CliRunner().invoke(_boundary(exc), ["boom"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert r.output.startswith(f"Error: {line}") and "Traceback" not in r.output


def test_debug_lets_the_traceback_through_and_ctrl_c_exits_130(monkeypatch):
    monkeypatch.setenv("WORKBENCH_DEBUG", "1")
    r = CliRunner().invoke(_boundary(ZeroDivisionError("division by zero")), ["boom"])
    assert isinstance(r.exception, ZeroDivisionError)
    monkeypatch.delenv("WORKBENCH_DEBUG")
    r = CliRunner().invoke(_boundary(KeyboardInterrupt()), ["boom"])
    assert r.exit_code == 130 and "interrupted" in r.output


def test_empty_sql_and_bad_counts_are_usage_errors(sample_ws):
    from workbench.logbook import Logbook

    with Logbook(sample_ws.logbook_path).run("x"):
        pass
    w = ["-w", str(sample_ws.path)]
    for args, msg in [(["sql", ""], "empty SQL"), (["sql", "  "], "empty SQL"), (["sql", "SELECT 1", "--max-rows", "-1"], "--max-rows"),
                      (["runs", "--limit", "0"], "--limit"), (["batch", "decode", "a.parquet", "b.parquet", "--top", "-1"], "--top")]:
        r = CliRunner().invoke(main, w + args)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (args, r.output)
    r = CliRunner().invoke(main, w + ["sql", "/* only a comment */"])
    assert r.exit_code == 1 and "no SQL statement" in r.output


def test_device_is_checked_before_anything_runs(sample_ws, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    w = ["-w", str(sample_ws.path)]
    for verb in (["eval"], ["train"], ["gen", "search", "drill"], ["batch", "embed", "a.parquet", "b.parquet"]):
        r = CliRunner().invoke(main, w + verb + ["--device", "cuda"])
        assert r.exit_code == 2 and "CUDA is not available on this machine" in r.output, (verb, r.output)
    r = CliRunner().invoke(main, w + ["eval", "--device", "gpu0"])
    assert r.exit_code == 2 and "'gpu0' is not a device" in r.output


def test_eval_with_a_busy_or_garbage_logbook_says_so(sample_ws, monkeypatch):
    from workbench.logbook import Logbook

    from .conftest import garbage, held

    with Logbook(sample_ws.logbook_path).run("x"):
        pass
    monkeypatch.setattr(Logbook, "LOCK_TIMEOUT", 1.0)
    w = ["-w", str(sample_ws.path)]
    with held(sample_ws.logbook_path) as pid:
        t = time.monotonic()
        r = CliRunner().invoke(main, w + ["eval", "--embedder", "hashing-64"])
        assert time.monotonic() - t < 10
        # the run's start and end wait out the hold (train's stage boundaries must): its rows are kept for later, said so
        assert r.exit_code == 1 and f"workbench: the logbook {sample_ws.logbook_path} is busy: another process (pid {pid})" in r.output
        assert "last rows are kept and written at the next chance" in r.output and "Traceback" not in r.output
        r = CliRunner().invoke(main, w + ["runs"])
        assert r.exit_code == 1 and "LogbookBusy" in r.output
    garbage(sample_ws.logbook_path)
    for verb in (["eval", "--embedder", "hashing-64"], ["sql", "SELECT 1"]):
        r = CliRunner().invoke(main, w + verb)
        assert r.exit_code == 1 and f"{sample_ws.logbook_path} is not a DuckDB logbook" in r.output, r.output
        assert "Traceback" not in r.output


@pytest.mark.parametrize("lr", [-5, 0, float("nan"), float("inf")])
def test_learning_rates_must_be_finite_and_positive(lr):
    from workbench.gen.config import TrainConfig
    from workbench.sid.config import CQSIDConfig

    for cls in (TrainConfig, RLConfig, CQSIDConfig):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: lr={lr!r}: must be a finite number > 0"):
            cls(lr=lr)
    for kw in (dict(batch_size=0), dict(epochs=0), dict(encoder_lr=-1e-4), dict(warmup=1.0)):
        with pytest.raises(ValueError, match=f"TrainConfig: {next(iter(kw))}"):
            TrainConfig(**kw)
    with pytest.raises(ValueError, match="temperature=0"):
        RLConfig(temperature=0)


def test_bad_settings_stop_the_cli_before_it_trains(sample_ws):
    w = ["-w", str(sample_ws.path)]
    for verb in (["train", "--lr", "-5"], ["train", "--batch-size", "0"], ["rl", "--lr", "0"], ["sid", "train", "--lr", "-1"]):
        r = CliRunner().invoke(main, w + verb)
        assert r.exit_code == 1 and "must be a finite number > 0" in r.output, (verb, r.output)
    r = CliRunner().invoke(main, w + ["train", "--lr", "nan"])  # a usage error: refused while the options are parsed
    assert r.exit_code == 2 and "'nan' is not a finite number" in r.output, r.output


@pytest.mark.parametrize("args,msg", [
    (["runs", "--limit", "-1"], "'--limit': -1 is not in the range x>=1"),
    (["sql", "SELECT 1", "--max-rows", "0"], "'--max-rows': 0 is not in the range x>=1"),
    (["batch", "decode", "a.parquet", "b.parquet", "--top", "-1"], "'--top': -1 is not in the range x>=1"),
    (["batch", "decode", "a.parquet", "b.parquet", "--width", "0"], "'--width': 0 is not in the range x>=1"),
    (["batch", "embed", "a.parquet", "b.parquet", "--chunk", "0"], "'--chunk': 0 is not in the range x>=1"),
    (["ranker", "--epochs", "0"], "'--epochs': 0 is not in the range x>=1"),
    (["bench", "embed", "--n", "-1"], "'--n': -1 is not in the range x>=1"),
    (["bench", "batch", "--width", "0"], "'--width': 0 is not in the range x>=1"),
    (["eval", "--k", "0"], "'--k': '0': values must be >= 1"),
    (["eval", "--width", "0"], "width and budgets must be >= 1"),
])
def test_counts_given_on_the_command_line_start_at_1(sample_ws, args, msg):
    """--top, --limit, --width, --n, --chunk, --epochs...: a count of 0 or -1 is an error naming it, not rows."""
    r = CliRunner().invoke(main, ["-w", str(sample_ws.path), *args])
    assert r.exit_code in (1, 2) and msg in r.output, r.output


@pytest.mark.parametrize("args", [["--help"], ["sql", "SELECT count(*) FROM runs"], ["runs"], ["recipes"], ["recipes", "demo"],
                                  ["data", "stats"]])
def test_the_light_verbs_answer_without_importing_torch(args, tmp_path):
    """`python -X importtime` lists every module the command imported: torch is not among them."""
    import subprocess
    import sys

    from workbench.logbook import Logbook

    shutil.copytree(SAMPLE, tmp_path / "ws")
    with Logbook(tmp_path / "ws" / "logbook.duckdb").run("x"):  # a run for sql and runs to read
        pass
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "workbench", "-w", str(tmp_path / "ws"), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "workbench" in imported and "click" in imported  # the listing is real
    assert not {"torch", "sentence_transformers", "transformers"} & imported, sorted(imported & {"torch", "transformers"})


def test_a_verb_runs_the_command_it_lazily_loads_and_its_summary_is_clicks():
    from workbench.cli import VERBS, summary

    verbs = subcommands(main)
    assert sorted(verbs) == sorted(VERBS) and all(isinstance(c, click.Command) for c in verbs.values())
    for verb, cmd in verbs.items():
        assert summary(verb) == cmd.get_short_help_str(), verb  # --help's line, read without importing, is click's own
    r = CliRunner().invoke(main, ["nope"])
    assert r.exit_code == 2 and "No such command 'nope'" in r.output


BAD_NAMES = ["../sid/rqvae", "a/b", "..", ".hidden", "", "x y", "a\\b", "n" * 121]
NAMED = [  # every way a verb takes a generator's name
    ["train", "--stages", "1", "--epochs", "1", "--fresh", "--name"], ["rl", "--steps", "1", "--name"],
    ["gen", "search", "drill", "--name"], ["gen", "rank", "--name"], ["gen", "rank", "--out"],
    ["batch", "decode", "in.parquet", "out.parquet", "--model"], ["eval", "--name"], ["serve", "--name"],
    ["ab", "--arms"],
]


@pytest.mark.parametrize("verb", NAMED, ids=lambda v: " ".join(v[:2]))
def test_names_are_names_on_every_verb(trained_copy, verb):
    """A name that is a path (or empty, or odd) is refused before anything runs, and nothing in or beside the
    workspace changes (`train --name ../sid/rqvae` used to overwrite the SID model with a generator)."""
    from workbench.gen import names, store

    ws = trained_copy

    def files():
        return {p: p.stat().st_mtime_ns for p in ws.path.parent.rglob("*") if p.is_file() and "logbook" not in p.name}

    before = files()
    for bad in BAD_NAMES:
        arg = f"dense+{bad}" if verb[0] == "ab" else bad
        r = CliRunner().invoke(main, ["-w", str(ws.path), *verb, arg])
        why = "joined by +" if verb[0] == "ab" and not bad else "is not a name"  # 'dense+' has an empty part
        assert r.exit_code in (1, 2) and why in r.output, (verb, bad, r.output[-500:])
        assert "Traceback" not in r.output
    assert files() == before
    for bad in BAD_NAMES:  # the Python API: every path made from a name is checked
        with pytest.raises(ValueError, match="is not a name"):
            store.checkpoint_path(ws, bad)
    assert names.check("generator-stage2.partial") == "generator-stage2.partial"


def float_options():
    """(verb path, option flag, its type) of every float option of every verb."""
    out = []

    def walk(cmd, path):
        out.extend((path, p.opts[0], p.type) for p in cmd.params
                   if isinstance(p, click.Option) and isinstance(p.type, click.types.FloatParamType))
        for name, sub in subcommands(cmd).items():
            walk(sub, [*path, name])
    walk(main, [])
    return out


def test_every_float_option_of_every_verb_refuses_nan_and_infinity(tmp_path):
    """`eval --logp-weight nan` used to run and log a tenth of the NDCG as finished; click's FLOAT and FloatRange
    take nan (and inf above a minimum). Every float option is `Finite`, refused at parse time, before anything runs."""
    from workbench.cli.options import Finite

    found = float_options()
    assert len(found) > 30 and {" ".join(p) for p, *_ in found} >= {"eval", "ab", "serve", "train", "rl"}
    plain = [(" ".join(p), o) for p, o, t in found if not isinstance(t, Finite)]
    assert not plain, f"float options that take nan: {plain}"
    for path, opt, _ in found:
        for bad in ("nan", "inf", "-inf", "NaN"):
            r = CliRunner().invoke(main, ["-w", str(tmp_path / "ws"), *path, opt, bad])
            assert r.exit_code == 2 and "is not a finite number" in r.output, (path, opt, bad, r.output[-300:])
    assert not (tmp_path / "ws").exists()  # nothing ran


@pytest.mark.parametrize("make,why", [
    (lambda: RLConfig(group=1, algo="grpo"), "no advantage to learn from"),
    (lambda: RLConfig(group=1, refs=0), "no advantage to learn from"),
    (lambda: RLConfig(eval_every=-1), "eval_every"), (lambda: RLConfig(eval_every=0), "eval_every"),
    (lambda: LossConfig(ref_floor=5), "ref_floor"), (lambda: LossConfig(ref_floor=float("nan")), "ref_floor"),
    (lambda: LossConfig(kl=float("inf")), "finite"),
    (lambda: GenConfig(sid_vocab=(4, 4), text_vocab=10, dec_layers=0), "dec_layers"),
    (lambda: GenConfig(sid_vocab=(4, 4), text_vocab=10, enc_layers=0), "enc_layers"),
    (lambda: GenConfig(sid_vocab=(4, 4), text_vocab=10, dropout=1.0), "dropout"),
    (lambda: GenConfig(sid_vocab=(4, 4), text_vocab=10, dropout=float("nan")), "dropout"),
])
def test_values_that_cannot_be_meant_are_refused(make, why):
    """`--layers 0`, `rl --group 1`, `--ref-floor 5`, `--eval-every -1` used to run (or fail with a bare internal error)."""
    with pytest.raises(ValueError, match=why):
        make()
    assert RLConfig(group=1).group == 1  # EG-GRPO: one sample and one reference still make a group of two
