"""The rank loss over the beam (`workbench.gen.rank`, `workbench gen rank`)."""

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from workbench.cli import main
from workbench.gen.data import Pairs
from workbench.gen.rank import RankConfig, fit_rank, grouped, list_loss, lists


def test_list_loss_by_hand():
    scores = torch.tensor([[0.0, math.log(3.0), float("-inf")]])  # an empty third slot
    # softmax over the two present SIDs: 1/4 and 3/4; targets weighted 1 and 3
    got = list_loss(scores, torch.tensor([[1.0, 3.0, 0.0]]))
    assert got.item() == pytest.approx(-(1 * math.log(0.25) + 3 * math.log(0.75)) / 4)
    assert list_loss(scores, torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx(-math.log(0.75))
    two = torch.tensor([[0.0, 0.0], [5.0, 0.0]])  # the mean over queries
    assert list_loss(two, torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(
        (math.log(2) + math.log1p(math.exp(-5))) / 2)


def test_lists_hold_each_sid_once_targets_first_and_pad():
    beam = torch.tensor([[[1, 1], [2, 2], [3, 3]], [[4, 4], [0, 0], [0, 0]]])
    ok = torch.tensor([[True, True, True], [True, False, False]])
    targets = [(np.array([[2, 2], [9, 9]]), np.array([2.0, 1.0])), (np.array([[4, 4]]), np.array([1.0]))]
    sids, filled, w = lists(beam, ok, targets)
    assert sids[0].tolist() == [[2, 2], [9, 9], [1, 1], [3, 3]] and w[0].tolist() == [2.0, 1.0, 0.0, 0.0]
    assert filled[1].tolist() == [True, False, False, False] and w[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    neg = [np.array([[3, 3], [7, 7], [2, 2]]), np.array([[5, 5]])]  # a negative the beam has, or a target, counts once
    sids, filled, w = lists(beam, ok, targets, neg)
    assert sids[0].tolist() == [[2, 2], [9, 9], [1, 1], [3, 3], [7, 7]] and w[0].tolist() == [2.0, 1.0, 0.0, 0.0, 0.0]
    assert sids[1, :2].tolist() == [[4, 4], [5, 5]] and filled[1].tolist() == [True, True, False, False, False]


def test_grouped_sums_repeats_and_keeps_the_heaviest():
    p = Pairs(["a", "a", "a", "b"], np.array([[1, 1], [2, 2], [1, 1], [3, 3]]), np.array([1.0, 1.5, 1.0, 1.0]))
    texts, targets = grouped(p, max_targets=1)
    assert texts == ["a", "b"] and targets[0][0].tolist() == [[1, 1]] and targets[0][1].tolist() == [2.0]
    for bad in [dict(width=0), dict(lr=float("nan")), dict(max_targets=0)]:
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            RankConfig(**bad)
    with pytest.raises(ValueError, match="negatives must be >= 0"):
        RankConfig(negatives=-1)
    with pytest.raises(ValueError, match="no training queries with target SIDs"):
        fit_rank(None, None, Pairs([], np.zeros((0, 2), int), np.zeros(0)), None, RankConfig())
    with pytest.raises(ValueError, match="search log has none on training queries"):  # an empty log, negatives asked for
        fit_rank(None, None, p, None, RankConfig(negatives=2), negatives={})


def test_shown_not_bought_holds_training_queries_and_products_never_bought_there(trained):
    from workbench.data import splits
    from workbench.gen.data import shown_not_bought, sid_matrix
    from workbench.sid.store import load_sids

    ws, _ = trained
    got = shown_not_bought(ws)
    q = ws.table("queries")
    held = set(q.loc[splits.mask(ws, q["query_id"], "validation", "test"), "query"])
    assert got and not set(got) & held
    log = ws.table("search_log").merge(q, on="query_id")
    sids = load_sids(ws)
    sid_of = dict(zip(sids["product_id"], map(tuple, sid_matrix(sids).tolist())))
    text, codes = next(iter(got.items()))
    mine = log[(log["query"] == text) & log["impressed"]]
    never = {sid_of[p] for p, g in mine.groupby("product_id") if not g["purchased"].any() and p in sid_of}
    assert {tuple(c) for c in codes.tolist()} == never and len(codes) == len(never)  # each SID once


@pytest.mark.slow
def test_gen_rank_trains_a_new_checkpoint_and_never_overwrites(trained_copy):
    ws = trained_copy
    r = CliRunner().invoke(main, ["-w", str(ws.path), "gen", "rank", "--name", "generator-stage2", "--width", "4",
                                  "--batch-size", "16", "--lr", "1e-3", "--negatives", "4"])
    assert r.exit_code == 0, r.output
    assert (ws.path / "gen" / "generator-stage2-rank.safetensors").exists() and "beam_recall" in r.output
    from workbench.gen import store

    before, after = store.load(ws, "generator-stage2")[0].state_dict(), store.load(ws, "generator-stage2-rank")[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    got = ws.logbook().query("SELECT m.name FROM metrics m JOIN runs r USING (run_id) WHERE r.kind = 'gen-rank'")
    assert {"loss", "beam_recall", "queries_per_s"} <= set(got["name"])
    for out in ("generator", "generator-stage2"):
        r = CliRunner().invoke(main, ["-w", str(ws.path), "gen", "rank", "--name", "generator-stage2", "--out", out])
        assert r.exit_code != 0 and "would overwrite" in r.output
