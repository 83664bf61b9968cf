"""Progressive stages: data, replay, personal context, resume after a kill."""

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import TINY
from workbench import Workspace
from workbench.gen import stages as st
from workbench.gen import store
from workbench.gen.config import ChannelConfig, TrainConfig
from workbench.gen.context import UserContext
from workbench.gen.data import Pairs, item_pairs
from workbench.gen.model import Generator
from workbench.gen.retrieve import Channel, Generative, Retriever


def test_history_is_strictly_before_the_event_and_newest_first():
    sids = pd.DataFrame({"product_id": ["a", "b", "c"], "sid_1": [0, 1, 2], "sid_2": [1, 0, 3], "sid_3": [0, 0, 0]})
    t = pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-03"], utc=True)
    events = pd.DataFrame({"user_id": ["u1", "u1", "u1", "u2"], "product_id": ["a", "b", "c", "a"], "time": t})
    ctx = UserContext(pd.Series(["u1", "u2", "u3"]), events, sids, (3, 4, 2), history=2)
    tok = {p: 3 + c1 * 4 + c2 for p, c1, c2 in zip(sids["product_id"], sids["sid_1"], sids["sid_2"])}
    got = ctx.ids(["u1", "u1", "u3", "ghost"], pd.to_datetime(["2026-01-03"] * 4, utc=True))
    assert got[0].tolist() == [0, tok["b"], tok["a"]]  # the same-day click on c is not history
    assert got[2].tolist() == [-1, -1, -1] and got[3].tolist() == [-1, -1, -1]  # cold (no history) and unknown: anonymous
    assert ctx.ids(["u2"], pd.to_datetime(["2026-01-03"], utc=True))[0].tolist() == [-1, -1, -1]  # history only from then on
    assert ctx.ids(["u1"])[0].tolist() == [0, tok["c"], tok["b"]]  # now: everything, newest first
    assert ctx.known(["u2", "ghost"]).tolist() == [True, False] and ctx.vocab_size == 3 + 12


def test_history_brands_follow_the_history_products_in_the_same_order():
    sids = pd.DataFrame({"product_id": ["a", "b", "c"], "sid_1": [0, 1, 2], "sid_2": [1, 0, 3], "sid_3": [0, 0, 0]})
    t = pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True)
    events = pd.DataFrame({"user_id": ["u1"] * 3, "product_id": ["a", "b", "c"], "time": t})
    brands = pd.Series(["Xo", None, "Ya"], index=["a", "b", "c"])  # b has no brand: an empty slot
    ctx = UserContext(pd.Series(["u1", "u2"]), events, sids, (3, 4, 2), history=2, brands=brands)
    base = 2 + 12  # users, then SID prefixes, then the brands in sorted order: Xo, Ya
    assert ctx.width == 5 and ctx.vocab_size == base + 2 and ctx.brands
    assert ctx.ids(["u1"])[0].tolist() == [0, 2 + 2 * 4 + 3, 2 + 1 * 4 + 0, base + 1, -1]  # c then b; Ya then b's none
    assert ctx.ids(["u1"], pd.to_datetime(["2026-01-03"], utc=True))[0].tolist() == [0, 6, 3, -1, base]
    assert ctx.ids(["u2"])[0].tolist() == [-1] * 5  # cold: the anonymous path, brand slots too
    plain = UserContext(pd.Series(["u1", "u2"]), events, sids, (3, 4, 2), history=2)
    assert plain.width == 3 and not plain.brands and plain.ids(["u1"])[0].tolist() == ctx.ids(["u1"])[0, :3].tolist()


def test_history_brands_need_a_brand_column(trained, monkeypatch):
    from workbench.sid.store import load_sids

    ws = trained[0]
    sids = load_sids(ws)
    vocab = (int(sids["sid_1"].max()) + 1, int(sids["sid_2"].max()) + 1)
    ctx = UserContext.from_workspace(ws, sids, vocab, brands=True)
    assert ctx.brands and ctx.width == 11 and ctx.vocab_size > UserContext.from_workspace(ws, sids, vocab).vocab_size
    table = ws.table
    monkeypatch.setattr(ws, "table", lambda name: table(name).assign(brand=None) if name == "products" else table(name))
    with pytest.raises(ValueError, match="need a brand per product"):
        UserContext.from_workspace(ws, sids, vocab, brands=True)


def test_replay_mixes_in_a_share_of_earlier_examples():
    cur = Pairs(["q"] * 10, np.zeros((10, 2), int), np.ones(10))
    old = Pairs([f"t{i}" for i in range(50)], np.ones((50, 2), int), np.ones(50))
    mixed = st.replay(cur, [old], 0.3, seed=0)
    assert len(mixed) == 13 and sum(t.startswith("t") for t in mixed.text) == 3
    assert len(st.replay(cur, [old], 0.0, seed=0)) == 10
    assert st.with_context(cur, 3).context.shape == (10, 3) and (st.with_context(cur, 3).context == -1).all()


def test_unknown_users_get_exactly_the_non_personalised_results(trained):
    ws, rows = trained
    assert rows[-1]["stage"] == "3-personal" and 0 <= rows[-1]["personal_hit@10"] <= 1
    r = Retriever.from_workspace(ws)
    torch.manual_seed(0)
    untrained = Retriever(Generator(r.model.cfg).eval(), r.tok, r.index, r.lookup)
    chance = st.item_eval(untrained, item_pairs(ws))["item_hit@10"]  # the same 500 titles each stage was scored on
    # the curriculum learned titles -> own SID (this fixture's 3 tiny epochs of stage 1 alone barely do: 0.07 vs 0.02-0.05)
    assert rows[-1]["item_hit@10"] > 3 * chance, (rows[-1]["item_hit@10"], chance)
    ctx, known = r.user_context(ws, ["nobody", ws.table("users")["user_id"][0]])
    assert known.tolist() == [False, True] and (ctx[0] == -1).all() and ctx[1, 0] == 0
    plain = r.search(["cordless drill"], 8)
    ghost = r.search(["cordless drill"], 8, context=ctx[:1])
    assert [h.sid for h in plain[0]] == [h.sid for h in ghost[0]]
    np.testing.assert_allclose([h.logp for h in plain[0]], [h.logp for h in ghost[0]], atol=1e-5)


def test_personal_hit_rates_split_off_the_users_with_a_history(trained):
    ws, _ = trained
    r = Retriever.from_workspace(ws)
    ctx, events = r.users(ws), st.personal_events(ws).head(60)
    got = st.personal_eval(r, events, ctx, 8, ks=(10,))
    known = (ctx.ids(events["user_id"], events["time"])[:, 1:] >= 0).any(1)
    assert got["history_share"] == pytest.approx(known.mean()) and 0 < known.mean() < 1
    mine = st.personal_eval(r, events[known], ctx, 8, ks=(10,))  # the history events alone: their own rates
    assert got["personal_hit_history@10"] == pytest.approx(mine["personal_hit@10"])
    assert got["anonymous_hit_history@10"] == pytest.approx(mine["anonymous_hit@10"]) and mine["history_share"] == 1


def test_bad_stage_plans_are_refused(trained, tmp_path):
    ws, _ = trained
    for bad in [(2, 1), (4,), (), (1, 1)]:
        with pytest.raises(ValueError, match="stages must be"):
            st.train_stages(ws, st.StagesConfig(stages=bad))
    with pytest.raises(FileNotFoundError, match="no generator 'fresh-stage1'"):
        st.train_stages(ws, st.StagesConfig(stages=(2,)), name="fresh")
    with pytest.raises(ValueError, match="epoch counts"):
        st.train_stages(ws, st.StagesConfig(stages=(1, 2, 3), epochs=(1, 2)))


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_with_the_same_weights(trained, tmp_path, monkeypatch):
    ws = Workspace(shutil.copytree(trained[0].path, tmp_path / "ws"))
    cfg = st.StagesConfig(stages=(1, 2), model=TINY, train=TrainConfig(lr=3e-3), epochs=(1, 3), eval_width=4)
    st.train_stages(ws, cfg, name="straight", progress=False)

    real, calls = st.recall_eval, {"n": 0}

    def dies_in_stage_2_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # stage 1's only epoch, stage 2's first, then the kill
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(st, "recall_eval", dies_in_stage_2_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        st.train_stages(ws, cfg, name="killed", progress=False)
    assert (store.gen_dir(ws) / "killed-stage1.safetensors").exists()
    assert (store.gen_dir(ws) / "killed-stage2.partial.safetensors").exists()
    monkeypatch.setattr(st, "recall_eval", real)
    rows = st.train_stages(ws, cfg, name="killed", progress=False)
    assert rows[0] == {"stage": "1-items", "resumed": "done"}
    assert not (store.gen_dir(ws) / "killed-stage2.partial.safetensors").exists()
    a, _, _ = store.load(ws, "straight")
    b, _, _ = store.load(ws, "killed")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)


def test_a_plan_takes_its_epochs_per_planned_stage_per_stage_number_or_one_for_all():
    assert st.StagesConfig(stages=(3,)).epochs == (6,)  # the default's stage-3 epochs
    assert st.StagesConfig(stages=(2, 3), epochs=(4,)).epochs == (4, 4)
    assert st.StagesConfig(stages=(1, 2), epochs=(6, 12)).epochs == (6, 12)
    with pytest.raises(ValueError, match="epochs >= 1"):
        st.StagesConfig(epochs=(0,))


def test_stage_1_learns_pseudo_queries_and_stage_2_a_teachers_ranking(trained, tmp_path):
    import json

    ws = Workspace(shutil.copytree(trained[0].path, tmp_path / "ws"))
    cfg = st.StagesConfig(stages=(1, 2), epochs=(1, 1), model=TINY, pseudo=2, distill="bm25", distill_k=5, distill_query_k=1,
                          eval_width=4)
    rows = st.train_stages(ws, cfg, name="pseudo", progress=False)
    n_items, n_pseudo = len(ws.table("products")), len(ws.table("pseudo_queries").groupby("product_id").head(2))
    assert ws.has("pseudo_queries") and n_pseudo > len(ws.table("products"))  # drawn on first use, 4 per product kept
    assert rows[0]["examples"] == n_items + n_pseudo
    runs = ws.logbook().query("SELECT name, config FROM runs WHERE name LIKE 'gen-train pseudo stage %' ORDER BY name")
    examples = [json.loads(c)["examples"] for c in runs["config"]]
    assert examples[0] == "items+pseudo" and examples[1].startswith("queries+distill")
    n_texts = len(set(ws.table("pseudo_queries").groupby("product_id").head(2)["query"]))
    assert rows[1]["examples"] > n_texts  # every training query and pseudo-query labelled by the teacher, replay on top
    # the training queries are labelled with their own depth: one product each here, so one example per query text
    deeper = replace(cfg, stages=(2,), epochs=(1,), distill_query_k=30)
    more = st.train_stages(ws, deeper, name="pseudo", resume=False, progress=False)
    assert more[0]["examples"] > rows[1]["examples"]
    with pytest.raises(ValueError, match="distill_query_k >= 1"):
        replace(cfg, distill_query_k=0)


def test_stage_3_examples_follow_the_target_weights(trained):
    """A purchase weighs `purchased`, a click without one `clicked`; weight 0 drops the source (it used to be
    a fixed 2 and 1 whatever the weights, so `--target-clicked 0` left stage 3's clicks in)."""
    from workbench.gen.config import TargetWeights
    from workbench.sid.store import load_sids

    ws, _ = trained
    sids = load_sids(ws)
    ctx = UserContext.from_workspace(ws, sids, (int(sids["sid_1"].max()) + 1, int(sids["sid_2"].max()) + 1), history=2)
    log = ws.table("search_log")
    train = log[st.splits.mask(ws, log["query_id"], "train")].merge(sids[["product_id"]], on="product_id")
    both = st.personal_pairs(ws, sids, ctx)
    assert len(both) == (train["clicked"] | train["purchased"]).sum() and sorted(set(both.weight)) == [1.0, 2.0]
    bought = st.personal_pairs(ws, sids, ctx, TargetWeights(clicked=0))
    assert len(bought) == train["purchased"].sum() and set(bought.weight) == {2.0}
    heavy = st.personal_pairs(ws, sids, ctx, TargetWeights(purchased=5, clicked=0.5))
    assert len(heavy) == len(both) and sorted(set(heavy.weight)) == [0.5, 5.0]
    with pytest.raises(ValueError, match="stage 3 has no examples"):
        st.personal_pairs(ws, sids, ctx, TargetWeights(purchased=0, clicked=0, judged=1))


def test_stage_3_context_never_holds_its_own_session(trained):
    """Each training example's history is what the user did before the session: rebuilt from a log with that
    session's rows removed, it is the same (a same-session click or purchase would change it)."""
    from workbench.sid.store import load_sids

    ws, _ = trained
    sids = load_sids(ws)
    vocab = (int(sids["sid_1"].max()) + 1, int(sids["sid_2"].max()) + 1)
    ctx = UserContext.from_workspace(ws, sids, vocab, history=3, brands=True)
    log = ws.table("search_log")
    train = log[(log["clicked"] | log["purchased"]) & st.splits.mask(ws, log["query_id"], "train")]
    train = train.merge(sids[["product_id"]], on="product_id")
    assert (st.personal_pairs(ws, sids, ctx).context == ctx.ids(train["user_id"], train["time"])).all()  # the frame's rows
    ev = log[log["clicked"] | log["purchased"]][["session_id", "user_id", "product_id", "time"]]
    sessions = train.groupby("session_id").head(1)
    sessions = sessions[ctx.ids(sessions["user_id"], sessions["time"])[:, 0] >= 0].sample(25, random_state=0)
    products = ws.table("products")
    brands = pd.Series(products["brand"].to_numpy(), index=products["product_id"].to_numpy())
    for _, s in sessions.iterrows():
        without = UserContext(ws.table("users")["user_id"], ev[ev["session_id"] != s["session_id"]], sids, vocab, 3, brands)
        assert (without.ids([s["user_id"]], [s["time"]]) == ctx.ids([s["user_id"]], [s["time"]])).all(), s["session_id"]


def test_the_user_gate_runs_from_anonymous_to_personal(trained):
    """gate 0 decodes exactly the anonymous beams, gate 1 exactly the personal ones, and between them the
    mixture's own (every SID still in the index)."""
    ws, _ = trained
    r = Retriever.from_workspace(ws)
    events = st.personal_events(ws)
    ctx = r.users(ws).ids(events["user_id"], events["time"])
    events, ctx = events[ctx[:, 1] >= 0].head(24), torch.as_tensor(ctx[ctx[:, 1] >= 0][:24])  # users with a history
    assert len(events) == 24
    texts = events["query"].tolist()

    def beams(**kw):
        return [[(h.sid, round(h.logp, 4)) for h in hits] for hits in r.search(texts, 8, **kw)]

    anon, personal = beams(context=torch.full_like(ctx, -1)), beams(context=ctx)
    assert anon != personal  # the user term moves something, else the gate has nothing to weigh
    assert beams(context=ctx, gate=0.0) == anon and beams(context=ctx, gate=1.0) == personal
    half = r.search(texts, 8, context=ctx, gate=0.5)
    assert all(r.index.rows(np.array([h.sid for h in hits])).min() >= 0 for hits in half)
    assert [[h.sid for h in hits] for hits in half] not in ([[s for s, _ in b] for b in anon], [[s for s, _ in b] for b in personal])
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="gate must lie in"):
            r.search(texts[:2], 4, context=ctx[:2], gate=bad)
        with pytest.raises(ValueError, match="user gate must lie in"):
            ChannelConfig(user_gate=bad)
    # the channel as served and simulated (engine, ab) decodes a user's search through its config's gate
    closed = Generative(r, Channel(ChannelConfig(order="popularity", user_gate=0.0)), 8)
    assert [[(h.sid, round(h.logp, 4)) for h in hits] for hits in closed.hits(texts, ctx)] == anon


def test_train_deploys_again_what_a_killed_deploy_or_a_damaged_file_left_behind(trained_copy):
    """Stages already trained used to leave any `generator` as it was: one older than its stage (a deploy
    killed after the stage was saved) or a truncated file, and `demo` and `train` reported done over it."""
    ws, cfg = trained_copy, st.StagesConfig(model=TINY, train=TrainConfig(lr=3e-3), epochs=(3, 3, 2), eval_width=16)
    said = []
    st.train_stages(ws, cfg, progress=False, echo=said.append)
    assert "left as it is" in said[-1] and not store.deploy_problem(ws, "generator-stage3")
    model, tok, meta = store.load(ws, "generator-stage3")  # stage 3 trained again, its deploy killed: same parent, new weights
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    store.save(ws, model, tok, "generator-stage3", parent="generator-stage2")
    assert "older than generator-stage3" in store.deploy_problem(ws, "generator-stage3")
    st.train_stages(ws, cfg, progress=False, echo=said.append)
    assert "deploying generator-stage3 as generator" in said[-1] and not store.deploy_problem(ws, "generator-stage3")
    path = store.checkpoint_path(ws, "generator")
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(Exception, match="workbench deploy --repair"):
        store.load(ws)
    st.train_stages(ws, cfg, progress=False, echo=said.append)
    assert "does not load" in said[-1] and not store.deploy_problem(ws, "generator-stage3")


def test_deploy_verb_deploys_a_checkpoint_and_repairs_the_deployed_one(trained_copy):
    from click.testing import CliRunner

    from workbench.cli import main

    ws = trained_copy

    def run(*args):
        return CliRunner().invoke(main, ["-w", str(ws.path), "deploy", *args])

    r = run("--repair")
    assert r.exit_code == 0 and "is sound" in r.output, r.output
    r = run("generator-stage2")
    assert r.exit_code == 0 and "deployed generator-stage2 as generator" in r.output, r.output
    assert not store.deploy_problem(ws, "generator-stage2") and store.last_deployed(ws) == "generator-stage2"
    path = store.checkpoint_path(ws, "generator")
    path.write_bytes(b"garbage")
    r = run("--repair")
    assert r.exit_code == 0 and "deployed again from generator-stage2" in r.output, r.output
    assert not store.deploy_problem(ws, "generator-stage2")
    for bad, says in ((["nope"], "no generator 'nope'"), ([], "one of the two"), (["generator", "--repair"], "one of the two"),
                      (["generator"], "the deployed generator itself"), (["../x"], "is not a name")):
        r = run(*bad)
        assert r.exit_code in (1, 2) and says in r.output and "Traceback" not in r.output, (bad, r.output)
