"""Stage 4: the ranker, the rewards, GRPO / EG-GRPO's pure functions and the training loop."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import TINY, assert_same_training
from workbench import Workspace
from workbench.gen import store
from workbench.gen.config import GenConfig
from workbench.gen.model import Generator
from workbench.gen.trie import compile_trie
from workbench.metrics import auc
from workbench.rl import grpo, rewards
from workbench.rl.config import REWARD_TERMS, LossConfig, RewardConfig
from workbench.rl.ranker import from_workspace as load_ranker
from workbench.rl.ranker import train_workspace as train_ranker
from workbench.sid.index import SIDIndex


@pytest.fixture(scope="module")
def rl_ws(trained, tmp_path_factory):
    """A copy of the trained tiny workspace with a ranker (hashing embeddings)."""
    ws, _ = trained
    d = tmp_path_factory.mktemp("rl") / "ws"
    shutil.copytree(ws.path, d)
    ws = Workspace(d)
    _, history = train_ranker(ws, "hashing-64", epochs=3, progress=False)
    return ws, history


# -- advantages and the loss ---------------------------------------------------------------------
def test_equal_rewards_give_exactly_zero_advantage():
    r = torch.tensor([[0.1, 0.1, 0.1, 0.1], [1.0, 2.0, 3.0, 4.0], [7.3, 7.3, 7.3, 7.3]])
    a = grpo.advantages(r)
    assert (a[0] == 0).all() and (a[2] == 0).all()
    assert a[1].mean().abs() < 1e-6 and torch.allclose(a[1].std(unbiased=False), torch.tensor(1.0), atol=1e-3)
    assert grpo.equal_groups(r).tolist() == [True, False, True]


def test_advantages_over_present_members_only():
    r = torch.tensor([[1.0, 3.0, 100.0]])
    present = torch.tensor([[True, True, False]])
    a = grpo.advantages(r, present)
    assert a[0, 2] == 0 and torch.allclose(a[0, :2], torch.tensor([-1.0, 1.0]), atol=1e-3)
    assert grpo.equal_groups(torch.tensor([[2.0, 2.0, 9.0]]), present).item()  # the absent 9 does not count


def _grads(shaping: str, ref_weight: float = 1.0, ref_adv: float = 2.0, ref_floor: float | None = None):
    """d loss / d logp for one group: 2 sampled members (old == logp) and 1 reference, L = 2."""
    logp = torch.log(torch.tensor([[[0.5, 0.2], [0.3, 0.9], [0.05, 0.4]]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, ref_adv]])
    is_ref = torch.tensor([[False, False, True]])
    present = torch.ones(1, 3, dtype=torch.bool)
    cfg = LossConfig(kl=0.0, shaping=shaping, gamma=0.1, ref_weight=ref_weight, ref_floor=ref_floor)
    lo, _ = grpo.loss(logp, old=logp.detach(), ref=logp.detach(), adv=adv, is_ref=is_ref, present=present, cfg=cfg)
    lo.backward()
    return logp.grad[0], logp.detach().exp()[0]


def test_reference_members_enter_as_documented():
    g, p = _grads("luffy", ref_weight=0.5)
    n = 6  # members x levels
    assert torch.allclose(g[0], torch.full((2,), -1.0 / n))  # sampled, ratio 1: -A / n
    assert torch.allclose(g[1], torch.full((2,), 1.0 / n))
    shaped = 0.1 * p[2] / (p[2] + 0.1) ** 2  # d/dlogp of p / (p + gamma)
    assert torch.allclose(g[2], -0.5 * 2.0 * shaped / n)
    g, _ = _grads("none")
    assert torch.allclose(g[2], torch.full((2,), -2.0 / n))  # ratio taken as 1: advantage-weighted log-likelihood


def test_the_reference_floor_never_pushes_the_ground_truth_down():
    g, _ = _grads("none", ref_adv=-1.5)
    assert torch.allclose(g[2], torch.full((2,), 1.5 / 6))  # without the floor a poorly rewarded reference is unlearned
    g_floor, _ = _grads("none", ref_adv=-1.5, ref_floor=0.0)
    assert torch.all(g_floor[2] == 0) and torch.allclose(g_floor[:2], g[:2])  # with it: no push; samples unchanged
    assert torch.allclose(_grads("luffy", ref_floor=0.0)[0], _grads("luffy")[0])  # a positive advantage is kept as it is
    anchor, _ = _grads("none", ref_adv=-1.5, ref_floor=1.0)
    assert torch.allclose(anchor[2], torch.full((2,), -1.0 / 6))  # floor 1: always pulled up, like SFT on the reference


def test_clip_and_kl():
    logp = torch.log(torch.tensor([[[0.9]]])).requires_grad_()
    old = torch.log(torch.tensor([[[0.5]]]))  # ratio 1.8 > 1 + clip
    cfg = LossConfig(kl=0.0, clip=0.2)
    lo, stats = grpo.loss(logp, old=old, ref=logp.detach(), adv=torch.ones(1, 1), is_ref=torch.zeros(1, 1, dtype=torch.bool),
                          present=torch.ones(1, 1, dtype=torch.bool), cfg=cfg)
    lo.backward()
    assert logp.grad.abs().sum() == 0 and stats["clip_share"] == 1.0  # clipped: no push further up
    same = torch.zeros(1, 2, 3)
    _, stats = grpo.loss(same, old=same, ref=same, adv=torch.zeros(1, 2), is_ref=torch.zeros(1, 2, dtype=torch.bool),
                         present=torch.ones(1, 2, dtype=torch.bool), cfg=LossConfig())
    assert stats["kl"] == 0.0
    _, stats = grpo.loss(same, old=same, ref=same - 0.5, adv=torch.zeros(1, 2), is_ref=torch.zeros(1, 2, dtype=torch.bool),
                         present=torch.ones(1, 2, dtype=torch.bool), cfg=LossConfig())
    assert stats["kl"] > 0


def test_bad_loss_config():
    with pytest.raises(ValueError, match="shaping"):
        LossConfig(shaping="magic")
    with pytest.raises(ValueError, match="clip > 0"):
        LossConfig(clip=0)


# -- sampling and log-probabilities ---------------------------------------------------------------
def _tiny_model(index: SIDIndex) -> Generator:
    torch.manual_seed(0)
    return Generator(GenConfig(sid_vocab=index.vocab, text_vocab=50, **TINY)).eval()


def test_samples_exist_and_policy_is_normalised():
    codes = np.array([[0, 1, 2], [0, 1, 0], [1, 0, 1], [2, 2, 2], [2, 0, 1]])
    index = SIDIndex.from_codes(codes, (3, 3, 3))
    model, trie = _tiny_model(index), compile_trie(index)
    ids, mask = torch.randint(4, 50, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    s = grpo.sample(model, model.memory(ids, mask), trie, 64, generator=torch.Generator().manual_seed(1))
    assert s.shape == (2, 64, 3) and index.contains(s.reshape(-1, 3).numpy()).all()
    again = grpo.sample(model, model.memory(ids, mask), trie, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s, again)
    every = torch.as_tensor(index.sids, dtype=torch.long)
    with torch.no_grad():
        lp = grpo.token_logp(model, ids[:1].expand(len(every), -1), mask[:1].expand(len(every), -1), None, every, trie)
    assert torch.allclose(lp.sum(1).exp().sum(), torch.tensor(1.0), atol=1e-5)  # over the valid SIDs only
    with pytest.raises(ValueError, match="n >= 1"):
        grpo.sample(model, model.memory(ids, mask), trie, 0)


def test_samples_follow_the_policy_and_a_split_batch_draws_the_same():
    """Inverse-CDF sampling: SID frequencies match the constrained policy's probabilities, and each
    query's samples depend on its own uniforms only (what data-parallel RL relies on)."""
    codes = np.array([[0, 1, 2], [0, 1, 0], [1, 0, 1], [2, 2, 2], [2, 0, 1]])
    index = SIDIndex.from_codes(codes, (3, 3, 3))
    model, trie = _tiny_model(index), compile_trie(index)
    ids, mask = torch.randint(4, 50, (4, 5), generator=torch.Generator().manual_seed(2)), torch.ones(4, 5, dtype=torch.bool)
    u = torch.rand(4, 20_000, 3, generator=torch.Generator().manual_seed(3))
    s = grpo.sample(model, model.memory(ids, mask), trie, 20_000, temperature=1.5, uniforms=u)
    every = torch.as_tensor(index.sids, dtype=torch.long)
    with torch.no_grad():
        p = grpo.token_logp(model, ids[:1].expand(len(every), -1), mask[:1].expand(len(every), -1), None, every, trie, 1.5).sum(1).exp()
    freq = (s[0][:, None, :] == every[None]).all(-1).float().mean(0)  # (SIDs,)
    assert torch.allclose(freq, p, atol=0.015), (freq, p)  # 20k draws: standard error <= 0.0036
    halves = [grpo.sample(model, model.memory(ids[r::2], mask[r::2]), trie, 50, uniforms=u[r::2, :50]) for r in (0, 1)]
    whole = grpo.sample(model, model.memory(ids, mask), trie, 50, uniforms=u[:, :50])
    assert torch.equal(whole[0::2], halves[0]) and torch.equal(whole[1::2], halves[1])
    with pytest.raises(ValueError, match="uniforms must have shape"):
        grpo.sample(model, model.memory(ids, mask), trie, 50, uniforms=u[:, :49])


def test_policy_at_the_optimum_is_not_pushed_away():
    """All mass on the best SID, which is also the reference: equal rewards, zero advantage, and a step
    with zero KL leaves every parameter where it was."""
    index = SIDIndex.from_codes(np.array([[0, 0, 0], [1, 1, 1]]), (2, 2, 2))
    model, trie = _tiny_model(index), compile_trie(index)
    with torch.no_grad():
        model.head.bias[[0, 2, 4]] = 30.0  # code 0 at every level: SID (0, 0, 0) with probability ~1
    ref = Generator(model.cfg).eval()
    ref.load_state_dict(model.state_dict())
    ids, mask = torch.randint(4, 50, (3, 4)), torch.ones(3, 4, dtype=torch.bool)
    s = grpo.sample(model, model.memory(ids, mask), trie, 6, generator=torch.Generator().manual_seed(0))
    assert (s == 0).all()
    members = torch.cat([s, torch.zeros(3, 1, 3, dtype=torch.long)], 1)  # + the reference (0, 0, 0)
    reward = (members == 0).all(-1).float()  # the optimum scores 1
    adv = grpo.advantages(reward)
    assert (adv == 0).all()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    flat, rep = members.reshape(-1, 3), lambda x: x.repeat_interleave(7, 0)
    with torch.no_grad():
        old = grpo.token_logp(model, rep(ids), rep(mask), None, flat, trie).reshape(3, 7, 3)
        ref_lp = grpo.token_logp(ref, rep(ids), rep(mask), None, flat, trie).reshape(3, 7, 3)
    logp = grpo.token_logp(model, rep(ids), rep(mask), None, flat, trie).reshape(3, 7, 3)
    is_ref = torch.zeros(3, 7, dtype=torch.bool)
    is_ref[:, -1] = True
    lo, _ = grpo.loss(logp, old=old, ref=ref_lp, adv=adv, is_ref=is_ref, present=torch.ones(3, 7, dtype=torch.bool),
                      cfg=LossConfig())
    opt.zero_grad()
    lo.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- ranker and rewards ---------------------------------------------------------------------------
def test_auc():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert np.isnan(auc([1, 1], [0.2, 0.3]))


def test_ranker_learns_clicks_and_purchases(rl_ws):
    ws, history = rl_ws
    last = history[-1]
    assert last["ctr_auc"] > 0.55 and last["cvr_auc"] > 0.5  # held-out queries; chance is 0.5
    model, feats, qvecs = load_ranker(ws, progress=False)
    assert qvecs.shape[0] == len(ws.table("queries"))
    got = ws.logbook().query("SELECT metric, value FROM evals WHERE method = 'ranker'")
    assert set(got["metric"]) == {"ctr_auc", "cvr_auc"}
    unknown = feats.users(["nobody"])
    assert unknown.item() == len(feats.user_index)  # a new user has a row of its own


def test_id_dropout_scores_never_shown_products_by_one_learned_cold_vector(rl_ws, tmp_path):
    from workbench.rl.config import RankerConfig
    from workbench.rl.ranker import fit, impressions, save
    from workbench.rl.ranker import load as load_file

    ws, _ = rl_ws
    _, feats, qvecs = load_ranker(ws, progress=False)
    cfg = RankerConfig(**feats.sizes(), embedder="hashing-64", epochs=1, id_dropout=0.3)
    model, _ = fit(ws, cfg, feats, qvecs, progress=False)
    data = impressions(ws, qvecs, feats)
    shown = set(data["product"][data["train"]].tolist())
    assert set(torch.nonzero(model.shown)[:, 0].tolist()) == shown and 0 < len(shown) < cfg.products
    cold = next(i for i in range(cfg.products) if i not in shown)
    hot = next(iter(shown))
    rows = feats.rows(torch.tensor([0, 0]), torch.as_tensor(qvecs[:1]).repeat(2, 1), torch.tensor([cold, hot]))
    before = model(rows)[0]
    with torch.no_grad():
        model.prod.weight[[cold, hot]] += 5.0  # the cold product's own row is never read; the shown one's is
    after = model(rows)[0]
    assert after[0] == before[0] and after[1] != before[1]
    save(tmp_path / "r.safetensors", model)  # the shown set travels with the weights
    assert torch.equal(load_file(tmp_path / "r.safetensors").shown, model.shown)
    with pytest.raises(ValueError, match="id_dropout must be in"):
        RankerConfig(**feats.sizes(), id_dropout=1.0)


def test_ranker_refuses_another_catalog_and_a_corrupt_file(rl_ws, tmp_path):
    from workbench.checkpoint import CheckpointError
    from workbench.rl.ranker import ranker_path

    ws, _ = rl_ws
    other = Workspace(tmp_path / "ws")
    shutil.copytree(ws.path, other.path)
    products = other.table("products")
    extra = products.iloc[:1].assign(product_id="P-new", title="a product added after the ranker")
    pd.concat([products, extra]).to_parquet(other.path / "tables" / "products.parquet")  # one more product
    with pytest.raises(CheckpointError, match="products changed since it was built"):
        load_ranker(other, progress=False)
    ranker_path(other).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_ranker(other, progress=False)
    ranker_path(other).unlink()
    with pytest.raises(FileNotFoundError, match="workbench ranker"):
        load_ranker(other, progress=False)


def _scored(pctr, pcvr, size, valid, buy, click):
    pctr, pcvr = torch.tensor(pctr), torch.tensor(pcvr)
    return rewards.Scored(pctr, pcvr, pctr > 0, torch.tensor(size), torch.tensor(valid), torch.tensor(buy),
                          torch.tensor(click), torch.zeros(len(size), len(size[0])), tau=0.2)


def test_reward_components_as_documented():
    cfg = RewardConfig(slots=2, cap=2)
    s = _scored([[[0.5, 0.3, 0.1], [0.25, 0.0, 0.0]]], [[[0.2, 0.5, 1.0], [1.0, 0.0, 0.0]]], [[3, 1]], [[True, True]],
                [[False, True]], [[True, True]])
    assert torch.allclose(rewards.click(s, cfg), torch.tensor([[0.4, 0.125]]))
    assert torch.allclose(rewards.purchase(s, cfg), torch.tensor([[(0.1 + 0.15) / 2, 0.125]]))
    assert torch.allclose(rewards.exposure(s, cfg), torch.tensor([[1.0, 0.5]]))  # pCTR >= 0.2: 2 of cap 2, then 1
    assert rewards.gt(s, cfg).tolist() == [[0.5, 1.0]]
    total, parts = rewards.total(s, cfg)
    expect = sum(getattr(cfg, k) * v for k, v in parts.items())
    assert torch.allclose(total, expect) and set(parts) == set(rewards.REWARDS)


# -- the loop ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_rl_step_changes_the_generator_and_logs_diagnostics(rl_ws):
    from workbench.rl.config import RLConfig
    from workbench.rl.train import train_rl

    ws, _ = rl_ws
    for algo in ("grpo", "eg-grpo"):
        cfg = RLConfig(algo=algo, steps=2, prompts=8, group=4, eval_every=100, lr=1e-3)
        history = train_rl(ws, cfg, device="cpu", progress=False)
        assert len(history) == 3 and "click_hit@10" in history[0] and "click_hit@10" in history[-1]
        assert ("reward_refs" in history[1]) == (algo == "eg-grpo")
        for key in ("reward_click", "reward_gt", "equal_groups", "sid_entropy_bits", "distinct_sids", "cluster_size",
                    "clickbait_clusters", "kl", "sample_click_hit"):
            assert np.isfinite(history[1][key]), key
    a, _, meta = store.load(ws, "generator-eg-grpo")
    b, _, _ = store.load(ws, "generator-stage3")
    assert meta["stage"] == "4-eg-grpo"
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    got = ws.logbook().query("SELECT DISTINCT stage FROM metrics WHERE stage LIKE '4-%' ORDER BY stage")
    assert got["stage"].tolist() == ["4-eg-grpo", "4-grpo"]


def test_rl_bad_inputs(rl_ws, monkeypatch):
    from workbench.rl.config import RLConfig
    from workbench.rl.train import train_rl

    with pytest.raises(ValueError, match="algo must be"):
        RLConfig(algo="ppo")
    with pytest.raises(ValueError, match=">= 1"):
        RLConfig(group=0)
    ws, _ = rl_ws
    with pytest.raises(FileNotFoundError, match="no generator 'nope-stage3'"):
        train_rl(ws, RLConfig(steps=1), name="nope", progress=False)
    monkeypatch.setattr("workbench.dist.world", lambda: 4)
    with pytest.raises(ValueError, match="2 prompts per step cannot be split over 4 processes"):
        train_rl(ws, RLConfig(steps=1, prompts=2), progress=False)


@pytest.mark.slow
def test_stage_4_through_workbench_train_and_cli_errors(rl_ws):
    from click.testing import CliRunner

    from workbench.cli import main

    ws, _ = rl_ws
    r = CliRunner().invoke(main, ["-w", str(ws.path), "train", "--stages", "4", "--algo", "grpo", "--rl-steps", "1",
                                  "--embedder", "hashing-64"])
    assert r.exit_code == 0, r.output
    _, _, meta = store.load(ws, "generator")
    assert meta["stage"] == "4-grpo" and "wrote generator-stage4 and deployed it as generator" in r.output
    deployed = store.checkpoint_path(ws, "generator").read_bytes()
    r = CliRunner().invoke(main, ["-w", str(ws.path), "train", "--stages", "4", "--algo", "grpo", "--rl-steps", "1",
                                  "--embedder", "hashing-64"])
    assert r.exit_code == 0 and "generator-stage4 is current: generator left as it is" in r.output, r.output
    assert store.checkpoint_path(ws, "generator").read_bytes() == deployed  # a finished stage 4 is not redeployed
    r = CliRunner().invoke(main, ["-w", str(ws.path), "rl", "--reward", "clicks=1"])
    assert r.exit_code != 0 and "unknown reward 'clicks'" in r.output
    r = CliRunner().invoke(main, ["-w", str(ws.path), "rl", "--reward", "click=lots"])
    assert r.exit_code != 0 and "name=number" in r.output


RL_ARGS = ["rl", "--algo", "eg-grpo", "--steps", "3", "--prompts", "7", "--group", "4", "--eval-every", "100", "--lr", "1e-3"]


@pytest.mark.slow
def test_torchrun_rl_two_processes_match_one(rl_ws, tmp_path):
    """EG-GRPO with 7 prompts per step (uneven: 4 + 3) on 2 gloo processes: the same samples, rewards,
    diagnostics and final weights as one process; rank 0 alone logs and writes."""
    import subprocess

    from safetensors.numpy import load_file

    from workbench import dist

    ws, _ = rl_ws
    for w in ("one", "two"):
        shutil.copytree(ws.path, tmp_path / w)
    one = subprocess.run(dist.command(1, ["-w", str(tmp_path / "one"), *RL_ARGS]), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(dist.command(2, ["-w", str(tmp_path / "two"), *RL_ARGS]), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    assert two.stdout.count("eg-grpo: wrote generator-eg-grpo") == 1

    a, b = (load_file(tmp_path / w / "gen" / "generator-eg-grpo.safetensors") for w in ("one", "two"))
    assert_same_training(a, b, lr=float(RL_ARGS[RL_ARGS.index("--lr") + 1]), steps=int(RL_ARGS[RL_ARGS.index("--steps") + 1]))
    base = load_file(ws.path / "gen" / "generator-stage3.safetensors")
    changed = any(not np.array_equal(a[k], base[k]) for k in base if k in a)
    assert changed  # the steps moved the policy, so matching means something

    q = ("SELECT r.config->>'$.processes' AS processes, m.name, m.step, m.value FROM metrics m JOIN runs r USING (run_id) "
         "WHERE r.kind = 'rl' AND r.config->>'$.out' = 'generator-eg-grpo' AND r.started_at = "
         "(SELECT max(started_at) FROM runs WHERE kind = 'rl') AND m.name IN "
         "('reward', 'reward_refs', 'distinct_sids', 'sid_entropy_bits', 'equal_groups', 'kl', 'loss', 'click_hit@10') "
         "ORDER BY m.name, m.step")
    ra, rb = (Workspace(tmp_path / w).logbook().query(q) for w in ("one", "two"))
    assert ra["processes"].eq("1").all() and rb["processes"].eq("2").all() and len(ra) == len(rb) > 20
    assert ra[["name", "step"]].equals(rb[["name", "step"]])
    assert np.allclose(ra["value"], rb["value"], rtol=1e-4, atol=1e-6), pd.concat([ra, rb["value"]], axis=1)


def test_reward_terms_are_the_reward_functions():
    assert tuple(rewards.REWARDS) == REWARD_TERMS  # RewardConfig weighs exactly the terms rewards.py computes


def test_a_damaged_ranker_is_trained_again_not_only_a_missing_one(rl_ws, tmp_path):
    """Stage 4's ranker is ensured with the pipeline's own test (`pipeline.check`): it must load and be
    current, so a damaged file is replaced before any reward is computed from it."""
    from tests.conftest import garbage
    from workbench.cli.rl import ensure_ranker
    from workbench.pipeline import check
    from workbench.rl.ranker import ranker_path

    shutil.copytree(rl_ws[0].path, tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    assert check(ws, "ranker") == ""
    garbage(ranker_path(ws))
    assert check(ws, "ranker").startswith("CheckpointError") and check(ws, "rl")
    ensure_ranker(ws, "hashing-64", "cpu")
    assert check(ws, "ranker") == ""
    ranker_path(ws).unlink()
    assert check(ws, "ranker").startswith("FileNotFoundError")
    with pytest.raises(ValueError, match="unknown step 'nope'"):
        check(ws, "nope")
