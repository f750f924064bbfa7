"""landscape.pruning: exact selection, criteria registry, masks, fine-tuning, structured."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_pruning as tp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from landscape.hessian import recalibrated_buffers
from landscape.models import create_model
from landscape.pruning import (
    EmptyLayerWarning, MaskKeeper, apply_masks, classifier_layer, compute_scores, finetune,
    get_criterion,
    import_criteria, list_criteria, prunable_parameters, prune, recalibrate_bn, select_masks,
    sparsity_report, structured_prune,
)
from landscape.registry import UnknownNameError


def _model(name: str = "small_cnn", width: float = 0.25, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, width=width)


def _batches(n: int, size: int = 8, image: int = 8, seed: int = 0) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, image, image, generator=g),
             torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def _oracle_keep(scores: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Brute force: sort all weights by (score, flat index) in float64, drop the first k."""
    flat = np.concatenate([s.ravel() for s in scores]).astype(np.float64)
    order = np.lexsort((np.arange(flat.size), flat))
    keep = np.ones(flat.size, dtype=bool)
    keep[order[:k]] = False
    return [part.reshape(s.shape) for part, s in
            zip(np.split(keep, np.cumsum([s.size for s in scores])[:-1]), scores)]


# ----------------------------------------------------------------------------- selection

shapes = st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3), min_size=1, max_size=4)


@settings(max_examples=80, deadline=None)
@given(shapes=shapes, rate=st.floats(0, 1, exclude_max=True), levels=st.integers(1, 1000),
       seed=st.integers(0, 2**16), scope=st.sampled_from(["global", "layerwise"]))
def test_select_masks_is_exactly_the_lowest_set(shapes, rate, levels, seed, scope):
    # few distinct levels -> many ties, which must be broken by flat position
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, levels, size=s).astype(np.float32) for s in shapes]
    scores = {f"layer{i}.weight": torch.from_numpy(a) for i, a in enumerate(arrays)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyLayerWarning)
        masks = select_masks(scores, rate, scope)
    if scope == "global":
        n = sum(a.size for a in arrays)
        expected = _oracle_keep(arrays, round(rate * n))
        assert sum(int((~m).sum()) for m in masks.values()) == round(rate * n)
    else:
        expected = [_oracle_keep([a], round(rate * a.size))[0] for a in arrays]
        for m, a in zip(masks.values(), arrays):
            assert int((~m).sum()) == round(rate * a.size)
    assert list(masks) == list(scores)
    for m, e in zip(masks.values(), expected):
        assert m.dtype == torch.bool and np.array_equal(m.numpy(), e)


@pytest.mark.filterwarnings("ignore::landscape.pruning.EmptyLayerWarning")
def test_select_masks_mixed_dtypes_infinities_and_layouts_match_oracle():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, (30, 7)).astype(np.float32)
    b = rng.standard_normal(50)
    b[::7] = np.inf  # "never prune" scores are allowed
    c = rng.integers(-3, 3, (4, 3, 3)).astype(np.float32)
    scores = {"a": torch.from_numpy(a), "b": torch.from_numpy(b),
              "c": torch.from_numpy(c).to(torch.bfloat16)}
    for rate in (0.25, 0.5, 0.95):
        masks = select_masks(scores, rate)
        expected = _oracle_keep([a, b, c], round(rate * (a.size + b.size + c.size)))
        for (name, m), e in zip(masks.items(), expected):
            assert m.shape == scores[name].shape and m.device == scores[name].device
            assert np.array_equal(m.numpy(), e), (rate, name)
    transposed = torch.from_numpy(a).t()  # non-contiguous scores keep their own shape
    (mask,) = select_masks({"t": transposed}, 0.5).values()
    assert np.array_equal(mask.numpy(), _oracle_keep([a.T.copy()], round(0.5 * a.size))[0])


@pytest.mark.parametrize("arch,width", [("small_cnn", 0.5), ("resnet18", 0.125)])
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_prune_model_exact_counts_and_smallest_magnitudes(arch, width, scope):
    model = _model(arch, width)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = prunable_parameters(model)
    arrays = [p.detach().abs().double().numpy() for p in params.values()]
    masks = prune(model, 0.7, "magnitude", scope)
    assert list(masks) == list(params)
    if scope == "global":
        expected = _oracle_keep(arrays, round(0.7 * sum(a.size for a in arrays)))
    else:
        expected = [_oracle_keep([a], round(0.7 * a.size))[0] for a in arrays]
    after = model.state_dict()
    assert set(after) == set(before)  # no weight_orig / weight_mask re-parametrisation
    for (name, m), e in zip(masks.items(), expected):
        assert np.array_equal(m.numpy(), e), name
        assert torch.equal(after[name], before[name] * m)
    for name in set(before) - set(masks):  # biases, BatchNorm, buffers untouched
        assert torch.equal(after[name], before[name]), name


def test_bad_rate_scope_and_scores_are_clear_errors():
    model = _model()
    for rate in (-0.1, 1.0, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="rate"):
            prune(model, rate)
    with pytest.raises(ValueError, match="scope.*global, layerwise"):
        prune(model, 0.5, scope="local")
    with pytest.raises(ValueError, match="NaN"):
        select_masks({"w": torch.tensor([1.0, float("nan")])}, 0.5)
    with pytest.raises(ValueError, match="empty"):
        select_masks({}, 0.5)


def test_empty_layer_warns_and_is_reported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)  # its 8 weights are the 8 smallest of 24
    with pytest.warns(EmptyLayerWarning, match=r"1\.weight"):
        masks = prune(model, 8 / 24)
    report = sparsity_report(model, masks)
    assert report.empty_layers == ("1.weight",)
    assert [r["empty"] for r in report.as_rows()] == [False, True]
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyLayerWarning)
        prune(copy.deepcopy(model), 7 / 24)  # one weight survives: no warning


# ----------------------------------------------------------------------------- prunable set, masks

def test_prunable_set_defaults_and_exclusions():
    model = _model("small_cnn")
    convs = ["features.0.weight", "features.4.weight", "features.8.weight"]
    assert list(prunable_parameters(model)) == convs + ["classifier.weight"]
    both = dict(exclude_first_conv=True, exclude_classifier=True)
    assert list(prunable_parameters(model, **both)) == convs[1:]
    with_bias = prunable_parameters(model, include=("conv", "bias"))
    biases = [c.replace("weight", "bias") for c in convs]
    assert list(with_bias) == [n for pair in zip(convs, biases) for n in pair] + ["classifier.bias"]
    resnet = prunable_parameters(_model("resnet18", 0.125), **both)
    assert "conv1.weight" not in resnet and "linear.weight" not in resnet
    assert "layer1.0.conv1.weight" in resnet and not any("bn" in n for n in resnet)


class ConvHead(nn.Module):
    """SqueezeNet's shape: no Linear, a 1x1 conv gives the class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3),
                                      nn.ReLU())
        self.classifier = nn.Sequential(nn.Conv2d(8, 10, 1), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten())

    def forward(self, x):
        return self.classifier(self.features(x))


def test_a_conv_classifier_is_the_classifier():
    model = ConvHead()
    assert classifier_layer(model) == "classifier.0"
    assert classifier_layer(_model("small_cnn")) == "classifier"
    assert list(prunable_parameters(model, exclude_classifier=True)) == [
        "features.0.weight", "features.2.weight"]
    pruned = structured_prune(model, 0.5, torch.randn(2, 3, 12, 12)).model
    assert pruned.classifier[0].out_channels == 10  # its outputs (the classes) are kept
    assert pruned.features[2].out_channels < 8 and pruned(torch.randn(1, 3, 12, 12)).shape == (
        1, 10)


def test_prunable_set_errors():
    with pytest.raises(ValueError, match="empty"):
        prunable_parameters(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()))
    with pytest.raises(ValueError, match="empty"):
        prune(nn.Sequential(nn.Linear(3, 2)), 0.5, exclude_classifier=True)
    with pytest.raises(ValueError, match="include.*conv, linear, bias, batchnorm"):
        prunable_parameters(_model(), include=("conv", "attention"))
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"weight": torch.ones(3, 2, dtype=torch.bool)})
    with pytest.raises(KeyError, match="weight_orig"):
        apply_masks(model, {"weight_orig": torch.ones(2, 3, dtype=torch.bool)})


def test_sparsity_report_numbers():
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2))  # 12 + 6 + 2 params
    masks = {"0.weight": torch.arange(12).reshape(3, 4) % 2 == 0}
    apply_masks(model, masks)
    report = sparsity_report(model, masks)
    assert (report.prunable_numel, report.pruned, report.sparsity) == (12, 6, 0.5)
    assert report.model_params == 20 and report.model_nonzero == 14
    assert report.compression_ratio == pytest.approx(20 / 14)
    (row,) = report.as_rows()
    assert row == {"layer": "0.weight", "numel": 12, "pruned": 6, "nonzero": 6,
                   "sparsity": 0.5, "empty": False}


# ----------------------------------------------------------------------------- criteria

def test_random_criterion_is_seeded_and_leaves_global_rng_alone():
    model = _model()
    params = prunable_parameters(model)
    state = torch.get_rng_state()
    a = select_masks(compute_scores("random", params, model=model, seed=1), 0.5)
    b = select_masks(compute_scores("random", params, model=model, seed=1), 0.5)
    c = select_masks(compute_scores("random", params, model=model, seed=2), 0.5)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_magnitude_gradient_matches_float64_oracle():
    model = _model().double()
    data = [(x.double(), y) for x, y in _batches(3)]
    params = prunable_parameters(model)
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    scores = compute_scores("magnitude_gradient", params, model=model, data=data, batches=2)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}

    oracle = copy.deepcopy(model).eval()
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in data[:2]:  # only the first `batches` batches
        oracle.zero_grad()
        nn.functional.cross_entropy(oracle(x), y).backward()
        for n, p in oracle.named_parameters():
            if n in grads:
                grads[n] += p.grad / 2
    for n, p in params.items():
        torch.testing.assert_close(scores[n], (p.detach() * grads[n]).abs(), rtol=1e-10, atol=1e-14)
    masks = prune(model, 0.5, "magnitude_gradient", data=data, batches=2)  # data reaches it
    assert all(torch.equal(m, select_masks(scores, 0.5)[n]) for n, m in masks.items())
    every = compute_scores("magnitude_gradient", params, model=model, data=data)  # all 3
    three = compute_scores("magnitude_gradient", params, model=model, data=data, batches=3)
    assert all(torch.equal(every[n], three[n]) for n in params)
    assert not all(torch.equal(every[n], scores[n]) for n in params)
    with pytest.raises(ValueError, match="needs data"):
        compute_scores("magnitude_gradient", params, model=model)
    with pytest.raises(ValueError, match="yielded 3 batch"):
        compute_scores("magnitude_gradient", params, model=model, data=data, batches=4)


def test_user_criterion_from_own_module_is_selectable_by_name(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import_criteria(["pruning_user_criterion"])
    assert "test_largest_first" in list_criteria()
    model = _model()
    weights = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    masks = prune(model, 0.4, criterion="test_largest_first", offset=1.0)
    pruned = torch.cat([weights[n][~m].abs() for n, m in masks.items()])
    kept = torch.cat([weights[n][m].abs() for n, m in masks.items()])
    assert pruned.min() >= kept.max()  # the opposite of magnitude pruning
    with pytest.raises(TypeError, match="unknown option.*'seed'.*offset"):
        prune(_model(), 0.4, criterion="test_largest_first", seed=3)


def test_unknown_criterion_and_missing_module_are_clear_errors():
    with pytest.raises(UnknownNameError, match="valid names:.*magnitude, magnitude_gradient, obd, "
                                               "random, synflow"):
        prune(_model(), 0.5, criterion="magnitud")
    with pytest.raises(UnknownNameError, match="magnitude"):
        get_criterion("snip")
    with pytest.raises(ModuleNotFoundError, match="no_such_criteria_module.*PYTHONPATH"):
        import_criteria(["no_such_criteria_module"])


# ----------------------------------------------------------------------------- fine-tuning, BN

def test_finetune_keeps_mask_exactly_under_momentum_and_weight_decay():
    model = _model("small_cnn", 0.5)
    masks = prune(model, 0.8)
    data = _batches(4)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    control = copy.deepcopy(model)
    model.eval()
    result = finetune(model, masks, data, epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-3,
                      grad_clip=1.0, seed=0,
                      eval_fn=lambda m: {"w": m.classifier.weight.sum().item()})
    assert not model.training  # mode restored
    assert len(result.train_loss) == len(result.train_acc) == len(result.eval) == 2
    assert all(math.isfinite(v) for v in result.train_loss)
    params = dict(model.named_parameters())
    for n, m in masks.items():
        assert torch.count_nonzero(params[n][~m]) == 0, n
        assert torch.count_nonzero(params[n]) == int(m.sum()), n  # sparsity kept, to the weight
        assert not torch.equal(params[n][m], start[n][m]), n  # the kept weights did train

    # control: the same SGD without the mask keeper revives pruned weights
    opt = torch.optim.SGD(control.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    control.train()
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(control(x), y).backward()
        opt.step()
    revived = dict(control.named_parameters())
    assert sum(int(torch.count_nonzero(revived[n][~m])) for n, m in masks.items()) > 0


def test_finetune_equals_a_plain_masked_sgd_loop_and_reads_the_loss_once_per_epoch(
        monkeypatch):
    model = _model("small_cnn", 0.5)
    masks = prune(model, 0.6)
    data = _batches(3)
    ref = copy.deepcopy(model)
    reads = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or item(t))
    result = finetune(model, masks, data, epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4,
                      grad_clip=0.5, seed=0)
    assert reads == []  # no host read per step: a float() per epoch
    monkeypatch.undo()
    # the reference: the same steps written out, the loss read after each one
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    params = dict(ref.named_parameters())
    losses = []
    ref.train()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(2):
            total = 0.0
            for x, y in data:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(ref(x), y)
                loss.backward()
                with torch.no_grad():
                    for n, m in masks.items():
                        params[n].grad[~m] = 0
                nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
                opt.step()
                with torch.no_grad():
                    for n, m in masks.items():
                        params[n][~m] = 0
                total += loss.item() * len(y)
            losses.append(total / sum(len(y) for _, y in data))
    assert list(result.train_loss) == losses
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  ref.state_dict().values()))
    with pytest.raises(FloatingPointError, match="non-finite loss in epoch 1 of 2"):
        finetune(_model("small_cnn", 0.5), masks, data, epochs=2, lr=1e12, grad_clip=None,
                 momentum=0.0, seed=0)


def test_finetune_under_bf16_autocast_keeps_float32_weights_and_the_mask():
    # The CUDA path (DeviceSettings.autocast) exercised with CPU bf16 autocast.
    model = _model("small_cnn", 0.5)
    masks = prune(model, 0.7)
    entered = []

    def autocast():
        entered.append(1)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    result = finetune(model, masks, _batches(3), epochs=1, lr=0.05, seed=0, autocast=autocast)
    assert len(entered) == 3 and math.isfinite(result.train_loss[0])
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    for n, m in masks.items():
        assert torch.count_nonzero(params[n]) == int(m.sum()), n


def test_mask_keeper_undoes_momentum_revival():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    masks = {"weight": torch.rand(3, 5) > 0.5}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    model(torch.randn(4, 5)).sum().backward()
    opt.step()  # dense step: momentum buffer is nonzero everywhere
    keeper = MaskKeeper(model, masks)
    keeper.after_step()
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 5)).sum().backward()
        keeper.after_backward()
        assert torch.count_nonzero(model.weight.grad[~masks["weight"]]) == 0
        opt.step()  # momentum alone would move the pruned weights
        assert torch.count_nonzero(model.weight[~masks["weight"]]) > 0
        keeper.after_step()
        assert torch.count_nonzero(model.weight[~masks["weight"]]) == 0


def test_finetune_rejects_bad_hyperparameters():
    model = _model()
    masks = prune(model, 0.5)
    for key, value in [("lr", 0.0), ("epochs", -1), ("momentum", -0.1), ("grad_clip", -1.0)]:
        with pytest.raises(ValueError, match=key):
            finetune(model, masks, _batches(1), **{key: value})


def test_recalibrate_bn_gives_example_weighted_averages_over_batches():
    """Batches of 8, 8 and 3 images: the running mean is the mean over all 19 (each batch
    weighted by its size, not 1/3 each), the running var the size-weighted mean of the
    batches' unbiased variances; the same statistics as the Hessian's recalibrated buffers."""
    model = _model("small_cnn", 0.5).eval()
    data = _batches(2) + [(x[:3], y[:3]) for x, y in _batches(1, seed=1)]
    bn = model.features[2]
    model(data[0][0])  # the model's one-off input-size check runs a forward of its own
    seen = []
    handle = bn.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        for x, _ in data:
            model(x)
    handle.remove()
    sizes = torch.tensor([8.0, 8.0, 3.0])[:, None]
    mean = torch.cat(seen).mean((0, 2, 3))
    var = (torch.stack([s.transpose(0, 1).flatten(1).var(1, unbiased=True) for s in seen])
           * sizes).sum(0) / 19
    buffers = recalibrated_buffers(model, data)
    assert recalibrate_bn(model, data, "cpu") == 3
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert not model.training and bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3
    assert recalibrate_bn(model, data, "cpu", max_batches=1) == 1
    torch.testing.assert_close(bn.running_mean, seen[0].mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no data"):
        recalibrate_bn(model, [], "cpu")


# ----------------------------------------------------------------------------- structured

def _one_channel_bound(model: nn.Module, example: torch.Tensor) -> int:
    """Largest count of conv/linear weights that removing one channel of any group deletes."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    bound = 0
    roots = [nn.Conv2d, nn.Linear]
    for group in dg.get_all_groups(ignored_layers=[classifier], root_module_types=roots):
        cost = 0
        for dep, _ in group:
            m = dep.target.module
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if dg.is_out_channel_pruning_fn(dep.handler):
                    cost += m.weight.numel() // m.weight.shape[0]
                elif dg.is_in_channel_pruning_fn(dep.handler):
                    cost += m.weight.numel() // m.weight.shape[1]
        bound = max(bound, cost)
    return bound


@pytest.mark.parametrize("arch,width,rate", [
    ("small_cnn", 0.5, 0.5), ("small_cnn", 0.5, 0.9), ("resnet18", 0.125, 0.9),
])
def test_structured_hits_parameter_fraction_within_one_channel(arch, width, rate):
    model = _model(arch, width).train()
    x = torch.randn(2, 3, 16, 16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = structured_prune(model, rate, x)
    before = sum(p.numel() for p in prunable_parameters(model).values())
    after = sum(p.numel() for p in prunable_parameters(result.model).values())
    assert (result.params_before, result.params_after) == (before, after)
    assert result.achieved == pytest.approx(1 - after / before)
    assert abs((before - after) - rate * before) <= _one_channel_bound(copy.deepcopy(model), x)
    assert abs(result.achieved - rate) * before <= result.step / 2 + 1e-9
    assert result.model(x).shape == (2, 10) and result.model.training
    # the input model is untouched
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_structured_options_and_errors():
    model = _model("small_cnn", 0.5)
    x = torch.randn(2, 3, 16, 16)
    result = structured_prune(model, 0.6, x, exclude_first_conv=True, importance="random", seed=1)
    again = structured_prune(model, 0.6, x, exclude_first_conv=True, importance="random", seed=1)
    assert result.model.features[0].out_channels == model.features[0].out_channels
    assert result.model.classifier.out_features == 10
    same = again.model.state_dict()
    assert all(torch.equal(v, same[k]) for k, v in result.model.state_dict().items())  # seeded
    with pytest.raises(ValueError, match="importance must be one of magnitude"):
        structured_prune(model, 0.5, x, importance="taylor2")
    with pytest.raises(ValueError, match="rate"):
        structured_prune(model, 1.0, x)
