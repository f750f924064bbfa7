"""Linear probes per layer and per position; observed tail and predicted border."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from landscape.models import create_model
from landscape.probes import (
    extract_features, layer_saturation, linear_probes, observed_tail, pool_map,
    position_accuracy_map, position_probe_map, predicted_border, probe_accuracy, probe_features,
)


def _separable(n: int, p: int, seed: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Class c has feature c shifted by +6: linearly separable with a wide margin."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.standard_normal((n, p))
    x[np.arange(n), y] += 6.0
    return x, y


# --- one probe ---------------------------------------------------------------------------


def test_separable_features_reach_full_accuracy() -> None:
    xtr, ytr = _separable(120, 8, 0)
    xte, yte = _separable(60, 8, 1)
    r = probe_accuracy(xtr, ytr, xte, yte, layer="fc")
    assert r.accuracy == 1.0 and r.train_accuracy == 1.0 and r.converged
    assert (r.features, r.constant_features, r.n_train, r.n_test, r.classes) == (8, 0, 120, 60, 3)


def test_probe_is_deterministic_and_ignores_constant_columns() -> None:
    xtr, ytr = _separable(90, 5, 2)
    xte, yte = _separable(45, 5, 3)
    pad = lambda x: np.hstack([x, np.full((len(x), 2), 7.0)])  # noqa: E731
    a = probe_accuracy(xtr, ytr, xte, yte)
    b = probe_accuracy(pad(xtr), ytr, pad(xte) + 1.0, yte)  # test-time shift of dead columns
    assert b.constant_features == 2 and b.features == 5
    assert a.accuracy == b.accuracy == probe_accuracy(xtr, ytr, xte, yte).accuracy


def test_a_layer_without_a_varying_feature_gets_the_intercept_probe() -> None:
    """Every feature constant on the training set (a dead layer, EdgeNeXt's positional
    encoding conv): the probe of no features predicts the most frequent training class, the
    smallest label of a tie; it was an error that stopped the whole probes unit."""
    ytr, yte = np.array([0, 2, 2, 1, 2, 0]), np.array([2, 1, 2, 0])
    r = probe_accuracy(np.ones((6, 4)), ytr, np.random.rand(4, 4), yte, layer="relu")
    assert (r.features, r.constant_features, r.converged) == (0, 4, True)
    assert (r.train_accuracy, r.accuracy) == (3 / 6, 2 / 4)
    tie = probe_accuracy(np.zeros((4, 2)), np.array([3, 1, 1, 3]), np.zeros((2, 2)),
                         np.array([1, 3]))
    assert (tie.train_accuracy, tie.accuracy) == (0.5, 0.5)  # class 1 predicted
    assert probe_accuracy(np.zeros((4, 2)), np.array([3, 1, 1, 3]), np.zeros((1, 2)),
                          np.array([1])).accuracy == 1.0


def test_probe_errors_name_the_layer() -> None:
    xtr, ytr = _separable(30, 4, 4)
    with pytest.raises(ValueError, match="layer 'conv3': the training labels hold 1 class"):
        probe_accuracy(xtr, np.zeros(30), xtr, ytr, layer="conv3")
    with pytest.raises(ValueError, match="layer 'fc': train has 4 features, test 3"):
        probe_accuracy(xtr, ytr, xtr[:, :3], ytr, layer="fc")
    with pytest.raises(ValueError, match="layer 'fc': the test set is empty"):
        probe_accuracy(xtr, ytr, xtr[:0], ytr[:0], layer="fc")
    with pytest.raises(ValueError, match="non-finite"):
        probe_accuracy(np.full((30, 4), np.nan), ytr, xtr, ytr)
    with pytest.raises(ValueError, match="C must be > 0"):
        probe_accuracy(xtr, ytr, xtr, ytr, C=0)


def test_features_are_pooled_conv_maps_or_linear_outputs() -> None:
    out = torch.randn(2, 3, 8, 8)
    f = probe_features(out, 4)
    assert f.shape == (2, 48)
    assert torch.allclose(f[1, :16].reshape(4, 4)[0, 0], out[1, 0, :2, :2].mean())
    assert probe_features(out, None).shape == (2, 192)
    assert probe_features(torch.randn(2, 7)).shape == (2, 7)
    assert probe_features(torch.randn(2, 3, 4)).shape == (2, 4)  # tokens: the mean one
    with pytest.raises(ValueError, match="layer 'video'"):
        probe_features(torch.randn(2, 3, 4, 5, 6), layer="video")


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (4, 4), (3, 9), (6, 6)])
def test_maps_smaller_than_the_pooled_size_keep_their_size(h, w) -> None:
    """pool_map gives min(size, side) per side: a map no larger than 4 x 4 is its own
    features, position for position; pool_up repeats its positions up to 4 x 4 instead."""
    out = torch.randn(3, 5, h, w)
    pooled = pool_map(out, 4)
    assert pooled.shape == (3, 5, min(4, h), min(4, w))
    if h <= 4 and w <= 4:
        assert torch.equal(probe_features(out, 4), out.reshape(3, -1))
    up = pool_map(out, 4, pool_up=True)
    assert up.shape == (3, 5, 4, 4)
    if (h, w) == (1, 1):
        assert torch.equal(up, out.expand(3, 5, 4, 4))  # 16 copies of each channel
    assert torch.equal(pool_map(out, None), out)


@pytest.mark.parametrize("copies", [4, 16])
def test_repeated_features_are_a_weaker_l2_penalty(copies) -> None:
    """Why small maps are not pooled up: a probe on k copies of the features with C fits the
    probe of one copy with k C (each copy takes 1/k of the weight; k (w/k)^2 = w^2 / k)."""
    from landscape.probes.logistic import fit_logistic

    x, y = _separable(90, 6, 5)
    x = x + np.random.default_rng(6).standard_normal(x.shape) * 3  # overlapping classes
    kw = dict(max_iter=5000, tol=1e-9, dtype=torch.float64)
    rep = fit_logistic(np.repeat(x, copies, axis=1), y, C=0.01, **kw)
    one = fit_logistic(x, y, C=0.01 * copies, **kw)
    summed = rep.coef.reshape(len(rep.coef), 6, copies).sum(-1)
    assert torch.allclose(summed, one.coef, rtol=1e-4, atol=1e-6)
    assert torch.allclose(rep.intercept, one.intercept, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(one.coef, fit_logistic(x, y, C=0.01, **kw).coef, rtol=0.05)


# --- through a model ---------------------------------------------------------------------


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _images(n: int, seed: int, hw: int = 8, where: tuple[int, int] | None = None):
    """Inputs whose class is the sign pattern of a bright spot (channel 0 at ``where``, or
    the whole channel 0 when None); everything else is noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 2, hw, hw, generator=g)
    level = (y.float() - 1.0) * 4.0
    if where is None:
        x[:, 0] += level[:, None, None]
    else:
        x[:, 0, where[0], where[1]] += level
    return x, y


def test_linear_probes_one_forward_per_batch_for_all_layers() -> None:
    model = _net()
    calls = []
    model.register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
    xtr, ytr = _images(60, 0)
    xte, yte = _images(30, 1)
    train = [(xtr[i:i + 20], ytr[i:i + 20]) for i in range(0, 60, 20)]
    test = [(xte[:15], yte[:15]), (xte[15:], yte[15:])]
    res = linear_probes(model, train, test)
    # every layer from the same forward (each pass after a 2-example check of the layers)
    assert calls == [2, 20, 20, 20, 2, 15, 15]
    assert list(res) == ["0", "2", "5"]
    assert [r.features + r.constant_features for r in res.values()] == [4 * 16, 4 * 16, 3]
    assert res["0"].accuracy == 1.0  # channel 0's mean is the class, linearly
    assert all(0.0 <= r.accuracy <= 1.0 and r.n_test == 30 for r in res.values())
    feats, labels = extract_features(model, train, layers=["2"], size=2)
    assert feats["2"].shape == (60, 16) and feats["2"].dtype == np.float32
    assert np.array_equal(labels, ytr.numpy())


def test_position_map_finds_the_one_informative_position() -> None:
    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2)[:, :, None, None])  # identity: features = inputs
    model = nn.Sequential(conv)
    xtr, ytr = _images(90, 2, hw=4, where=(1, 2))
    xte, yte = _images(60, 3, hw=4, where=(1, 2))
    m = position_probe_map(model, [(xtr, ytr)], [(xte, yte)], "0")
    assert m.accuracy.shape == (4, 4) and m.channels == 2 and m.size is None
    assert m.accuracy[1, 2] == 1.0
    others = np.delete(m.accuracy.ravel(), 1 * 4 + 2)
    assert others.max() < 0.7  # chance is 1/3
    pooled = position_probe_map(model, [(xtr, ytr)], [(xte, yte)], "0", size=2)
    assert pooled.accuracy.shape == (2, 2) and pooled.size == 2
    assert pooled.accuracy[0, 1] == pooled.accuracy.max()  # the quadrant holding (1, 2)


def test_position_map_errors() -> None:
    model = _net()
    data = [_images(12, 0)]
    with pytest.raises(ValueError, match="exact name of a module"):
        position_probe_map(model, data, data, "features.*")
    with pytest.raises(ValueError, match="layer '5'.*need a conv output"):
        position_probe_map(model, data, data, "5")
    with pytest.raises(ValueError, match="size must be None or a positive integer"):
        position_probe_map(model, data, data, "0", size=0)
    with pytest.raises(ValueError, match="one shape"):
        position_accuracy_map(np.zeros((4, 2, 3, 3)), np.arange(4) % 2,
                              np.zeros((4, 2, 3, 2)), np.arange(4) % 2)
    dead = position_accuracy_map(np.zeros((4, 2, 3, 3)), np.arange(4) % 2,
                                 np.zeros((4, 2, 3, 3)), np.arange(4) % 2, layer="0")
    assert (dead.accuracy == 0.5).all()  # every position: the intercept probe


# --- observed tail -----------------------------------------------------------------------

LAYERS = ["c1", "c2", "c3", "c4", "c5", "c6"]


def test_observed_tail_on_hand_made_sequences() -> None:
    sat = [0.6, 0.5, 0.4, 0.1, 0.1, 0.1]  # mean 0.3
    # accuracy rises until c4, then flat (+0.005 < 0.01)
    acc = [0.40, 0.55, 0.70, 0.80, 0.805, 0.80]
    t = observed_tail(LAYERS, acc, sat, epsilon=0.01)
    assert (t.start, t.layer) == (3, "c4") and t.mean_saturation == pytest.approx(0.3)
    # flat from c3 on, but c3's saturation 0.4 is above the mean: the tail starts at c4
    assert observed_tail(LAYERS, [0.4, 0.6, 0.8, 0.8, 0.8, 0.8], sat).start == 3
    # an improvement of exactly epsilon is not "less than epsilon" (numbers exact in binary)
    steps = [0.25, 0.5, 0.625, 0.75, 0.75, 0.875]
    assert observed_tail(LAYERS, steps, sat, epsilon=0.125).start is None
    assert observed_tail(LAYERS, steps, sat, epsilon=0.125, min_length=1).start == 5
    assert observed_tail(LAYERS, steps, sat, epsilon=0.25).start == 3  # c3 fails on saturation
    # still improving at the end: no tail of 2 layers, a tail of 1 with min_length=1
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert observed_tail(LAYERS, rising, sat).start is None
    assert observed_tail(LAYERS, rising, sat, min_length=1).layer == "c6"
    # high saturation everywhere after c1: no tail
    assert observed_tail(LAYERS, acc, [0.1, 0.9, 0.9, 0.9, 0.9, 0.9]).start is None


def test_observed_tail_errors_name_the_argument_or_layer() -> None:
    acc, sat = [0.5] * 6, [0.5] * 6
    with pytest.raises(ValueError, match="accuracy of layer 'c3' must be a finite number"):
        observed_tail(LAYERS, [0.5, 0.5, float("nan"), 0.5, 0.5, 0.5], sat)
    with pytest.raises(ValueError, match="saturation of layer 'c1'"):
        observed_tail(LAYERS, acc, [None] + sat[1:])
    with pytest.raises(ValueError, match="one value per layer"):
        observed_tail(LAYERS, acc[:5], sat)
    with pytest.raises(ValueError, match="epsilon must be"):
        observed_tail(LAYERS, acc, sat, epsilon=-0.1)
    with pytest.raises(ValueError, match="min_length must be"):
        observed_tail(LAYERS, acc, sat, min_length=0)
    with pytest.raises(ValueError, match="layers must be a non-empty"):
        observed_tail([], [], [])


# --- predicted border ----------------------------------------------------------------------


class _Tokens(nn.Module):
    """A patch embedding and two Linear layers over (N, L, D) tokens, then a head on the mean
    token: the layout of a ViT's Linear outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 8, 4, stride=4)
        self.mix = nn.Linear(8, 8)
        self.proj = nn.Linear(8, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (N, 4, 8): 2 x 2 patches of 8 px
        return self.head(self.proj(torch.relu(self.mix(t))).mean(1))


def test_token_outputs_probe_the_mean_token_and_give_one_sample_per_token() -> None:
    from landscape.probes import collect_layers

    torch.manual_seed(0)
    model = _Tokens().eval()
    x = torch.randn(12, 1, 8, 8)
    batches = [(x[:5], torch.arange(5) % 3), (x[5:], torch.arange(7) % 3)]
    data = collect_layers(model, batches, covariance=True)
    assert data.layers == ["embed", "mix", "proj", "head"]
    with torch.no_grad():
        mix = model.mix(model.embed(x).flatten(2).transpose(1, 2))
    np.testing.assert_allclose(data.features["mix"], mix.mean(1).numpy(), rtol=1e-6)
    assert data.features["embed"].shape == (12, 8 * 2 * 2)  # a 2 x 2 conv map keeps its size
    acc = data.covariances["mix"]
    assert (acc.count, acc.dim) == (12 * 4, 8)
    np.testing.assert_allclose(acc.covariance().numpy(), np.cov(
        mix.reshape(-1, 8).double().numpy(), rowvar=False, bias=True), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, L, D\) tokens"):
        probe_features(torch.zeros(2, 3, 4, 5, 6), layer="x")


def test_probes_validation_refuses_outputs_it_cannot_read() -> None:
    """Before training: a 5-d output, and a Conv1d's (N, C, L), which would be read as tokens."""
    from types import SimpleNamespace

    from landscape.stages.probes import ProbesConfig, ProbesStage

    class OneD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.line = nn.Conv1d(4, 4, 3)

        def forward(self, x):
            return self.line(self.conv(x).flatten(2))

    ident = SimpleNamespace(arch="oned", image_size=8, in_channels=1)
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"probes.layers: 'line' is a Conv1d, whose 3-d outputs "
                                         r"are \(N, C, L\)"):
        ProbesStage._check_samples(OneD(), ["conv", "line"], x, ProbesConfig(), ident)
    ProbesStage._check_samples(OneD(), ["conv"], x, ProbesConfig(), ident)

    five = nn.Sequential()
    five.add_module("conv", _FiveOut())
    with pytest.raises(ValueError, match=r"probes.layers: 'conv' gives outputs of shape "
                                         r"\(2, 4, 1, 6, 6\) \(batch of 2\)"):
        ProbesStage._check_samples(five, ["conv"], x, ProbesConfig(), ident)


class _FiveOut(nn.Module):
    """A conv whose output gets a fifth dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.inner(x)[:, :, None]


def test_predicted_border_of_plain_3x3_convs_is_a_hand_count() -> None:
    # Six 3x3 convs, stride 1, padding 1: conv k (1-based) sees r = 1 + 2 (k - 1) pixels at
    # its input, i.e. 1, 3, 5, 7, 9, 11. On 8x8 inputs conv k is unproductive when
    # 1 + 2 (k - 1) >= 8, i.e. k >= 4.5: the 5th conv, module "8" (convs at 0, 2, 4, ...).
    layers = []
    for _ in range(6):
        layers += [nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()]
    model = nn.Sequential(*layers)
    b = predicted_border(model, 8)
    assert (b.layer, b.index, b.rf_border, b.input_size) == ("8", 4, "8", 8)
    # probing every other conv: the first probed one at or after the border
    assert predicted_border(model, 8, layers=["0", "4", "10"]).layer == "10"
    assert predicted_border(model, 12, layers=["0", "2"]).layer is None  # r <= 3 < 12


def test_predicted_border_of_vgg19_is_a_hand_count() -> None:
    # vgg19 at level 0 (no RF pool), 32x32 inputs; input r of each conv (max-pools 2x2/2):
    # features.0: 1, .4: 3, pool .7 -> r 6 (jump 2), .8: 6, .11: 10, pool .14 -> r 16 (jump 4),
    # .15: 16, .18: 24, .21: 32 >= 32 -> the border is features.21, the 7th conv.
    model = create_model("vgg19", num_classes=10, width=0.125, pool_level=0)
    b = predicted_border(model, 32)
    assert (b.layer, b.index, b.rf_border) == ("features.21", 6, "features.21")
    # probing the pools too: the pool before it is productive (its input r 14 < 32)
    assert predicted_border(model, 32, layers=["features.14", "features.2[14]"]).layer == \
        "features.21"


def test_predicted_border_over_blocks_and_elementwise_modules() -> None:
    """A glob over VGG's ``features`` also probes BatchNorm and ReLU (no RF of their own:
    passed over), so the border is that of the convs and pools. A block is unproductive when
    its first conv is, and its output comes after its own convs."""
    vgg = create_model("vgg19", num_classes=10, width=0.125, pool_level=0)
    assert predicted_border(vgg, 32, layers=["features.*"]).layer == "features.21"
    # 4 blocks of conv 3x3 -> ReLU -> conv 3x3 on 8 px: the convs' input r are 1, 3 | 5, 7 |
    # 9, 11 | ...: conv 2.0 is the first whose input covers 8 px, so block 2 is unproductive
    # and block 1 (its first conv's input r is 5) is not
    net = nn.Sequential(*[nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(2, 2, 3, padding=1)) for _ in range(4)])
    b = predicted_border(net, 8, layers=["?"])
    assert (b.layer, b.index, b.rf_border) == ("2", 2, "2.0")
    b = predicted_border(net, 8, layers=["?", "?.?"])  # blocks, convs and ReLUs
    assert (b.layer, b.index) == ("2.0", 6)  # 0.0 0.2 0 1.0 1.2 1 | 2.0


def test_predicted_border_needs_rf_table_layers() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match=r"no probed layer is or holds a conv/pool/linear op of "
                                         r"the receptive-field table: 1 \(its layers: 0, 2\)"):
        predicted_border(model, 8, layers=["1"])
    assert predicted_border(model, 8, layers=["1", "2"]).layer is None  # the ReLU passed over
    with pytest.raises(ValueError, match="input_size must be a positive integer"):
        predicted_border(model, 0)


def test_one_pass_collects_the_features_and_covariances_of_every_layer() -> None:
    """collect_layers = extract_features + layer_accumulators, from one forward per batch."""
    from landscape.probes import collect_layers, layer_accumulators

    model = create_model("small_cnn", width=0.25, pool_level=1, num_classes=3)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 16, 16, generator=gen), torch.arange(8) % 3) for _ in range(3)]
    calls = []
    handle = model.register_forward_hook(lambda _m, args, _o: calls.append(len(args[0])))
    data = collect_layers(model, batches, size=2, covariance=True)
    handle.remove()
    # one forward per batch for every layer and both quantities, after the layer check's
    # forward of 2 examples (activations.select_modules)
    assert calls == [2, 8, 8, 8]
    feats, labels = extract_features(model, batches, size=2)
    accs = layer_accumulators(model, batches)
    assert data.layers == list(feats) == list(accs)
    for n in data.layers:
        np.testing.assert_array_equal(data.features[n], feats[n])
        torch.testing.assert_close(data.covariances[n].covariance(), accs[n].covariance(),
                                   rtol=0, atol=0)
    np.testing.assert_array_equal(data.labels, labels)
    assert collect_layers(model, batches).covariances == {}


# --- the stage ---------------------------------------------------------------------------


def test_probes_stage_rows_border_and_heat_map(tmp_path) -> None:
    import pandas as pd

    from landscape import pipeline, results
    from landscape.config import ModelConfig, RunConfig
    from landscape.data import DataConfig
    from landscape.identity import identify
    from landscape.receptive_field import receptive_field_table
    from landscape.stages.probes import ProbesConfig
    from landscape.train import TrainConfig

    def cfg(**kw) -> RunConfig:
        return RunConfig(model=ModelConfig(name="small_cnn", width=0.25, pool_level=2),
                         data=DataConfig(name="synthetic", image_size=8, train_subset=96,
                                         test_subset=48),
                         train=TrainConfig(epochs=2, batch_size=32, lr=0.05),
                         results_root=str(tmp_path), device="cpu", num_threads=1,
                         progress=False, report=False, **kw)

    probes = ProbesConfig(enabled=True, n_train=96, n_test=48, batch_size=32, pool_size=2,
                          epsilon=0.05, position_layers=["features.4"])
    summary = pipeline.run(cfg(probes=probes))
    assert {"probes_final", "probes_border"} <= set(summary.ran)
    everything = results.load(tmp_path)
    df = everything.query("stage == 'probes_final'")
    assert not (df.metric == "border_predicted").any()  # in its own unit
    layers = ["features.0", "features.4", "features.8", "classifier"]  # execution order
    for metric in ("probe_acc", "probe_train_acc", "saturation", "intrinsic_dim"):
        m = df[df.metric == metric].sort_values("index")
        assert m["layer"].tolist() == layers and m["index"].tolist() == [0, 1, 2, 3], metric
    assert df[df.metric.isin(["probe_acc", "saturation"])]["value"].between(0, 1).all()
    sat = df[df.metric == "saturation"].set_index("layer")["value"]
    dim = df[df.metric == "intrinsic_dim"].set_index("layer")["value"]
    assert sat["classifier"] == pytest.approx(dim["classifier"] / 10)  # 10 classes wide
    # the predicted border from the architecture: the first probed layer whose input already
    # sees the whole 8 px image
    table = receptive_field_table(identify(cfg()).build_model(), 8).set_index("layer")
    first = next(i for i, n in enumerate(layers) if n in table.index
                 and bool(table.loc[n, "unproductive"]))
    border = everything[everything.metric == "border_predicted"]
    assert (border["value"].item(), border["layer"].item()) == (first, layers[first])
    assert border["stage"].item() == "probes_border" and pd.isna(border["epoch"].item())
    tail = df[df.metric == "tail_observed"]
    assert len(tail) <= 1 and "classifier" not in set(tail["layer"])  # the head is not searched
    heat = df[df.metric == "position_probe_acc"]
    # features.4 at pool level 2 on 8 px: the map after the stem pool is 3 x 3 (probe per cell)
    assert len(heat) == heat["coord_x"].nunique() * heat["coord_y"].nunique() >= 4
    assert (heat["layer"] == "features.4").all()
    note = df["note"].iloc[0]
    assert "n_train=96" in note and "saturation_rule=smallest" in note and "backend=torch" in note
    from landscape.grid import write_root_report

    md = write_root_report(tmp_path).read_text()
    assert "predicted border layer vs observed tail (probes_final)" in md
    assert f"| {layers[first]} (#{first}) |" in md
    assert "small_cnn-w0.25-synthetic-probes-final.png" in md
    assert "small_cnn-w0.25-synthetic-probes-final-positions.png" in md
    with pytest.raises(ValueError, match="probes.layers pattern 'nope.*' matches no module"):
        pipeline.run(cfg(seed=1, probes=ProbesConfig(enabled=True, layers=["nope.*"])))
    with pytest.raises(ValueError, match=r"probes.position_layers: \['features.3'\] are not conv"):
        pipeline.run(cfg(seed=1, probes=ProbesConfig(enabled=True,
                                                      position_layers=["features.3"])))
    with pytest.raises(ValueError, match="probes.saturation_rule must be one of"):
        pipeline.run(cfg(seed=1, probes=ProbesConfig(enabled=True, saturation_rule="papers")))
    with pytest.raises(ValueError, match=r"probes.backend must be one of \('torch', 'sklearn'\), "
                                         r"got 'cuml'"):
        pipeline.run(cfg(seed=1, probes=ProbesConfig(enabled=True, backend="cuml")))
    assert not (tmp_path / identify(cfg(seed=1)).cell_name / "seed=1").exists()  # before training
    _other_backend_is_recomputed_not_mixed(cfg, probes, tmp_path)
    _an_analysis_change_recomputes_the_border_alone(cfg, probes, tmp_path)
    _too_few_test_images_leave_out_saturation_only(cfg, probes, tmp_path, layers)


def _too_few_test_images_leave_out_saturation_only(cfg, probes, root, layers) -> None:
    """2 test images give the 10-wide classifier 2 samples: a rank-deficient covariance. Its
    saturation (and that of any other such layer) is left out and named in the note; the
    probes of every layer are still written, and no tail is claimed without the body's
    saturation."""
    import dataclasses

    from landscape import pipeline, results

    few = dataclasses.replace(probes, n_test=2, position_layers=[])
    assert pipeline.run(cfg(probes=few)).ran == ["probes_final"]
    df = results.load(root).query("stage == 'probes_final'")
    assert sorted(df[df.metric == "probe_acc"]["layer"]) == sorted(layers)
    note = df["note"].iloc[0]
    left_out = re.findall(r"(\S+) \(\d+ samples, \d+ channels\)", note)
    assert "classifier" in left_out
    assert "; no saturation (no more test samples than channels)" in note
    with_sat = set(df[df.metric == "saturation"]["layer"])
    assert with_sat == set(layers) - set(left_out) == set(df[df.metric == "intrinsic_dim"]["layer"])
    assert (df.metric == "tail_observed").any() == (set(left_out) <= {"classifier"})


def _an_analysis_change_recomputes_the_border_alone(cfg, probes, root) -> None:
    """The border unit records the RF analysis's version: another version recomputes it
    (not the probes), as does another ``probes.layers``; a probes unit written when the
    border was one of its rows is recomputed (that row came from the analysis of its day)."""
    import dataclasses
    import json

    from landscape import pipeline, results
    from landscape.identity import identify
    from landscape.receptive_field import version
    from landscape.stages.probes import ProbesStage

    ident = identify(cfg())
    run_dir = results.run_paths(root, ident.cell_name, ident.seed).run_dir
    marker = results.stage_dir(run_dir, "probes_border") / "DONE"
    settings = json.loads(marker.read_text())["settings"]
    assert settings == {"layers": None, "analysis": version.analysis_version()}
    probes = dataclasses.replace(probes, backend="sklearn", position_layers=[])
    assert "probes_border" not in pipeline.run(cfg(probes=probes)).ran  # other probes settings
    assert pipeline.run(cfg(probes=probes)).ran == []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(version, "analysis_version", lambda: "0123456789ab")
        assert ProbesStage().stale_reason(probes, run_dir, "probes_border") == (
            f"settings changed: analysis {settings['analysis']!r} -> '0123456789ab'")
        # the cell's RF table too, not the probes
        assert pipeline.run(cfg(probes=probes)).ran == ["receptive_field", "probes_border"]
    assert pipeline.run(cfg(probes=probes)).ran == ["receptive_field", "probes_border"]
    done = results.stage_dir(run_dir, "probes_final") / "DONE"
    old = json.loads(done.read_text())
    del old["settings"]["border_rows"]  # as written before the border had its unit
    done.write_text(json.dumps(old))
    assert ProbesStage().stale_reason(probes, run_dir, "probes_final") == (
        "settings changed: border_rows 'each probes unit' -> 'probes_border'")
    assert pipeline.run(cfg(probes=probes)).ran == ["probes_final"]
    border = results.load(root).query("metric == 'border_predicted'")
    assert border["stage"].tolist() == ["probes_border"]


def _other_backend_is_recomputed_not_mixed(cfg, probes, root) -> None:
    """A unit of one backend is stale for the other; one recorded before probes.backend
    existed (no backend in its DONE marker) was scikit-learn's."""
    import dataclasses
    import json

    from landscape import pipeline, results
    from landscape.identity import identify
    from landscape.stages.probes import ProbesStage

    ident = identify(cfg())
    stage, run_dir = ProbesStage(), results.run_paths(root, ident.cell_name, ident.seed).run_dir
    sk = dataclasses.replace(probes, backend="sklearn", position_layers=[])
    assert "backend 'torch' -> 'sklearn'" in stage.stale_reason(sk, run_dir, "probes_final")
    summary = pipeline.run(cfg(probes=sk))
    assert summary.ran == ["probes_final"]
    df = results.load(root).query("stage == 'probes_final'")
    assert df["note"].str.contains("backend=sklearn").all()  # every row of the run replaced
    done = results.stage_dir(run_dir, "probes_final") / "DONE"
    marker = json.loads(done.read_text())
    del marker["settings"]["backend"]  # as written before the setting existed
    done.write_text(json.dumps(marker))
    assert stage.stale_reason(sk, run_dir, "probes_final") is None
    torch_cfg = dataclasses.replace(sk, backend="torch")
    assert "backend 'sklearn' -> 'torch'" in stage.stale_reason(torch_cfg, run_dir,
                                                                 "probes_final")
    del marker["settings"]["pool_up"]  # written before small maps kept their size
    done.write_text(json.dumps(marker))
    assert stage.stale_reason(sk, run_dir, "probes_final") == \
        "settings changed: pool_up True -> False"
    assert stage.stale_reason(dataclasses.replace(sk, pool_up=True), run_dir,
                              "probes_final") is None


def test_the_probe_figure_and_table_from_rows_with_equal_seeds() -> None:
    """Equal values over seeds (whose float mean rounds past them) draw without error; the
    table counts the agreement of predicted and observed borders per RF level."""
    from analysis.probe_plots import border_table, saturation_probes
    from landscape.results import to_frame

    rows = []
    for level, rf in ((1, 10), (2, 20)):
        ident = {"arch": "vgg19", "dataset": "digits", "pool_level": level, "pool_kernel": 2,
                 "pool_stride": 1, "pool_padding": 0, "receptive_field": rf, "width": 1.0,
                 "stage": "probes_final"}
        for seed in (0, 1, 2):
            run = {**ident, "run_id": f"vgg19-p{level}/seed={seed}", "seed": seed}
            for i, layer in enumerate(["c0", "c1", "c2", "fc"]):
                rows.append({**run, "metric": "probe_acc", "layer": layer, "index": i,
                             "value": 0.9})
                if layer != "fc":  # too few test samples for the head's saturation
                    rows.append({**run, "metric": "saturation", "layer": layer, "index": i,
                                 "value": 0.1})
            rows.append({**run, "metric": "border_predicted", "layer": "c1", "value": 1})
            if seed or level == 2:
                rows.append({**run, "metric": "tail_observed", "layer": "c1", "value": 1})
    df = to_frame(rows)
    fig = saturation_probes(df)
    for ax in fig.axes:  # every probed layer on the axis, with or without saturation
        assert [t.get_text() for t in ax.get_xticklabels()] == ["c0", "c1", "c2", "fc"]
        assert len(ax.patches) == 3 and ax.get_legend() is None
    (legend,) = fig.legends  # one, below the panels: it covers no bar
    assert {t.get_text() for t in legend.get_texts()} == {
        "saturation", "probe accuracy, n=3", "predicted border", "observed tail (per seed)"}
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    table = border_table(df).cells
    assert table["Agree"].tolist() == ["2/3", "3/3"]
    assert table["Observed tail start (per seed)"].iloc[0] == "none, c1 (#1), c1 (#1)"
    assert table["Observed − predicted (layers)"].iloc[0].startswith("0")


@pytest.mark.parametrize("arch,pool", [("resnet18", 2), ("vgg19", 2), ("resnet50", 1)])
def test_probes_validation_builds_every_architecture_before_training(arch, pool, caplog) -> None:
    """The check of n_test against every layer's width runs a meta-device forward of the
    architecture; feature maps of 1 x 1 (deep layers at a large pool) must not trip it. Too
    few test images for a layer's saturation is a warning, not an error: its probes still
    run."""
    from landscape.config import ModelConfig, RunConfig
    from landscape.data import DataConfig
    from landscape.identity import identify
    from landscape.stages.probes import ProbesConfig, ProbesStage

    cfg = RunConfig(model=ModelConfig(name=arch, width=0.125, pool_level=pool),
                    data=DataConfig(name="digits", image_size=16), device="cpu")
    stage = ProbesStage()
    with caplog.at_level("WARNING", logger="landscape"):
        stage.validate_for(ProbesConfig(enabled=True, n_test=360), identify(cfg))
        assert not caplog.records
        stage.validate_for(ProbesConfig(enabled=True, n_test=2), identify(cfg))
    (record,) = caplog.records
    assert re.search(r"probes.n_test=2 gives \d+ probed layer\(s\) of .* no more samples than "
                     r"channels \(.*\): their saturation is not computed \(probes are\); "
                     r"probes.n_test >= \d+ computes it for every layer", record.getMessage())


class ChannelsLastMLP(nn.Module):
    """torchvision ConvNeXt's block layout: a conv and a LayerNorm2d on the (N, C, H, W) map,
    a Permute to (N, H, W, C), a Linear, a GELU and a LayerNorm there, a Permute back."""

    def __init__(self) -> None:
        from torchvision.models.convnext import LayerNorm2d
        from torchvision.ops.misc import Permute

        super().__init__()
        torch.manual_seed(11)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.norm2d = LayerNorm2d(6)
        self.to_last = Permute([0, 2, 3, 1])
        self.mix = nn.Linear(6, 5)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(5)
        self.to_first = Permute([0, 3, 1, 2])
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = self.to_last(self.norm2d(self.conv(x)))
        return self.head(self.to_first(self.norm(self.act(self.mix(h)))).mean((2, 3)))


def test_a_channels_last_map_is_read_like_the_1x1_conv_it_is():
    """Probes pool the positions and saturation counts the C features of every (N, H, W, C)
    map, followed through Permute, Linear, GELU and LayerNorm, exactly as for the same
    network written with 1x1 convs on (N, C, H, W) maps; a LayerNorm2d stays channels first.
    Before, a channels-last map's H rows were taken as its channels."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(40, 1, 8, 6, generator=gen)
    model = ChannelsLastMLP()
    names = ["norm2d", "to_last", "mix", "act", "norm", "to_first"]
    feats, _ = extract_features(model, [(x, torch.zeros(40))], layers=names, size=2)
    with torch.no_grad():  # the reference: 1x1 convs with the Linear's weights, NCHW
        h = model.norm2d(model.conv(x))
        mixed = nn.functional.conv2d(h, model.mix.weight[:, :, None, None], model.mix.bias)
        act = nn.functional.gelu(mixed)
        normed = model.norm(act.movedim(1, -1)).movedim(-1, 1)
    for name, ref in zip(names, (h, h, mixed, act, normed, normed)):
        pooled = nn.functional.adaptive_avg_pool2d(ref, 2).flatten(1).numpy()
        np.testing.assert_allclose(feats[name], pooled, rtol=1e-5, atol=1e-6, err_msg=name)
    sat = layer_saturation(model, [x], layers=["mix"], threshold=0.9)["mix"]
    assert sat.dim == 5 and sat.samples == 40 * 8 * 6
    samples = mixed.movedim(1, -1).reshape(-1, 5).double().numpy()
    ev = np.sort(np.linalg.eigvalsh(np.cov(samples.T)))[::-1]
    np.testing.assert_allclose(sat.eigenvalues / sat.eigenvalues.sum(), ev / ev.sum(),
                               rtol=1e-5, atol=1e-9)


class FunctionLayouts(nn.Module):
    """Channels-last maps made between modules: an embedding Sequential ending in a LayerNorm
    on (N, H, W, C), a residual ``h + mix(h)`` and a GELU module on it, then a
    ``permute`` function back to (N, C, H, W) for a 1x1 conv."""

    def __init__(self) -> None:
        from torchvision.ops.misc import Permute

        super().__init__()
        torch.manual_seed(13)
        self.embed = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), Permute([0, 2, 3, 1]),
                                   nn.LayerNorm(6))
        self.mix = nn.Linear(6, 6)
        self.act = nn.GELU()
        self.out = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        h = self.embed(x)
        return self.out(self.act(h + self.mix(h)).permute(0, 3, 1, 2)).mean((2, 3))


def test_channels_last_maps_made_by_functions_and_containers_are_followed():
    """The Sequential's output (its LayerNorm's map) and the GELU of a residual sum made by a
    function are (N, H, W, C): read as the (N, C, H, W) maps they are. Before, both were
    taken for channels-first (the Sequential's input is the image; the sum is no module's
    output), so probes pooled their rows."""
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(30, 1, 8, 5, generator=gen)
    model = FunctionLayouts()
    feats, _ = extract_features(model, [(x, torch.zeros(30))], layers=["embed", "act", "out"],
                                size=2)
    with torch.no_grad():
        h = model.embed(x)
        act = nn.functional.gelu(h + model.mix(h))
        out = model.out(act.permute(0, 3, 1, 2))
    for name, ref in (("embed", h.movedim(-1, 1)), ("act", act.movedim(-1, 1)), ("out", out)):
        pooled = nn.functional.adaptive_avg_pool2d(ref, 2).flatten(1).numpy()
        np.testing.assert_allclose(feats[name], pooled, rtol=1e-5, atol=1e-6, err_msg=name)


class TokenBlock(nn.Module):
    """A transformer block on an (N, H, W, C) map that runs on its tokens and reshapes them
    back by a view (timm's Swin blocks): no function follows the layout across the view."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        n, h, w, c = x.shape
        t = x.reshape(n, -1, c)
        return (t + self.fc(t)).reshape(n, h, w, c)


class TokenBlocks(FunctionLayouts):
    def __init__(self) -> None:
        super().__init__()
        self.block1, self.block2 = TokenBlock(), TokenBlock()

    def forward(self, x):
        y = self.block2(self.block1(self.embed(x)))
        return self.out(y.permute(0, 3, 1, 2)).mean((2, 3))


def test_a_block_after_a_block_keeps_the_channels_last_layout():
    """block2's input is block1's output, a map made by a view inside block1: block1, a
    container, keeps its input's layout (its output has its input's shape), so block2's
    output is read as (N, C, H, W) too. Before, only leaf modules were followed."""
    x = torch.randn(30, 1, 8, 5, generator=torch.Generator().manual_seed(15))
    model = TokenBlocks()
    feats, _ = extract_features(model, [(x, torch.zeros(30))], layers=["block2"], size=2)
    with torch.no_grad():
        ref = model.block2(model.block1(model.embed(x))).movedim(-1, 1)
    np.testing.assert_allclose(feats["block2"],
                               nn.functional.adaptive_avg_pool2d(ref, 2).flatten(1).numpy(),
                               rtol=1e-5, atol=1e-6)


class LayerNorm2dNoBias(nn.LayerNorm):
    """timm's MetaFormer norm: a LayerNorm over the channels of (N, C, H, W), its name not
    ending in "2d"."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ViewedAndSplit(nn.Module):
    """What the old reading got wrong: a channels-first map after a LayerNorm2d by another
    name (CAFormer); a channels-last map split into gates and joined again by ``cat``
    (MambaOut); the same map partitioned into 2x2 windows by views and merged back
    (HieraDet). The GELU, ``window`` and ``merged`` modules see channels-last tensors,
    ``norm2d`` a channels-first map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(16)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.norm2d = LayerNorm2dNoBias(6)
        self.fc = nn.Linear(6, 12)
        self.act = nn.GELU()
        self.window = nn.Identity()
        self.merged = nn.Identity()
        self.out = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        y = self.norm2d(self.conv(x)).permute(0, 2, 3, 1)  # (N, H, W, 6)
        g, v = torch.split(self.fc(y), [6, 6], dim=-1)
        y = self.act(g) * torch.cat([v[..., :3], v[..., 3:]], dim=-1)
        n, h, w, c = y.shape
        t = y.view(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 2, 2, c)
        t = self.window(t)
        y = t.view(n, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
        return self.out(self.merged(y).permute(0, 3, 1, 2)).mean((2, 3))


def test_maps_moved_by_views_splits_and_cats_keep_their_layout():
    """The probes' features of each module are its map pooled over its positions: for the
    GELU of a split gate, the windows and the merged map, (N, H, W, C) read as such; for a
    LayerNorm2d named otherwise, (N, C, H, W). Before, the split and cat outputs, the views
    into windows and back, and that norm's output were read the other way round."""
    x = torch.randn(30, 1, 8, 6, generator=torch.Generator().manual_seed(17))
    model = ViewedAndSplit()
    feats, _ = extract_features(model, [(x, torch.zeros(30))],
                                layers=["norm2d", "act", "merged"], size=2)
    with torch.no_grad():
        norm = model.norm2d(model.conv(x))
        g, v = torch.split(model.fc(norm.permute(0, 2, 3, 1)), [6, 6], dim=-1)
        act = nn.functional.gelu(g)
        merged = act * v  # the window partition and merge move nothing
    for name, ref in (("norm2d", norm), ("act", act.movedim(-1, 1)),
                      ("merged", merged.movedim(-1, 1))):
        pooled = nn.functional.adaptive_avg_pool2d(ref, 2).flatten(1).numpy()
        np.testing.assert_allclose(feats[name], pooled, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["caformer_s18", "mambaout_femto", "hieradet_small"])
def test_layouts_agree_with_the_receptive_field_analysis_on_timm_models(name):
    """Every module output read as a map (probes, CKA, importance, saturation) is read with
    the layout the receptive-field analysis tracks for it. Before, CAFormer's
    LayerNorm2dNoBias made its maps channels-last, MambaOut's split / cat gates and
    HieraDet's windows moved by views channels-first (67 module outputs of caformer_b36, 37
    of mambaout_base and 4 of hieradet_small read wrong at 64 px)."""
    pytest.importorskip("timm")
    from benchmarks.layouts import captured_layouts, rf_layouts
    from landscape.models.sources import timm_model

    model = timm_model(name, num_classes=10, device="cpu", img_size=64).eval()
    rf = rf_layouts(model, 64)
    read = captured_layouts(model, 64, list(rf))
    assert len(rf) > 50
    wrong = {n: rf[n] for n in rf if read[n] != rf[n]}
    assert not wrong


@pytest.mark.parametrize("stage_name,unit,level_dir", [
    ("probes", "probes_final", "seed=0"), ("importance", "importance_final", "seed=0"),
    ("cka", "cka_final", "cell")])
def test_units_read_before_layouts_were_followed_are_recomputed_for_external_models(
        tmp_path, stage_name, unit, level_dir) -> None:
    """A unit of a stage reading activations, written before channels-last maps were followed
    through functions (no ``layouts`` in its marker), is kept for a built-in architecture
    (its maps are all (N, C, H, W)) and recomputed for any other model (a timm / torchvision
    one, a user's, or a cell whose record is unreadable)."""
    import json

    from landscape import results
    from landscape.models import register_model
    from landscape.models.registry import MODELS
    from landscape.stages.base import STAGES

    from landscape.stages.cka import CKAConfig
    from landscape.stages.importance import ImportanceConfig
    from landscape.stages.probes import ProbesConfig

    stage = STAGES.get(stage_name)
    config = {"probes": ProbesConfig, "importance": ImportanceConfig,
              "cka": CKAConfig}[stage_name]()
    out_dir = tmp_path / "cell-a" / level_dir
    old = {k: v for k, v in stage.recorded_settings(config).items() if k != "layouts"}
    assert set(stage.recorded_settings(config)) - set(old) == {"layouts"}
    results.write_stage(out_dir, unit, [], info={"settings": old})
    record = tmp_path / "cell-a" / "cell.json"

    def reason(name):
        record.write_text(json.dumps({"cell": "cell-a", "identity": {"model.name": name}}))
        return stage.stale_reason(config, out_dir, unit)

    assert reason("resnet18") is None and reason("vgg19") is None
    stale = "settings changed: layouts 'modules' -> 'functions+views+modules'"
    assert reason("timm:convnext_atto") == stale == reason("torchvision:swin_t")
    register_model("user_net_layouts")(lambda **kw: None)
    try:
        assert reason("user_net_layouts") == stale
    finally:
        MODELS._items.pop("user_net_layouts", None)  # type: ignore[attr-defined]
    record.write_text("{not json")
    assert stage.stale_reason(config, out_dir, unit) == stale
    # written when functions were followed on 4-D maps only (windows moved by views,
    # MambaOut's split / cat, timm's LayerNorm2dNoBias read wrong): kept for a built-in
    # architecture, recomputed for any other
    results.write_stage(out_dir, unit, [], info={"settings": {**old,
                                                             "layouts": "functions+modules"}})
    assert reason("resnet18") is None
    assert reason("timm:hieradet_small") == ("settings changed: layouts 'functions+modules' "
                                             "-> 'functions+views+modules'")
    results.write_stage(out_dir, unit, [], info={"settings": stage.recorded_settings(config)})
    assert reason("timm:convnext_atto") is None  # a unit written now records its reading


def _position_net(*, num_classes: int, in_channels: int, pool, **_) -> nn.Module:
    """A conv of a fixed grid added to the first conv's output (EdgeNeXt's positional
    encoding): its output is the same for every image."""
    from landscape.models import RFNet

    class PositionNet(RFNet):
        def __init__(self) -> None:
            super().__init__(pool, in_channels)
            self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
            self.pos = nn.Conv2d(2, 8, 1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
            self.fc = nn.Linear(8, num_classes)

        forward = _position_forward

    return PositionNet()


def _position_forward(self, x: torch.Tensor) -> torch.Tensor:
    grid = torch.ones(x.shape[0], 2, x.shape[-2], x.shape[-1], dtype=x.dtype, device=x.device)
    y = torch.relu(self.conv2(torch.relu(self.conv(x) + self.pos(grid))))
    return self.fc(y.mean((2, 3)))



def test_a_layer_the_image_does_not_reach_is_probed_but_has_no_saturation(tmp_path,
                                                                        caplog) -> None:
    """Its probe is the intercept's (the most frequent class), it gets no saturation rows
    (zero variance has no spectrum), the note names it, and the tail is sought without it;
    the whole unit failed before."""
    from landscape.models.registry import MODELS, register_model

    register_model("probe_position_net")(_position_net)
    try:
        with caplog.at_level("WARNING", logger="landscape"):
            _position_layer_run(tmp_path, caplog)
    finally:
        MODELS._items.pop("probe_position_net", None)  # type: ignore[attr-defined]


def _position_layer_run(tmp_path, caplog) -> None:
    from landscape import pipeline, results
    from landscape.config import ModelConfig, RunConfig
    from landscape.data import DataConfig
    from landscape.stages.probes import ProbesConfig
    from landscape.train import TrainConfig

    cfg = RunConfig(model=ModelConfig(name="probe_position_net", pool_level=0),
                    data=DataConfig(name="synthetic", image_size=8, train_subset=96,
                                    test_subset=48),
                    train=TrainConfig(epochs=1, batch_size=32, lr=0.05),
                    probes=ProbesConfig(enabled=True, n_train=96, n_test=48, batch_size=48,
                                        pool_size=2),
                    results_root=str(tmp_path), device="cpu", num_threads=1, progress=False,
                    report=False)
    assert pipeline.run(cfg).status == "ok"
    df = results.load(tmp_path).query("stage == 'probes_final'")
    acc = df[df.metric == "probe_acc"].set_index("layer")
    assert list(acc.sort_values("index").index) == ["conv", "pos", "conv2", "fc"]
    train = df[df.metric == "probe_train_acc"].set_index("layer")["value"]
    assert 0 < train["pos"] <= 0.5 and acc.loc["pos", "value"] <= 0.5  # one class predicted
    assert set(df[df.metric == "saturation"]["layer"]) == {"conv", "conv2", "fc"}
    note = df["note"].iloc[0]
    assert "out of the tail search (the same output for every test image): pos" in note
    assert "no observed tail" not in caplog.text  # sought among conv, conv2
