"""Linear CKA: float64 oracles, invariances, published reference values, layerwise matrices."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from landscape.cka import (
    MinibatchCKA, center_gram, cka_from_grams, gram_linear, hsic, layerwise_cka,
    layerwise_cka_pairs, linear_cka,
    minibatch_cka,
)
from landscape.models import create_model

# --- dense numpy oracles (textbook formulas, written out) -------------------------------------


def _hsic0(k: np.ndarray, l: np.ndarray) -> float:
    """Biased HSIC, Gretton et al. (2005): tr(K H L H) / (n - 1)^2."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def _hsic1(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC, Song et al. (2012), eq. (5), with zero-diagonal Grams."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    value = (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    )
    return float(value) / (n * (n - 3))


def _cka_oracle(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    k, l = x @ x.T, y @ y.T
    f = _hsic1 if debiased else _hsic0
    return f(k, l) / np.sqrt(f(k, k) * f(l, l))


def _data(seed: int, n: int = 40, p: int = 12, q: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p))
    y = x @ rng.standard_normal((p, q)) + 0.5 * rng.standard_normal((n, q))
    return x, y


# --- published values -------------------------------------------------------------------------


def test_kornblith_demo_reference_values() -> None:
    # google-research/representation_similarity/Demo.ipynb prints, for this data,
    # "Linear CKA: 0.55761" and "Linear CKA (Debiased): 0.51346" (both formulations).
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    for method in ("features", "gram"):
        assert round(linear_cka(x, y, method=method), 5) == 0.55761
        assert round(linear_cka(x, y, debiased=True, method=method), 5) == 0.51346


# --- estimators against oracles; the two formulations agree -----------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 30), p=st.integers(1, 40),
       q=st.integers(1, 40), debiased=st.booleans())
def test_feature_and_gram_formulations_match_oracle(seed, n, p, q, debiased) -> None:
    x, y = _data(seed, n, p, q)
    expected = _cka_oracle(x, y, debiased)
    assert linear_cka(x, y, debiased=debiased, method="features") == pytest.approx(expected, abs=1e-10)
    assert linear_cka(x, y, debiased=debiased, method="gram") == pytest.approx(expected, abs=1e-10)
    assert cka_from_grams(x @ x.T, y @ y.T, debiased=debiased) == pytest.approx(expected, abs=1e-10)
    if not debiased:
        assert -1e-12 <= expected <= 1 + 1e-12


@pytest.mark.parametrize("unbiased", [False, True])
def test_hsic_matches_textbook_formulas(unbiased: bool) -> None:
    x, y = _data(1, n=17)
    k, l = x @ x.T, y @ y.T
    expected = (_hsic1 if unbiased else _hsic0)(k, l)
    assert hsic(k, l, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)
    # Both estimators ignore a common offset of the features (gram_linear centres them).
    assert hsic(gram_linear(x + 3.0), gram_linear(y - 2.0), unbiased=unbiased) == pytest.approx(expected, rel=1e-10)


def test_u_centred_gram_has_zero_diagonal_and_row_sums() -> None:
    x, _ = _data(2, n=11)
    u = center_gram(x @ x.T, unbiased=True).numpy()
    np.testing.assert_allclose(np.diag(u), 0.0, atol=1e-12)
    np.testing.assert_allclose(u.sum(axis=1), 0.0, atol=1e-9)


# --- properties -------------------------------------------------------------------------------


@pytest.mark.parametrize("debiased", [False, True])
def test_identity_symmetry_and_invariances(debiased: bool) -> None:
    x, y = _data(3)
    base = linear_cka(x, y, debiased=debiased)
    assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(y, x, debiased=debiased) == pytest.approx(base, abs=1e-12)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((x.shape[1], x.shape[1])))
    assert linear_cka(x @ q, y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.01 * y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 5.0, y - np.arange(y.shape[1]), debiased=debiased) == pytest.approx(base, abs=1e-10)
    # A general invertible (non-orthogonal, anisotropic) map changes CKA.
    a = np.diag(np.logspace(-2, 2, x.shape[1]))
    assert abs(linear_cka(x @ a, y, debiased=debiased) - base) > 1e-2


def test_float32_large_offset_stays_accurate() -> None:
    x, y = _data(4, n=64, p=30, q=20)
    x32 = torch.tensor(x + 1e4, dtype=torch.float32)
    y32 = torch.tensor(y - 1e4, dtype=torch.float32)
    for debiased in (False, True):
        expected = _cka_oracle(x32.double().numpy() - 1e4, y32.double().numpy() + 1e4, debiased)
        for method in ("features", "gram"):
            assert linear_cka(x32, y32, debiased=debiased, method=method) == pytest.approx(expected, abs=1e-9)
    # The case is hard: double-centring the raw float32 Gram loses the answer.
    n = x32.shape[0]
    h = torch.eye(n) - 1.0 / n
    kc, lc = h @ (x32 @ x32.T) @ h, h @ (y32 @ y32.T) @ h
    naive = float((kc * lc).sum() / (kc.norm() * lc.norm()))
    assert abs(naive - _cka_oracle(x32.double().numpy(), y32.double().numpy())) > 0.05


# --- minibatch estimator ----------------------------------------------------------------------


def test_minibatch_single_batch_equals_debiased() -> None:
    x, y = _data(5, n=30)
    assert minibatch_cka([x], [y]) == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-12)


def test_minibatch_averages_unbiased_hsic_over_batches() -> None:
    x, y = _data(6, n=36)
    xb, yb = np.split(x, 3), np.split(y, 3)
    num = np.mean([_hsic1(a @ a.T, b @ b.T) for a, b in zip(xb, yb)])
    dx = np.mean([_hsic1(a @ a.T, a @ a.T) for a in xb])
    dy = np.mean([_hsic1(b @ b.T, b @ b.T) for b in yb])
    assert minibatch_cka(xb, yb) == pytest.approx(num / np.sqrt(dx * dy), abs=1e-12)


def test_minibatch_accumulator_tracks_all_pairs() -> None:
    x, y = _data(7, n=24)
    z = np.tanh(x[:, :5])
    acc = MinibatchCKA()
    for rows in np.split(np.arange(24), 4):
        acc.update([x[rows], z[rows]], [y[rows], x[rows], z[rows]])
    m = acc.compute()
    assert m.shape == (2, 3) and acc.batches == 4 and acc.examples == 24
    batches = lambda a: [a[r] for r in np.split(np.arange(24), 4)]  # noqa: E731
    for i, a in enumerate((x, z)):
        for j, b in enumerate((y, x, z)):
            assert m[i, j] == pytest.approx(minibatch_cka(batches(a), batches(b)), abs=1e-12)
    assert m[0, 1] == pytest.approx(1.0) and m[1, 2] == pytest.approx(1.0)


def test_estimator_errors() -> None:
    x, y = _data(8, n=10)
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, y[:9])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x[:, 0], y)
    with pytest.raises(ValueError, match="method"):
        linear_cka(x, y, method="svd")
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(x[:3], y[:3], debiased=True)
    with pytest.raises(ValueError, match="symmetric"):
        cka_from_grams(x[:, :10], y @ y.T)
    with pytest.raises(ValueError, match="same rows"):
        MinibatchCKA().update(x, y[:8])
    with pytest.raises(ValueError, match="before any update"):
        MinibatchCKA().compute()
    acc = MinibatchCKA()
    acc.update(x, y)
    with pytest.raises(ValueError, match="same number of representations"):
        acc.update([x, x], y)


# --- layerwise matrices -----------------------------------------------------------------------


def _net(name: str, seed: int, width: float = 0.125) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=5, width=width)


def _inputs(n: int = 24, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _captured_features(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, np.ndarray]:
    feats: dict[str, np.ndarray] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(
        lambda _m, _i, o, n=n: feats.__setitem__(n, o.detach().flatten(1).double().numpy().copy()))
        for n in names]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return feats


def test_layerwise_matches_pairwise_oracle_and_is_not_symmetric() -> None:
    a, b, x = _net("small_cnn", 0), _net("small_cnn", 1), _inputs()
    a.train()
    res = layerwise_cka(a, b, x)
    names = ["features.0", "features.4", "features.8", "classifier"]
    assert res.layers_a == res.layers_b == tuple(names)
    assert res.matrix.shape == (4, 4) and res.matrix.dtype == np.float64
    assert res.estimator == "biased" and res.n == 24 and res.batch_size is None
    fa, fb = _captured_features(a, names, x), _captured_features(b, names, x)
    for i, la in enumerate(names):
        for j, lb in enumerate(names):
            assert res.matrix[i, j] == pytest.approx(_cka_oracle(fa[la], fb[lb]), abs=1e-9)
    assert not np.allclose(res.matrix, res.matrix.T, atol=1e-3)
    np.testing.assert_allclose(layerwise_cka(b, a, x).matrix, res.matrix.T, atol=1e-12)
    assert res.pairs()[1] == ("features.0", "features.4", res.matrix[0, 1])


def test_layerwise_self_has_unit_diagonal_and_restores_mode() -> None:
    model, x = _net("resnet18", 0, width=0.0625), _inputs(32)
    model.train()
    model.layer1.eval()  # a mixed state must come back exactly
    flags = {n: m.training for n, m in model.named_modules()}
    for debiased in (False, True):
        res = layerwise_cka(model, model, x, debiased=debiased)
        np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-12)
        np.testing.assert_allclose(res.matrix, res.matrix.T, atol=1e-12)
    assert len(res.layers_a) == 21 and res.layers_a[0] == "conv1" and res.layers_a[-1] == "linear"
    assert res.layers_a.index("layer2.0.conv2") < res.layers_a.index("layer2.0.shortcut.0")
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(not m._forward_hooks for m in model.modules())


def test_layerwise_minibatch_estimator() -> None:
    a, b, x = _net("small_cnn", 0), _net("small_cnn", 1), _inputs(26)
    full = layerwise_cka(a, b, x, debiased=True)
    one = layerwise_cka(a, b, x, debiased=True, batch_size=26)
    np.testing.assert_allclose(one.matrix, full.matrix, atol=1e-12)
    # batches of 8, 8, 8 and 2 -> the trailing 2 join the previous batch: 8, 8, 10.
    res = layerwise_cka(a, b, x, layers=["features.0", "classifier"], debiased=True, batch_size=8)
    fa = _captured_features(a, ["features.0", "classifier"], x)
    fb = _captured_features(b, ["features.0", "classifier"], x)
    cuts = [slice(0, 8), slice(8, 16), slice(16, 26)]
    for i, la in enumerate(res.layers_a):
        for j, lb in enumerate(res.layers_b):
            expected = minibatch_cka([fa[la][s] for s in cuts], [fb[lb][s] for s in cuts])
            assert res.matrix[i, j] == pytest.approx(expected, abs=1e-10)
    assert res.estimator == "minibatch" and res.batch_size == 8


@pytest.mark.parametrize("debiased,batch_size", [(False, None), (True, None), (True, 8)])
def test_pairs_equal_one_call_per_pair_with_one_forward_per_model_and_batch(
        debiased, batch_size) -> None:
    models = {s: _net("small_cnn", s) for s in (0, 1, 2)}
    x = _inputs(24)
    forwards = {s: 0 for s in models}

    def count(s, _m, args, _out) -> None:  # the layer check's forward of 2 examples aside
        forwards[s] += args[0].shape[0] > 2

    hooks = [m.register_forward_hook(functools.partial(count, s)) for s, m in models.items()]
    for m in models.values():  # the input-size check's one-off dry run happens here
        layerwise_cka(m, m, x[:4])
    forwards.update(dict.fromkeys(models, 0))
    pairs = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2), (2, 0)]
    out = layerwise_cka_pairs(models, x, pairs, debiased=debiased, batch_size=batch_size)
    batches = 1 if batch_size is None else 3
    assert forwards == dict.fromkeys(models, batches)  # not 2 per pair
    for h in hooks:
        h.remove()
    assert list(out) == pairs
    for a, b in pairs:
        one = layerwise_cka(models[a], models[b], x, debiased=debiased, batch_size=batch_size)
        np.testing.assert_allclose(out[(a, b)].matrix, one.matrix, rtol=0, atol=1e-12)
        assert out[(a, b)].layers_a == one.layers_a and out[(a, b)].estimator == one.estimator
    np.testing.assert_allclose(out[(2, 0)].matrix, out[(0, 2)].matrix.T, atol=1e-12)


def test_pairs_errors_name_the_problem() -> None:
    models, x = {0: _net("small_cnn", 0)}, _inputs(8)
    with pytest.raises(ValueError, match=r"pairs name models \[1\] .*keys: \[0\]"):
        layerwise_cka_pairs(models, x, [(0, 1)])
    with pytest.raises(ValueError, match="non-empty sequence"):
        layerwise_cka_pairs(models, x, [])
    with pytest.raises(ValueError, match="non-empty mapping"):
        layerwise_cka_pairs({}, x, [(0, 0)])
    with pytest.raises(ValueError, match=r"models\[0\] has tensors on cpu"):
        layerwise_cka_pairs(models, x, [(0, 0)], device="meta")


class _Reordered(nn.Module):
    """Registers ``late`` before ``early`` but runs ``early`` first."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(4, 4, 3, padding=1)
        self.early = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.unused = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.late(self.act(self.early(x))))


class _Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def test_a_glob_captures_every_call_site_and_leaves_out_what_never_ran(caplog) -> None:
    """A torchvision ResNet block calls its one ``relu`` twice: a glob gets both call sites,
    each one output, in forward order. A ShuffleNet unit of stride 1 never calls its empty
    ``branch1``: left out with one warning. A name given exactly needs one output."""
    from torchvision.models import resnet18, resnet50, shufflenet_v2_x0_5

    from landscape.activations import ActivationCapture, select_modules

    x = torch.randn(2, 3, 32, 32)
    net = resnet18(num_classes=4).eval()
    names = select_modules(net, ["layer1.0*"], arg="probes.layers", example=x)
    # in the order of their outputs: the block's own output (its second relu's) comes last
    assert names == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu@0", "layer1.0.conv2",
                     "layer1.0.bn2", "layer1.0.relu@1", "layer1.0"]
    got = {}
    with torch.no_grad(), ActivationCapture(net, names, lambda n, o: got.update({n: o.clone()})
                                            ) as capture:
        order = capture.run(x)
    assert order == names
    torch.testing.assert_close(got["layer1.0.relu@0"], torch.relu(got["layer1.0.bn1"]))
    torch.testing.assert_close(got["layer1.0.relu@1"], got["layer1.0"])  # the block's output
    with pytest.raises(ValueError, match=r"probes.layers: module 'layer1.0.relu' ran 2 times in "
                                         r"a forward pass, so it has no single output; name "
                                         r"its call sites instead: layer1.0.relu@0, "
                                         r"layer1.0.relu@1"):
        select_modules(net, ["layer1.0.relu"], arg="probes.layers", example=x)
    assert select_modules(net, ["layer1.*.relu@1"], example=x) == ["layer1.0.relu@1",
                                                                   "layer1.1.relu@1"]
    with pytest.raises(ValueError, match=r"'layer1.0.relu@2' ran 2 time\(s\), so it has no "
                                         r"call 2"):
        select_modules(net, ["layer1.0.relu@2"], example=x)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    typed = OverridesParser.create().parse_override("probes.layers=[layer1.0.relu@1,layer2.*]")
    assert typed.value() == ["layer1.0.relu@1", "layer2.*"]  # on the command line, unquoted
    with pytest.raises(ValueError, match=r"a call site is <module>@<k>"):
        select_modules(net, ["layer1.0.relu@last"])
    # the paper's CKA counts every ReLU application: 49 in ResNet50 (1 + 16 blocks x 3)
    relus = select_modules(resnet50(num_classes=4).eval(), None, types=(nn.ReLU,), example=x)
    assert len(relus) == 49 and relus[:4] == ["relu", "layer1.0.relu@0", "layer1.0.relu@1",
                                              "layer1.0.relu@2"]
    shuffle = shufflenet_v2_x0_5(num_classes=4).eval()
    with caplog.at_level("WARNING", logger="landscape"):
        names = select_modules(shuffle, ["stage2.1*"], example=x)
        assert select_modules(shuffle, ["stage2.1*"], example=x[:1]) == names
    assert "stage2.1.branch1" not in names and "stage2.1.branch2.0" in names
    assert caplog.text.count("layers: left out 1 matched module(s) without an output to "
                             "capture: stage2.1.branch1 never ran") == 1  # warned once
    with pytest.raises(ValueError, match="probes.layers: module 'stage2.1.branch1' never ran"):
        select_modules(shuffle, ["stage2.1.branch1"], arg="probes.layers", example=x)
    pair = nn.Sequential(nn.Conv2d(3, 3, 1), _Pair())
    with pytest.raises(ValueError, match=r"module '1' returned tuple, not a tensor"):
        select_modules(pair, ["1"], example=x)
    assert select_modules(pair, ["*"], example=x) == ["0"]
    assert select_modules(pair, None, example=x) == ["0"]
    # without an example nothing runs: every match, as registered
    assert select_modules(net, ["layer1.0.relu"]) == ["layer1.0.relu"]
    folded = _Folded()  # 2 x 2 patches folded into the batch, as MobileViT's transformer
    with caplog.at_level("WARNING", logger="landscape"):
        assert select_modules(folded, None, example=x) == ["conv", "out"]
    assert "inner gives outputs of shape (8, 3, 16, 16) for a batch of 2: its first " \
        "dimension is not the batch" in caplog.text
    with pytest.raises(ValueError, match=r"module 'inner' gives outputs of shape \(8, 3, 16, "
                                         r"16\) for a batch of 2"):
        select_modules(folded, ["inner"], example=x)


class _Folded(nn.Module):
    """A conv on 2 x 2 patches folded into the batch: (B, C, 32, 32) -> (4 B, C, 16, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.inner, self.out = (nn.Conv2d(3, 3, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.conv(x).reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5)
        y = self.inner(y.reshape(b * 4, c, h // 2, w // 2)).reshape(b, 2, 2, c, h // 2, w // 2)
        return self.out(y.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w))


def test_layer_selection_order_and_errors() -> None:
    net, x = _Reordered(), _inputs(8, 8)
    res = layerwise_cka(net, net, x, layers=["early", "late"])
    assert res.layers_a == ("early", "late")
    res = layerwise_cka(net, _net("small_cnn", 0), x, layers=["e*"], layers_b=["features.[04]"])
    assert res.layers_a == ("early",) and res.layers_b == ("features.0", "features.4")
    with pytest.raises(ValueError, match="layers: module 'act' ran 2 times in a forward pass"):
        layerwise_cka(net, net, x, layers=["act"])  # a name given exactly must have one output
    with pytest.raises(ValueError, match="layers: module 'unused' never ran"):
        layerwise_cka(net, net, x, layers=["early", "unused"])
    with pytest.raises(ValueError, match=r"layers pattern 'u\*' matches no module with an "
                                         r"output to capture \(unused never ran\)"):
        layerwise_cka(net, net, x, layers=["u*"])
    # the default leaves out what never ran; a glob takes each call of `act`
    assert layerwise_cka(net, net, x).layers_a == ("early", "late")
    assert layerwise_cka(net, net, x, layers=["*"]).layers_a == ("early", "act@0", "late",
                                                                 "act@1")
    # select_modules itself: forward order with an example, registration order without
    from landscape.activations import select_modules

    assert select_modules(net, ["*"], example=x) == ["early", "act@0", "late", "act@1"]
    assert select_modules(net, ["*"]) == ["late", "early", "act", "unused"]
    with pytest.raises(ValueError, match="'nope' matches no module"):
        layerwise_cka(net, net, x, layers=["early", "nope"])
    with pytest.raises(TypeError, match="sequence of glob patterns"):
        layerwise_cka(net, net, x, layers="early")
    with pytest.raises(ValueError, match="debiased=True"):
        layerwise_cka(net, net, x, layers=["early"], batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        layerwise_cka(net, net, x, layers=["early"], debiased=True, batch_size=2)
    with pytest.raises(ValueError, match="device"):
        layerwise_cka(net, net, x, layers=["early"], device="meta")
    assert all(not m._forward_hooks for m in net.modules())
