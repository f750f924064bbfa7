"""A tensor a model derives from its parameters and keeps between forwards (timm's eval-mode
attention-bias tables) is recomputed on every call, so measurements that change the
parameters or differentiate with respect to them see the parameters they were given."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from landscape.hessian.operator import HessianOperator, model_mode, second_derivatives
from landscape.models import build_model, resolve_pool
from landscape.models.caches import recompute_parameter_caches

levit = pytest.importorskip("timm.models.levit")


class _AttentionNet(nn.Module):
    """A conv, timm's LeViT attention block (attention biases gathered from a parameter) and a
    linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.attn = levit.Attention(8, 4, num_heads=2, attn_ratio=2, resolution=4, use_conv=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.attn(self.conv(x)).mean((2, 3)))


def _net_and_data():
    torch.manual_seed(0)
    net = _AttentionNet().double()
    with torch.no_grad():
        net.attn.attention_biases.normal_()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)  # timm initialises the projection's BN weight to 0
    return net.eval(), torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2] * 2)


def _dense_hessian(net, x, y):
    """The float64 Hessian of the mean loss, by torch.autograd.functional.hessian over the flat
    parameters (the cache emptied before each forward)."""
    params = dict(net.named_parameters())
    flat = torch.cat([p.detach().flatten() for p in params.values()])

    def loss(theta):
        split = torch.split(theta, [p.numel() for p in params.values()])
        state = {n: t.view_as(p) for (n, p), t in zip(params.items(), split)}
        net.attn.attention_bias_cache.clear()
        return nn.functional.cross_entropy(functional_call(net, state, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.parametrize("method", ["reverse_over_reverse", "forward_over_reverse"])
def test_the_hessian_of_an_attention_bias_table_equals_the_dense_oracle(method):
    net, x, y = _net_and_data()
    assert recompute_parameter_caches(net) == ["attn"]
    with torch.no_grad():
        net(x)  # an evaluation before, as after training
    dense = _dense_hessian(net, x, y)
    op = HessianOperator(net, nn.functional.cross_entropy, [(x[:3], y[:3]), (x[3:], y[3:])],
                         method=method)
    v = torch.randn(op.dim, dtype=torch.float64)
    with model_mode(net, "eval"), second_derivatives():
        first, second = op(v), op(v)  # every call and batch sees the biases
    torch.testing.assert_close(first, dense @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_without_it_the_cached_table_gives_a_wrong_hessian():
    """What the framework measured before: the table of the first batch, then a constant."""
    net, x, y = _net_and_data()
    dense = _dense_hessian(net, x, y)
    op = HessianOperator(net, nn.functional.cross_entropy, [(x[:3], y[:3]), (x[3:], y[3:])])
    v = torch.randn(op.dim, dtype=torch.float64)
    with model_mode(net, "eval"), second_derivatives():
        assert not torch.allclose(op(v), dense @ v, rtol=1e-3)


def test_a_built_timm_model_reads_its_parameters_changed_in_eval_mode():
    """A loss slice or interpolated weights change the parameters of a model in eval mode; a
    model built by the framework reads them, and so does its deep copy, alone."""
    model = build_model("timm:efficientvit_m0", resolve_pool(0), num_classes=4, in_channels=1,
                        input_size=32).eval()
    blocks = [m for m in model.modules() if hasattr(m, "attention_bias_cache")]
    assert blocks and recompute_parameter_caches(model) == []  # done once, at build time
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
        twin = copy.deepcopy(model)
        for m in twin.modules():
            if hasattr(m, "attention_bias_cache"):
                m.attention_biases.add_(1.0 + torch.rand_like(m.attention_biases))
        twin(x)
        for a, b in zip(blocks, [m for m in twin.modules() if hasattr(m, "attention_bias_cache")]):
            torch.testing.assert_close(a.get_attention_biases(x.device),
                                       a.attention_biases[:, a.attention_bias_idxs])
            torch.testing.assert_close(b.get_attention_biases(x.device),
                                       b.attention_biases[:, b.attention_bias_idxs])
            assert not b.attention_bias_cache
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


@pytest.mark.parametrize("stage_name,unit,level_dir", [
    ("hessian", "hessian_final", "seed=0"), ("slice", "slice_1d_final", "seed=0"),
    ("sharpness", "sharpness_final", "seed=0"), ("prune", "prune_x", "seed=0"),
    ("finetune", "finetune_x", "seed=0"), ("connectivity", "connectivity_final", "cell")])
def test_units_that_kept_a_stale_bias_table_are_recomputed_for_those_models(
        tmp_path, stage_name, unit, level_dir):
    """A unit of a stage that perturbs or differentiates the parameters, written before the
    tables were recomputed per call (no ``parameter_caches`` in its marker), is recomputed
    for a model with such a table (LeViT, EfficientViT-M, a user's architecture with a LeViT
    block, or a cell whose record is unreadable) and kept for any other (a built-in
    architecture, a timm ResNet)."""
    import json

    from landscape import results
    from landscape.config import RunConfig
    from landscape.models import register_model
    from landscape.models.registry import MODELS
    from landscape.stages.base import STAGES

    stage = STAGES.get(stage_name)
    config = getattr(RunConfig(), stage.config_field) if stage.config_field else None
    out_dir = tmp_path / "cell-a" / level_dir
    now = stage.recorded_settings(config)
    old = {k: v for k, v in now.items() if k != "parameter_caches"}
    assert set(now) - set(old) == {"parameter_caches"}
    results.write_stage(out_dir, unit, [], info={"settings": old})
    record = tmp_path / "cell-a" / "cell.json"

    def reason(name):
        record.write_text(json.dumps({"cell": "cell-a", "identity": {"model.name": name}}))
        return stage.stale_reason(config, out_dir, unit)

    assert reason("resnet18") is None and reason("timm:resnet10t") is None
    stale = "settings changed: parameter_caches 'first forward' -> 'per call'"
    assert reason("timm:levit_128s") == stale == reason("timm:efficientvit_m0")
    register_model("user_attention_net")(lambda **kw: _AttentionNet())
    try:
        assert reason("user_attention_net") == stale
    finally:
        MODELS._items.pop("user_attention_net", None)  # type: ignore[attr-defined]
    record.write_text("{not json")
    assert stage.stale_reason(config, out_dir, unit) == stale
    results.write_stage(out_dir, unit, [], info={"settings": now})
    assert reason("timm:levit_128s") is None  # a unit written now records its reading


def test_the_model_zoo_split_check_finds_a_kept_table():
    """``python -m benchmarks model_zoo`` checks on every model that the Hessian does not depend
    on how the batch is split (in float64): the cached table breaks that, the recomputed one
    does not."""
    from benchmarks.model_zoo import SPLIT_TOL, split_gap

    net, x, y = _net_and_data()
    x, y = torch.randn(4, 1, 4, 4, dtype=torch.float64), y[:4]
    assert split_gap(net, x, y) > 1e3 * SPLIT_TOL
    recompute_parameter_caches(net)
    assert split_gap(net, x, y) < SPLIT_TOL
