"""The second-order (OBD, GraSP) and data-free (SynFlow) pruning criteria against float64
oracles: the exact Hessian of a tiny net, SynFlow's closed form on a linear chain and its
conservation theorem."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, hessian

from landscape.pruning import compute_scores, prunable_parameters, prune, select_masks
from landscape.pruning.synaptic_flow import flow_network


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)).double()
    with torch.no_grad():  # BN statistics away from the identity, as after training
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5)
    return net.train()  # the criteria evaluate in eval mode and leave the mode as found


def _data(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 2, 5, 5, generator=g, dtype=torch.float64),
             torch.randint(0, 4, (n,), generator=g)) for n in (5, 3)]  # uneven batches


def _logits_of_weights(net: nn.Module, x: torch.Tensor, train: bool = False):
    """(names, theta, f): the prunable weights of a copy of ``net`` flattened, and f(flat) =
    its logits for ``x`` with them (BN on the running statistics, or ``train``: on the
    batch's): the float64 oracle's function of the weights (torch.func)."""
    names = list(prunable_parameters(net))
    ref = copy.deepcopy(net).train(train)
    for m in ref.modules():  # batch statistics without updating buffers under torch.func
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = not train
    fixed = {k: v for k, v in ref.state_dict().items() if k not in names}
    shapes = [ref.state_dict()[n].shape for n in names]

    def logits(flat):
        state, at = dict(fixed), 0
        for n, s in zip(names, shapes):
            state[n] = flat[at:at + s.numel()].view(s)
            at += s.numel()
        return functional_call(ref, state, (x,))

    return names, torch.cat([ref.state_dict()[n].reshape(-1) for n in names]), logits


def _exact(net: nn.Module, data, temperature: float = 1.0, train: bool = False):
    """(names, theta, g, H) over the prunable weights of the mean loss over every example:
    the oracle (a dense float64 Hessian by torch.func)."""
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    names, theta, logits = _logits_of_weights(net, x, train)

    def loss(flat):
        return nn.functional.cross_entropy(logits(flat) / temperature, y)

    return names, theta, grad(loss)(theta), hessian(loss)(theta)


def _flat(scores, names):
    return torch.cat([scores[n].reshape(-1) for n in names])


def _untouched(net: nn.Module, before: dict) -> None:
    assert net.training and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def _per_class_gradients(net: nn.Module, data):
    """(names, theta, G, p): G[n, c] = d CE(f(x_n), c) / d theta for every example n and class
    c, in float64 by a dense Jacobian (the oracle); p the predicted probabilities."""
    names, theta, logits = _logits_of_weights(net, torch.cat([b[0] for b in data]))
    J = torch.func.jacrev(logits)(theta)  # [N, C, P]
    p = torch.softmax(logits(theta), dim=1)
    eye = torch.eye(p.shape[1], dtype=p.dtype)
    G = torch.einsum("nck,nkp->ncp", p[:, None, :] - eye[None], J)  # (p - e_c)^T J
    return names, theta, G, p


def test_obd_is_half_the_exact_fisher_diagonal_times_the_squared_weight():
    net, data = _tiny(), _data()
    before = copy.deepcopy(net.state_dict())
    names, theta, G, p = _per_class_gradients(net, data)
    fisher = torch.einsum("nc,ncp->p", p, G ** 2) / len(p)
    params = prunable_parameters(net)
    got = compute_scores("obd", params, model=net, data=data, chunk=3)
    torch.testing.assert_close(_flat(got, names), fisher * theta ** 2 / 2, rtol=1e-9, atol=1e-16)
    _untouched(net, before)
    assert (fisher >= 0).all()  # the positive semi-definite part of the Hessian
    # Monte Carlo: k classes drawn from p per example, unbiased (within 5 standard errors)
    k = 400
    mc = _flat(compute_scores("obd", params, model=net, data=data, labels=k, seed=1), names)
    v = G ** 2  # [N, C, P]
    var = (torch.einsum("nc,ncp->np", p, v ** 2) - torch.einsum("nc,ncp->np", p, v) ** 2)
    stderr = var.sum(0).sqrt() / (k ** 0.5 * len(p)) * theta ** 2 / 2
    assert ((mc - fisher * theta ** 2 / 2).abs() <= 5 * stderr + 1e-15).all()
    with pytest.raises(ValueError, match="needs data"):
        compute_scores("obd", params, model=net)
    with pytest.raises(ValueError, match="'labels'.*>= 0"):
        compute_scores("obd", params, model=net, data=data, labels=-1)


def test_grasp_is_weight_times_hessian_gradient_product_at_the_temperature():
    net, data = _tiny(seed=2), _data(seed=4)
    before = copy.deepcopy(net.state_dict())
    params = prunable_parameters(net)
    for t in (1.0, 200.0):
        names, theta, g, H = _exact(net, data, temperature=t)
        got = compute_scores("grasp", params, model=net, data=data, temperature=t,
                             bn_mode="eval")
        torch.testing.assert_close(_flat(got, names), theta * (H @ g), rtol=1e-8, atol=1e-18)
    # the reference code's BatchNorm: the batch's statistics (the default)
    names, theta, g, H = _exact(net, data[:1], temperature=200.0, train=True)
    got = compute_scores("grasp", params, model=net, data=data[:1])
    torch.testing.assert_close(_flat(got, names), theta * (H @ g), rtol=1e-8, atol=1e-18)
    _untouched(net, before)
    # GraSP removes the largest -w Hg first: those are the lowest importances here
    masks = select_masks(got, 0.5)
    removed = torch.cat([-got[n][~m] for n, m in masks.items()])
    kept = torch.cat([-got[n][m] for n, m in masks.items()])
    assert removed.min() >= kept.max()
    with pytest.raises(ValueError, match="temperature"):
        compute_scores("grasp", params, model=net, data=data, temperature=0.0)
    with pytest.raises(ValueError, match="needs data"):
        compute_scores("grasp", params, model=net, data=[])
    with pytest.raises(ValueError, match="'bn_mode'.*'train', 'eval'"):
        compute_scores("grasp", params, model=net, data=data, bn_mode="recalibrated")


def test_grasp_with_the_reference_linear_reinitialisation_scores_a_copy():
    net, data = _tiny(seed=2), _data(seed=4)
    before = copy.deepcopy(net.state_dict())
    params = prunable_parameters(net)
    got = compute_scores("grasp", params, model=net, data=data, bn_mode="eval",
                         reinit_linear=True, seed=3)
    _untouched(net, before)  # the network pruned keeps its weights
    ref = copy.deepcopy(net)  # the oracle: the Linear weight drawn by hand, then exact w * Hg
    with torch.no_grad():
        ref[5].weight.copy_(nn.init.xavier_normal_(torch.empty(4, 3, dtype=torch.float64),
                                                   generator=torch.Generator().manual_seed(3)))
    names, theta, g, H = _exact(ref, data, temperature=200.0)
    torch.testing.assert_close(_flat(got, names), theta * (H @ g), rtol=1e-8, atol=1e-18)
    plain = compute_scores("grasp", params, model=net, data=data, bn_mode="eval")
    assert not torch.equal(got["0.weight"], plain["0.weight"])  # the conv's Hg changed too
    assert torch.equal(got["5.weight"], compute_scores(
        "grasp", params, model=net, data=data, bn_mode="eval", reinit_linear=True,
        seed=3)["5.weight"])
    with pytest.raises(TypeError, match="'reinit_linear' .* takes a bool"):
        compute_scores("grasp", params, model=net, data=data, reinit_linear=1)
    with pytest.raises(ValueError, match="'seed' of pruning criterion 'grasp'.*>= 0"):
        compute_scores("grasp", params, model=net, data=data, seed=-1)


def test_synflow_one_shot_has_the_closed_form_of_a_linear_chain():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    w1, w2 = net[0].weight.detach().double().abs(), net[2].weight.detach().double().abs()
    data = [(torch.randn(6, 4), torch.zeros(6, dtype=torch.long))]  # only the shape is read
    params = prunable_parameters(net)
    got = compute_scores("synflow", params, model=net, data=data, rate=0.5, iterations=1)
    # R = 1^T |W2| |W1| 1: dR/d|W1|_ij = (1^T |W2|)_i, dR/d|W2|_ki = (|W1| 1)_i
    torch.testing.assert_close(got["0.weight"], w1 * w2.sum(0)[:, None])
    torch.testing.assert_close(got["2.weight"], w2 * w1.sum(1)[None, :])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synflow_scores_of_every_layer_sum_to_the_flow(seed):
    """Tanaka et al.'s Theorem 1: in a network of positively homogeneous ops, each layer's
    synaptic saliencies sum to R."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 5, 3, padding=1, bias=False), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(5 * 2 * 2, 6, bias=False),
                        nn.ReLU(), nn.Linear(6, 3, bias=False))
    data = [(torch.randn(2, 3, 10, 10), torch.zeros(2, dtype=torch.long))]
    params = prunable_parameters(net)
    scores = compute_scores("synflow", params, model=net, data=data, rate=0.3, iterations=1)
    flow = flow_network(net)(torch.ones(1, 3, 10, 10, dtype=torch.float64)).sum()
    for s in scores.values():
        torch.testing.assert_close(s.sum(), flow, rtol=1e-10, atol=0)


def test_iterative_synflow_prunes_exactly_keeps_the_model_and_avoids_layer_collapse():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                        nn.Linear(16, 4))
    with torch.no_grad():
        net[2].weight.mul_(0.01)  # a layer of small weights: magnitude pruning cuts it off
    net.train()
    data = [(torch.randn(3, 16), torch.zeros(3, dtype=torch.long))]
    params = prunable_parameters(net)
    n = sum(p.numel() for p in params.values())
    before = copy.deepcopy(net.state_dict())
    scores = compute_scores("synflow", params, model=net, data=data, rate=0.6, iterations=20)
    _untouched(net, before)
    masks = select_masks(scores, 0.6)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * n)
    # the weights pruned before the last step score -1, below every live score (>= 0)
    earlier = sum(int((s == -1).sum()) for s in scores.values())
    assert 0 < earlier < round(0.6 * n)
    assert all(bool(m[s == -1].any()) is False for s, m in zip(scores.values(), masks.values()))
    assert not any(bool((~m).all()) for m in select_masks(scores, 0.6).values())
    magnitude = select_masks({k: v.detach().abs() for k, v in params.items()}, 0.6)
    assert not magnitude["2.weight"].any()  # layer collapse by magnitude
    # prune() hands the criterion its rate and scope
    pruned = copy.deepcopy(net)
    got = prune(pruned, 0.6, "synflow", scope="layerwise", data=data, iterations=5)
    for name, m in got.items():
        assert int((~m).sum()) == round(0.6 * m.numel())
    with pytest.raises(ValueError, match="pass rate="):
        compute_scores("synflow", params, model=net, data=data)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['scale'\]; its options are: "
                       "iterations$"):  # rate and scope come from the call, not the options
        compute_scores("synflow", params, model=net, data=data, rate=0.5, scale=1)
    with pytest.raises(ValueError, match="'iterations'.*>= 1"):
        compute_scores("synflow", params, model=net, data=data, rate=0.5, iterations=0)


# ----------------------------------------------------------------------------- the prune stage

def test_the_new_criteria_in_the_prune_stage_and_magnitude_gradient_over_data_batches(tmp_path):
    import json

    from landscape import pipeline, results
    from landscape.results import DONE, stage_dir
    from landscape.stages.prune import PruneConfig
    from tests.test_pipeline import tiny_cfg

    for criterion, options in (("obd", {"labels": 2}), ("grasp", {}),
                               ("synflow", {"iterations": 10})):
        pipeline.run(tiny_cfg(tmp_path, prune=PruneConfig(
            enabled=True, criterion=criterion, rates=[0.8], options=options)))
    df = results.load(tmp_path)
    sparsity = df[(df.stage == "prune") & (df.metric == "sparsity")].set_index("criterion")
    assert sorted(sparsity.index) == ["grasp", "obd", "synflow"]
    assert sparsity["value"].nunique() == 1  # exactly round(0.8 N) of the same N each
    assert "options={\"labels\":2}; data_batches=1" in sparsity.loc["obd", "note"]
    # magnitude_gradient reads every one of prune.data_batches (the first alone before): a
    # unit recorded without that marker is recomputed
    cfg = tiny_cfg(tmp_path, prune=PruneConfig(enabled=True, criterion="magnitude_gradient",
                                               rates=[0.5], data_batches=2))
    first = pipeline.run(cfg)
    unit = next(u for u in first.ran if u.startswith("prune_"))
    marker = stage_dir(first.run_dir, unit) / DONE
    done = json.loads(marker.read_text())
    assert done["settings"]["magnitude_gradient_batches"] == 2
    del done["settings"]["magnitude_gradient_batches"]
    marker.write_text(json.dumps(done))
    assert pipeline.run(cfg).ran == [unit]
    with pytest.raises(ValueError, match="prune.options.batches=3 reads more batches than the "
                                         "prune.data_batches=2"):
        pipeline.run(tiny_cfg(tmp_path, prune=PruneConfig(
            enabled=True, criterion="magnitude_gradient", data_batches=2,
            options={"batches": 3})))


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=1, max_size=6), k=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_balanced_indices_take_k_distinct_images_of_every_class(counts, k, seed):
    from landscape.stages.criterion_data import balanced_indices

    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))
    if min(counts) < k:
        short = int(np.argmin(counts))
        with pytest.raises(ValueError, match=rf"prune.data_per_class={k}, but class {short} "
                                             rf"has {counts[short]} training images"):
            balanced_indices(labels, k, seed)
        return
    idx = balanced_indices(labels, k, seed)
    assert len(set(idx.tolist())) == len(idx) == k * len(counts)
    assert np.bincount(labels[idx], minlength=len(counts)).tolist() == [k] * len(counts)
    assert np.array_equal(idx, balanced_indices(labels, k, seed))  # the seed decides


def test_split_labels_without_reading_images_through_subsets():
    from torch.utils.data import Subset

    from landscape.data.datasets import TensorImageDataset
    from landscape.stages.criterion_data import split_labels

    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    ds = TensorImageDataset(torch.zeros(8, 1, 2, 2), labels)
    assert split_labels(Subset(Subset(ds, [7, 5, 3, 1]), [0, 2])).tolist() == [6, 1]

    class Plain(torch.utils.data.Dataset):  # keeps no labels: read item by item
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(1), 2 - i

    assert split_labels(Plain()).tolist() == [2, 1, 0]


def test_data_per_class_gives_the_criterion_k_images_of_every_class(tmp_path, monkeypatch):
    from landscape import pipeline, results
    from landscape.stages import prune as prune_stage
    from landscape.stages.criterion_data import FirstBatchOnRead
    from landscape.stages.prune import PruneConfig, PruneStage, _prune_key, prune_note
    from tests.test_pipeline import tiny_cfg

    assert "data_per_class" not in _prune_key(PruneConfig())  # older units keep their names
    seen = []
    real = prune_stage.prune

    def recording(model, rate, criterion, scope, *, data=None, **kw):
        seen.append(data)
        return real(model, rate, criterion, scope, data=data, **kw)

    monkeypatch.setattr(prune_stage, "prune", recording)
    balanced = tiny_cfg(tmp_path, prune=PruneConfig(enabled=True, criterion="grasp",
                                                    rates=[0.8], data_per_class=3))
    default = tiny_cfg(tmp_path, prune=PruneConfig(enabled=True, criterion="grasp",
                                                   rates=[0.8]))
    pipeline.run(balanced)
    pipeline.run(default)
    [given, first] = seen
    y = torch.cat([b[1] for b in given])
    assert torch.bincount(y).tolist() == [3] * 10 and [len(b[1]) for b in given] == [30]
    assert [len(b[1]) for b in first] == [32]  # data_batches=1: the first training batch
    df = results.load(tmp_path)
    notes = df[(df.stage == "prune") & (df.metric == "sparsity")]["note"].tolist()
    assert any(n.endswith("data_per_class=3") for n in notes)
    assert any(n.endswith("data_batches=1") for n in notes) and len(set(
        df.loc[df.stage == "prune", "unit"])) == 2
    with pytest.raises(ValueError, match=r"prune.data_per_class must be an integer >= 1 or "
                                         r"null, got 0"):
        pipeline.run(tiny_cfg(tmp_path, prune=PruneConfig(enabled=True, criterion="grasp",
                                                          data_per_class=0)))
    # magnitude reads no images: a sweep of criteria may set the data settings for the others;
    # they neither rename its unit nor enter its note, and no batch is built for it
    swept = PruneConfig(enabled=True, criterion="magnitude", rates=[0.8], data_per_class=2,
                        data_batches=3)
    assert (PruneStage().units(swept)
            == PruneStage().units(PruneConfig(enabled=True, criterion="magnitude", rates=[0.8])))
    pipeline.run(tiny_cfg(tmp_path, prune=swept))
    assert isinstance(seen[-1], FirstBatchOnRead) and not seen[-1].built
    note = results.load(tmp_path).query("stage == 'prune' and criterion == 'magnitude'")["note"]
    assert set(note) == {prune_note(PruneConfig())} and "data_" not in note.iloc[0]


def test_data_free_declaration_names_and_notes_and_registration():
    from landscape.pruning import reads_data, register_criterion
    from landscape.pruning.criteria import CRITERIA, DATA_FREE, VALUE_CHECKS
    from landscape.stages.criterion_data import NAMED_DATA_FREE
    from landscape.stages.prune import PruneConfig, _prune_key, prune_note, unit_suffix

    assert {c: reads_data(c) for c in ("magnitude", "random", "synflow", "magnitude_gradient",
                                       "obd", "grasp")} == {
        "magnitude": False, "random": False, "synflow": False, "magnitude_gradient": True,
        "obd": True, "grasp": True}
    with pytest.raises(KeyError, match="unknown pruning criterion 'nope'; valid names"):
        reads_data("nope")
    # the default's key is the one units were named by before the declaration existed
    assert _prune_key(PruneConfig())["data_batches"] == 1
    for criterion, renamed in (("magnitude", False), ("synflow", False), ("grasp", True),
                               ("obd", True)):
        base, more = (PruneConfig(criterion=criterion, data_batches=b) for b in (1, 4))
        assert (unit_suffix(base, 0.5) != unit_suffix(more, 0.5)) is renamed, criterion
        assert ("data_batches=4" in prune_note(more)) is renamed, criterion
    assert "data_batches" not in prune_note(PruneConfig(criterion="x", structured=True))
    assert (unit_suffix(PruneConfig(data_augment=True, data_per_class=3), 0.5)
            == unit_suffix(PruneConfig(), 0.5))  # magnitude: every data setting

    def mine(params, *, model, data):
        return {n: p.detach().abs() for n, p in params.items()}

    assert not any(reads_data(c) for c in NAMED_DATA_FREE)
    try:
        register_criterion("test_free", data_free=True)(mine)
        assert not reads_data("test_free")
        # its notes leave the data out; its names keep them (named without the registry)
        mine_4 = PruneConfig(criterion="test_free", data_batches=4)
        assert "data_batches" not in prune_note(mine_4)
        assert unit_suffix(mine_4, 0.5) != unit_suffix(PruneConfig(criterion="test_free"), 0.5)
        with pytest.raises(ValueError, match="already registered"):
            register_criterion("test_free", check=lambda o: None)(lambda *a, **k: {})
        assert "test_free" not in VALUE_CHECKS and "test_free" in DATA_FREE  # nothing recorded
    finally:
        CRITERIA._items.pop("test_free", None)
        DATA_FREE.discard("test_free")


def test_pruning_at_init_retrained_with_the_runs_own_recipe(tmp_path):
    from landscape import pipeline, results
    from landscape.stages.finetune import FinetuneStage
    from landscape.stages.prune import FINETUNE_FIELDS, PruneConfig, settings_hash
    from tests.test_pipeline import tiny_cfg

    base = dict(enabled=True, criterion="grasp", checkpoint="init", rates=[0.8], finetune=True,
                finetune_epochs=1, finetune_lr=0.01)
    finetuned = PruneConfig(**base)
    retrained = PruneConfig(**base, finetune_recipe="train")
    # the default recipe keeps the unit names made before the recipe existed
    (old,) = FinetuneStage().units(finetuned)
    assert old.name.endswith(settings_hash({k: getattr(finetuned, k) for k in FINETUNE_FIELDS}))
    (new,) = FinetuneStage().units(retrained)
    assert new.name != old.name and new.params["prune_unit"] == old.params["prune_unit"]
    other_lr = PruneConfig(**{**base, "finetune_lr": 0.5}, finetune_recipe="train")
    assert FinetuneStage().units(other_lr)[0].name == new.name  # finetune_* unused: one unit
    for cfg in (finetuned, retrained):
        pipeline.run(tiny_cfg(tmp_path, prune=cfg))  # train.epochs=2
    df = results.load(tmp_path)
    ft = df[df.stage == "finetune"]
    by_unit = {u: g for u, g in ft.groupby("unit")}
    per_epoch = by_unit[new.name].query("metric == 'test_acc'")["index"].dropna()
    assert sorted(per_epoch) == [1, 2]  # the run's two epochs, not finetune_epochs=1
    assert sorted(by_unit[old.name].query("metric == 'test_acc'")["index"].dropna()) == [1]
    note = by_unit[new.name]["note"].iloc[0]
    assert note.endswith("finetune_recipe=train; epochs=2") and "finetune_lr" not in note
    # the mask kept exactly: every weight but the pruned ones is nonzero after training
    from landscape.identity import identify
    from landscape.pruning import prunable_parameters
    model = identify(tiny_cfg(tmp_path)).build_model()
    n = sum(p.numel() for p in prunable_parameters(model).values())
    total = sum(p.numel() for p in model.parameters())
    nonzero = df[df.metric == "nonzero_params"].set_index("unit")["value"]
    assert nonzero[new.name] == nonzero[old.name] == total - round(0.8 * n)
    from analysis.stats import pruning_procedures
    procs = pruning_procedures(df)
    assert procs["finetune_settings"].dropna().nunique() == 2  # told apart, never pooled
    with pytest.raises(ValueError, match="prune.finetune_recipe must be one of"):
        pipeline.run(tiny_cfg(tmp_path, prune=PruneConfig(**base, finetune_recipe="retrain")))


def test_option_values_are_refused_before_any_work(tmp_path):
    from landscape import pipeline
    from landscape.pruning import check_options
    from landscape.stages.prune import PruneConfig
    from tests.test_pipeline import tiny_cfg

    for name, options, message in (
            ("obd", {"labels": -1}, "'labels' of pruning criterion 'obd' must be an integer >= 0"),
            ("obd", {"chunk": 0}, "'chunk' of pruning criterion 'obd' must be an integer >= 1"),
            ("grasp", {"temperature": -2.0}, "'temperature' .* must be > 0"),
            ("grasp", {"bn_mode": "recalibrated"}, "'bn_mode' .* one of"),
            ("synflow", {"iterations": 0}, "'iterations' .* integer >= 1"),
            ("magnitude_gradient", {"batches": 0}, "'batches' .* integer >= 1")):
        with pytest.raises(ValueError, match=message):
            check_options(name, options)
    with pytest.raises(ValueError, match="prune.options: option 'labels'"):
        pipeline.run(tiny_cfg(tmp_path, prune=PruneConfig(enabled=True, criterion="obd",
                                                          options={"labels": -1})))
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_data_augment_gives_the_criterion_one_seeded_draw_of_the_training_augmentation(
        tmp_path, monkeypatch):
    from landscape import pipeline, results
    from landscape.stages import prune as prune_stage
    from landscape.stages.prune import PruneConfig, PruneStage, _prune_key
    from tests.test_pipeline import tiny_cfg

    assert "data_augment" not in _prune_key(PruneConfig())  # older units keep their names
    seen = []
    real = prune_stage.prune

    def recording(model, rate, criterion, scope, *, data=None, **kw):
        seen.append([(x.clone(), y.clone()) for x, y in data])
        return real(model, rate, criterion, scope, data=data, **kw)

    monkeypatch.setattr(prune_stage, "prune", recording)
    plain, drawn = (PruneConfig(enabled=True, criterion="grasp", rates=[0.8], data_per_class=2,
                                data_augment=a) for a in (False, True))
    assert PruneStage().units(plain) != PruneStage().units(drawn)
    for cfg in (plain, drawn, drawn):
        pipeline.run(tiny_cfg(tmp_path / str(len(seen)), prune=cfg))
    (xa, ya), (xb, yb), (xc, yc) = (b[0] for b in seen)
    assert torch.equal(ya, yb) and not torch.equal(xa, xb)  # the same images, augmented
    assert torch.equal(xb, xc) and torch.equal(yb, yc)  # one draw, from the run's seed
    note = results.load(tmp_path / "1").query("stage == 'prune'")["note"].iloc[0]
    assert note.endswith("data_per_class=2; data_augment=True")
    with pytest.raises(ValueError, match="prune.data_augment must be true or false, got 'yes'"):
        pipeline.run(tiny_cfg(tmp_path / "bad", prune=PruneConfig(
            enabled=True, criterion="grasp", data_augment="yes")))
