"""Iterative magnitude pruning with rewinding (issue 28 item 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape import pipeline, results
from landscape.cli.submit import expand_grid
from landscape.identity import identify
from landscape.pruning import select_masks
from landscape.pruning.iterative import cumulative_rate, next_masks, random_masks_like
from landscape.stages import masked_training
from landscape.storage import load_checkpoint


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(6, 4, generator=g), "b.weight": torch.randn(30, generator=g)}


def test_round_one_is_one_shot_magnitude_pruning_and_pruned_weights_stay_pruned():
    w = _weights()
    for scope in ("global", "layerwise"):
        one = next_masks(w, None, 0.3, 1, scope)
        ref = select_masks({k: v.abs() for k, v in w.items()}, 0.3, scope)
        assert all(torch.equal(one[k], ref[k]) for k in w)
    m1 = next_masks(w, None, 0.3, 1)
    trained = {k: v + 0.5 * torch.randn_like(v) for k, v in w.items()}  # weights move
    trained = {k: v * m1[k] for k, v in trained.items()}
    m2 = next_masks(trained, m1, 0.3, 2)
    n = sum(v.numel() for v in w.values())
    assert sum(int(m.sum()) for m in m2.values()) == n - round(cumulative_rate(0.3, 2) * n)
    assert all(not (m2[k] & ~m1[k]).any() for k in w)  # nothing comes back
    # round 2 removes the survivors of smallest trained magnitude: none it removed is larger
    removed = torch.cat([trained[k].abs()[m1[k] & ~m2[k]] for k in w])
    kept = torch.cat([trained[k].abs()[m2[k]] for k in w])
    assert removed.numel() == int(sum(m1[k].sum() - m2[k].sum() for k in w)) > 0
    assert removed.max() <= kept.min()


@pytest.mark.parametrize("p, r", [(0.2, 1), (0.2, 3), (0.5, 4), (0.0, 2)])
def test_cumulative_rate_is_one_minus_the_surviving_fraction(p, r):
    assert cumulative_rate(p, r) == pytest.approx(1 - (1 - p) ** r)


def test_random_masks_keep_the_per_layer_counts_at_other_positions():
    m = next_masks(_weights(), None, 0.5, 1)
    rnd = random_masks_like(m, seed=3)
    assert {k: int(v.sum()) for k, v in rnd.items()} == {k: int(v.sum()) for k, v in m.items()}
    assert any(not torch.equal(rnd[k], m[k]) for k in m)
    assert all(torch.equal(rnd[k], v) for k, v in random_masks_like(m, seed=3).items())


def _cfg(root, *extra):
    [cfg] = expand_grid(["model=small_cnn", "model.width=0.5", "data=digits", "train.epochs=2",
                         "data.train_subset=96", "data.test_subset=40", "device=cpu",
                         "num_threads=1", "progress=false", f"results_root={root}", *extra])
    return cfg


def test_imp_in_the_pipeline_rounds_controls_and_the_one_shot_mask(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "imp.enabled=true", "imp.rounds=2", "imp.rate=0.5",
               "imp.controls=[random_mask,random_reinit]", "prune.enabled=true",
               "prune.rates=[0.5]")
    starts = {}  # each unit's network as its training starts, by its work folder r<r>_<branch>
    train_model = masked_training.train_model

    def recording(model, *args, **kwargs):
        starts[kwargs["checkpoint_dir"].name] = {k: v.clone()
                                                 for k, v in model.state_dict().items()}
        return train_model(model, *args, **kwargs)

    monkeypatch.setattr(masked_training, "train_model", recording)
    pipeline.run(cfg)
    df = results.load(tmp_path)
    imp = df[df["stage"] == "imp"]
    assert set(zip(imp["criterion"], imp["index"])) == {
        (f"imp:{b}", r) for b in ("magnitude", "random_mask", "random_reinit") for r in (1, 2)}
    sp = imp[imp["metric"] == "sparsity"].set_index(["criterion", "index"])["value"]
    assert sp[("imp:magnitude", 1)] == pytest.approx(0.5, abs=1e-3)
    assert sp[("imp:magnitude", 2)] == pytest.approx(0.75, abs=1e-3)
    assert sp[("imp:random_mask", 2)] == pytest.approx(sp[("imp:magnitude", 2)], abs=1e-12)
    assert imp.loc[imp["metric"] == "test_acc", "value"].between(0, 1).all()

    ident = identify(cfg)
    paths = results.run_paths(tmp_path, ident.cell_name, 0)
    r1 = load_checkpoint(paths.checkpoints / "imp" / "round_1.pt")
    one_shot = results.read_arrays(paths.run_dir, next(
        u for u in df["unit"].dropna().unique() if str(u).startswith("prune_")))
    assert set(one_shot) == set(r1["masks"])
    assert all(np.array_equal(one_shot[k], r1["masks"][k].numpy()) for k in one_shot)
    from analysis.geometry_tables import imp_table
    from analysis.stats import with_cell

    t = imp_table(with_cell(df))
    assert list(t.cells.columns) == ["Receptive field", "Branch", "round 1 (50% pruned)",
                                     "round 2 (75% pruned)"]
    assert list(t.cells["Branch"]) == ["magnitude", "random mask", "random reinit"]
    acc = imp[(imp["metric"] == "test_acc") & (imp["criterion"] == "imp:magnitude")]
    assert t.numbers.query("branch == 'imp:magnitude' and round == 2")[
        "test_acc_mean"].item() == pytest.approx(acc.loc[acc["index"] == 2, "value"].item())
    r2 = load_checkpoint(paths.checkpoints / "imp" / "round_2.pt")
    for k, m in r2["masks"].items():  # the mask is kept exactly through training
        assert torch.count_nonzero(r2["model"][k][~m]) == 0
        assert not (m & ~r1["masks"][k]).any()

    # Rewinding: each round's line and its random mask start from init.pt, their survivors
    # only; the random reinit starts from the line's mask on other weights.
    init = load_checkpoint(paths.checkpoints / "init.pt")["model"]
    assert sorted(starts) == [f"r{r}_{b}" for r in (1, 2)
                              for b in ("magnitude", "random_mask", "random_reinit")]
    for r, masks in ((1, r1["masks"]), (2, r2["masks"])):
        line, rnd, fresh = (starts[f"r{r}_{b}"] for b in
                            ("magnitude", "random_mask", "random_reinit"))
        for k, v in init.items():
            if k not in masks:  # biases, BN: the rewind point's, or a fresh init's
                assert torch.equal(line[k], v) and torch.equal(rnd[k], v)
                continue
            m = masks[k]
            assert torch.equal(line[k], v * m)
            kept = rnd[k] != 0
            assert torch.equal(rnd[k], v * kept) and int(kept.sum()) == int(m.sum())
            assert torch.equal(fresh[k] != 0, m) and not torch.equal(fresh[k], v * m)
        assert any(not torch.equal(rnd[k] != 0, m) for k, m in masks.items())


def test_bad_imp_settings_and_a_rewind_epoch_that_was_not_saved(tmp_path):
    for arg, msg in (("imp.rounds=0", "imp.rounds must be an integer >= 1"),
                     ("imp.rate=1.5", "imp.rate"),
                     ("imp.rewind=epoch_x", "imp.rewind must be init or epoch_<n>"),
                     ("imp.controls=[shuffle]", "imp.controls must be a subset of")):
        with pytest.raises(ValueError, match=msg):
            pipeline.validate(_cfg(tmp_path, "imp.enabled=true", arg))
    cfg = _cfg(tmp_path, "imp.enabled=true", "imp.rounds=1", "imp.rewind=epoch_1")
    with pytest.raises(ValueError, match=r"imp.rewind asks for epoch_1, which "
                                         r"train.save_epochs=\[\] does not save .* add 1 to "
                                         r"train.save_epochs"):
        pipeline.validate(cfg)  # before anything is trained
    pipeline.run(_cfg(tmp_path))  # trained without saved epochs: saving one now is too late
    with pytest.raises(Exception, match=r"imp.rewind=epoch_1: .*epoch_1.pt does not exist; "
                                        r"training keeps that epoch's weights when "
                                        r"train.save_epochs lists it"):
        pipeline.run(_cfg(tmp_path, "imp.enabled=true", "imp.rounds=1", "imp.rewind=epoch_1",
                          "train.save_epochs=[1]"))
