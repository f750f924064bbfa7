"""Layer saturation: streaming float64 covariance, known-rank features, delve 0.1.50 parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from landscape.probes import (
    CovarianceAccumulator, accumulator_saturation, intrinsic_dimension, layer_accumulators,
    layer_saturation, samples_of, saturation_frame, saturation_from_covariance,
)


def _rank_r(n: int, d: int, r: int, seed: int, offset: float = 0.0) -> np.ndarray:
    """n samples in d dims spanning exactly r orthogonal directions with equal variance:
    Z (n x r) has orthonormal centred columns, so the covariance's non-zero eigenvalues are
    all 1/n."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, r))
    z -= z.mean(axis=0)
    z, _ = np.linalg.qr(z)  # orthonormal columns, still centred (orthogonal to ones)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return z @ basis[:, :r].T + offset


def _acc(x, batch: int | None = None, name: str = "x") -> CovarianceAccumulator:
    acc = CovarianceAccumulator(name)
    x = torch.as_tensor(x)
    for part in ([x] if batch is None else torch.split(x, batch)):
        acc.update(part)
    return acc


# --- definitions --------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(d=st.integers(2, 24), data=st.data(), seed=st.integers(0, 10_000),
       offset=st.sampled_from([0.0, 3.0, -1e3]))
def test_known_rank_gives_rank_over_dim(d, data, seed, offset) -> None:
    r = data.draw(st.integers(1, d))
    x = _rank_r(4 * d + 8, d, r, seed, offset)
    acc = _acc(x, batch=7)
    smallest = accumulator_saturation(acc, 0.99, rule="smallest")
    assert smallest.intrinsic_dim == r and smallest.saturation == r / d
    # delve counts the directions explaining strictly less than 99%: r - 1 of r equal ones
    assert accumulator_saturation(acc, 0.99, rule="delve").intrinsic_dim == r - 1


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 16), seed=st.integers(0, 10_000),
       offset=st.sampled_from([0.0, 3.0, -1e3]))
def test_total_variance_is_the_covariance_trace(d, seed, offset) -> None:
    x = torch.randn(3 * d + 5, d, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64) + offset
    acc = _acc(x, batch=4)
    assert acc.total_variance == pytest.approx(float(acc.covariance().trace()), rel=1e-9)
    assert acc.total_variance == pytest.approx(float(x.var(dim=0, unbiased=False).sum()),
                                               rel=1e-9)
    assert _acc(torch.full((9, d), offset), batch=4).total_variance == 0  # every sample equal


def test_one_default_rule_the_papers_everywhere() -> None:
    import inspect

    from landscape.probes import saturation
    from landscape.stages.probes import ProbesConfig

    for fn in (saturation.accumulator_saturation, saturation.layer_saturation,
               saturation.saturation_from_covariance):
        assert inspect.signature(fn).parameters["rule"].default == "smallest", fn.__name__
    assert ProbesConfig().saturation_rule == saturation.DEFAULT_RULE == "smallest"


def test_intrinsic_dimension_rules_at_and_around_the_threshold() -> None:
    eig = np.array([5.0, 3.0, 1.0, 1.0])  # explained: 0.5, 0.8, 0.9, 1.0
    assert intrinsic_dimension(eig, 0.8, "smallest") == 2  # p_2 = 0.8 >= 0.8
    assert intrinsic_dimension(eig, 0.8, "delve") == 1     # #{p_k < 0.8} = 1
    assert intrinsic_dimension(eig, 0.81, "smallest") == 3
    assert intrinsic_dimension(eig, 0.81, "delve") == 2
    assert intrinsic_dimension(eig, 0.4, "smallest") == 1
    assert intrinsic_dimension(eig, 0.4, "delve") == 0  # delve's "at least 1" is a no-op


def test_covariance_equals_numpy_population_covariance() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 9)) @ rng.standard_normal((9, 9)) + 5.0
    cov = _acc(x.astype(np.float32), batch=37).covariance().numpy()
    expected = np.cov(x.astype(np.float32).astype(np.float64), rowvar=False, bias=True)
    np.testing.assert_allclose(cov, expected, rtol=0, atol=1e-12)


def test_one_batch_or_many_or_merged_give_the_same_result() -> None:
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((24, 6, 5, 5)), dtype=torch.float32)
    one = _acc(x)
    many = _acc(x, batch=5)
    halves = _acc(x[:11]).merge(_acc(x[11:]))
    assert one.count == many.count == halves.count == 24 * 25
    for other in (many, halves):
        assert (one.covariance() - other.covariance()).abs().max() <= 1e-12
        assert (one.mean() - other.mean()).abs().max() <= 1e-12
        a, b = accumulator_saturation(one), accumulator_saturation(other)
        assert a.intrinsic_dim == b.intrinsic_dim
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=0, atol=1e-12)


def test_conv_outputs_are_channelwise_samples() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    s = samples_of(x)
    assert s.shape == (8, 3)
    assert torch.equal(s[5], x[1, :, 0, 1])  # image 1, position (0, 1): its 3 channels


def test_token_outputs_are_one_sample_per_token() -> None:
    """(N, L, D), features last (a transformer's Linear): N*L samples of D dimensions; the
    streamed covariance, in uneven batches, is numpy's over those rows."""
    x = torch.randn(5, 7, 4, dtype=torch.float64) + 2.0
    s = samples_of(x)
    assert s.shape == (35, 4) and torch.equal(s[9], x[1, 2])  # image 1, token 2
    acc = _acc(x, batch=2)
    assert (acc.count, acc.dim) == (35, 4)
    np.testing.assert_allclose(acc.covariance().numpy(),
                               np.cov(s.numpy(), rowvar=False, bias=True), rtol=1e-12,
                               atol=1e-12)
    with pytest.raises(ValueError, match=r"\(N, L, D\) \(tokens\)"):
        samples_of(torch.zeros(2, 3, 4, 5, 6))


def test_large_offset_keeps_its_digits() -> None:
    """Raw sums E[xx^T] - mu mu^T cancel ~1e12 against ~1e12 here; the centred update does
    not."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 4)) + 1e6
    cov = _acc(x, batch=100).covariance().numpy()
    expected = np.cov(x, rowvar=False, bias=True)
    np.testing.assert_allclose(cov, expected, rtol=1e-9, atol=1e-9)
    raw = x.T @ x / len(x) - np.outer(x.mean(0), x.mean(0))
    assert np.abs(raw - expected).max() > 1e-6  # the naive formula loses them


# --- through a model ----------------------------------------------------------------------


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def test_one_forward_per_batch_feeds_every_layer() -> None:
    model = _net().train()
    calls = []
    model.register_forward_pre_hook(lambda m, i: calls.append((m.training, len(i[0]))))
    batches = [(torch.randn(4, 3, 6, 6), torch.zeros(4)) for _ in range(3)]
    accs = layer_accumulators(model, batches)
    # one eval forward per batch, after the layer check's of 2 examples
    assert calls == [(False, 2)] + [(False, 4)] * 3
    assert model.training  # the caller's mode is restored
    assert list(accs) == ["0", "2", "5"]
    assert [a.count for a in accs.values()] == [12 * 36, 12 * 16, 12]
    res = layer_saturation(model, [b[0] for b in batches], layers=["0", "2"])
    frame = saturation_frame(res)
    assert list(frame["layer"]) == ["0", "2"] and list(frame["dim"]) == [6, 8]
    assert frame["saturation"].between(0, 1).all() and list(frame["samples"]) == [432, 192]


def test_layer_saturation_equals_the_accumulator_on_captured_outputs() -> None:
    model = _net().eval()
    x = torch.randn(10, 3, 6, 6)
    with torch.no_grad():
        out = model[0](x)
    expected = accumulator_saturation(_acc(out), 0.9)
    got = layer_saturation(model, [x[:3], x[3:]], layers=["0"], threshold=0.9)["0"]
    assert got.intrinsic_dim == expected.intrinsic_dim
    np.testing.assert_allclose(got.eigenvalues, expected.eigenvalues, atol=1e-12)


# --- errors -------------------------------------------------------------------------------


def test_too_few_samples_names_the_layer() -> None:
    model = _net()
    with pytest.raises(ValueError, match=r"layer '5': 4 samples for 5 dimensions, need at least 6"):
        layer_saturation(model, [torch.randn(4, 3, 6, 6)], layers=["5"])
    res = layer_saturation(model, [torch.randn(4, 3, 6, 6)], layers=["5"],
                           allow_rank_deficient=True)
    assert res["5"].samples == 4
    with pytest.raises(ValueError, match="need at least 2"):
        accumulator_saturation(_acc(np.ones((1, 3))), allow_rank_deficient=True)


def test_zero_variance_names_the_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)  # constant conv output, dead ReLU, constant Linear output
    for layer in ("0", "3"):
        with pytest.raises(ValueError, match=rf"layer '{layer}': zero total variance"):
            layer_saturation(model, [torch.randn(20, 3, 1, 1)], layers=[layer])


@pytest.mark.parametrize("threshold", [0, 1, 1.5, -0.1, True, "0.99"])
def test_bad_threshold(threshold) -> None:
    with pytest.raises(ValueError, match="threshold must be a number in"):
        saturation_from_covariance(np.eye(3), threshold)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="rule must be one of"):
        saturation_from_covariance(np.eye(3), rule="paper")
    with pytest.raises(ValueError, match="square"):
        saturation_from_covariance(np.ones((2, 3)), layer="fc")
    with pytest.raises(ValueError, match="layer 'video'.*shape \\(2, 3, 4, 5, 6\\)"):
        CovarianceAccumulator("video").update(torch.zeros(2, 3, 4, 5, 6))
    acc = _acc(np.ones((3, 2)), name="fc")
    with pytest.raises(ValueError, match="fc: samples have 3 dimensions, earlier ones had 2"):
        acc.update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="cannot merge"):
        acc.merge(_acc(np.ones((3, 4))))
    with pytest.raises(ValueError, match="empty: no samples"):
        CovarianceAccumulator("empty").covariance()
    with pytest.raises(ValueError, match="layers pattern 'nope' matches no module"):
        layer_saturation(_net(), [torch.randn(2, 3, 6, 6)], layers=["nope"])
    with pytest.raises(ValueError, match="batches yielded no batch"):
        layer_saturation(_net(), [])
    with pytest.raises(ValueError, match="non-finite"):
        saturation_from_covariance(np.full((2, 2), np.nan), layer="bad")


# --- delve 0.1.50 -------------------------------------------------------------------------


def test_same_values_as_delve_on_the_same_activations() -> None:
    delve_utils = pytest.importorskip("delve.torch_utils")
    from delve.metrics import compute_intrinsic_dimensionality, compute_saturation

    rng = np.random.default_rng(3)
    mix = rng.standard_normal((16, 16)) * np.logspace(0, -2, 16)  # a spread-out spectrum
    out = torch.tensor(rng.standard_normal((30, 5, 5, 16)) @ mix).permute(0, 3, 1, 2)
    theirs = delve_utils.TorchCovarianceMatrix(device="cpu")
    ours = CovarianceAccumulator("conv")
    for part in torch.split(out, 7):
        # delve's channelwise reshape (torchcallback.py, conv_method == 'channelwise')
        theirs.update(part.permute(1, 0, 2, 3).flatten(1).permute(1, 0), False)
        ours.update(part)
    assert (ours.covariance() - theirs.fix()).abs().max() <= 1e-12
    for t in (0.5, 0.9, 0.95, 0.99, 0.999):
        res = accumulator_saturation(ours, t, rule="delve")
        assert res.intrinsic_dim == compute_intrinsic_dimensionality(theirs.fix(), t)
        assert res.saturation == compute_saturation(theirs.fix(), t)


def test_delve_tracker_matches_on_one_batch_and_keeps_only_the_last(tmp_path) -> None:
    delve = pytest.importorskip("delve")
    model = _net().eval()
    x = torch.randn(40, 3, 6, 6)
    tracker = delve.SaturationTracker(str(tmp_path), save_to="csv", modules=model,
                                      device="cpu", stats=["lsat"])
    with torch.no_grad():
        model(x)
    logs = tracker.logs["eval-covariance-matrix"]
    ours = layer_saturation(model, [x[:13], x[13:]], rule="delve")
    assert set(logs) == {n.replace(".", "-") for n in ours}
    from delve.metrics import compute_saturation
    for name, res in ours.items():
        assert res.saturation == compute_saturation(logs[name].fix(), 0.99)
    with torch.no_grad():  # a second batch replaces the first in delve 0.1.50's tracker
        model(x[:9])
    assert logs["5"]._tlen == 9  # not 40 + 9


def test_saturation_benchmark_quick_agrees_with_the_reference_and_delve() -> None:
    from benchmarks.__main__ import main as bench_main

    (row,) = bench_main(["saturation", "--quick"])["saturation"]
    assert row["max_abs_diff_vs_reference"] == 0.0 and row["layers"] == 4
    assert row["ours_seconds"] > 0 and row["reference_seconds"] > 0
    if row["delve"]:
        assert row["max_abs_diff_vs_delve_one_batch"] == 0.0
        assert row["max_rel_cov_diff_vs_delve"] <= 1e-9
        # delve 0.1.50's tracker keeps the last of 4 batches only
        assert row["delve_streamed_samples_first_layer"] * 4 == row["ours_samples_first_layer"]
