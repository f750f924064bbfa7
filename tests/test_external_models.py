"""torchvision / timm CNNs in the pipeline with the RF pool right after their first conv."""

import dataclasses
import re
import sys

import pytest
import torch
import torchvision
from torch import nn

from landscape import pipeline, results
from landscape.config import ModelConfig, RunConfig
from landscape.data import DataConfig
from landscape.identity import identify
from landscape.models import build_model, resolve_pool
from landscape.models.spec import ModelSpec
from landscape.receptive_field import max_receptive_field
from landscape.stages.hessian import HessianConfig
from landscape.stages.importance import ImportanceConfig
from landscape.stages.probes import ProbesConfig
from landscape.stages.prune import PruneConfig
from landscape.stages.resolution import ResolutionConfig
from landscape.train import TrainConfig


def _meta(name, level, **kw):
    with torch.device("meta"):
        return build_model(name, resolve_pool(level), num_classes=10, **kw)


def _num_params(model):
    return sum(p.numel() for p in model.parameters())


def _leaf_order(model, x):
    """Names of the leaf modules in the order they run on ``x``."""
    order = []
    handles = [m.register_forward_hook(lambda m, i, o, n=n: order.append(n))
               for n, m in model.named_modules() if n and not list(m.children())]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return order


def _first_conv_then_pool(model, x):
    order = _leaf_order(model, x)
    convs = [i for i, n in enumerate(order)
             if isinstance(model.get_submodule(order[i]), nn.Conv2d)]
    return order[convs[0]], order[convs[0] + 1]


def test_torchvision_resnet18_has_the_pool_right_after_its_first_conv_and_fixed_params():
    model = build_model("torchvision:resnet18", resolve_pool(2), num_classes=10, in_channels=1)
    conv, after = _first_conv_then_pool(model, torch.randn(1, 1, 32, 32))
    assert (conv, after) == ("net.conv1.conv", "net.conv1.rf_pool")
    assert model.rf_pool is model.get_submodule(after)
    assert isinstance(model.rf_pool, nn.MaxPool2d) and model.rf_pool.kernel_size == 3
    assert model.get_submodule(conv).in_channels == 1 and model.net.fc.out_features == 10
    counts = {_num_params(_meta("torchvision:resnet18", lvl, in_channels=1)) for lvl in range(5)}
    # torchvision's own resnet18 for 10 classes, less the 3 -> 1 input channels of conv1
    ref = _num_params(torchvision.models.resnet18(num_classes=10)) - 64 * 2 * 7 * 7
    assert counts == {ref}


def test_rf_grows_with_the_pool_level_as_the_pool_after_conv1_predicts():
    # torchvision resnet18: r = 435 px; conv1 (7x7, stride 2) leaves 428 px = 214 steps of 2
    # px to the rest. A pool (kernel k, stride s) after conv1 adds (k - 1) * 2 px and scales
    # the rest by s: r = 7 + 2 (k - 1) + 428 s.
    rf = [max_receptive_field(_meta("torchvision:resnet18", lvl)) for lvl in range(5)]
    pools = [resolve_pool(lvl) for lvl in range(5)]
    assert rf[0] == 435
    assert rf[1:] == [7 + 2 * (p.kernel - 1) + 428 * p.stride for p in pools[1:]]


def test_same_initialisation_as_the_torchvision_builder():
    torch.manual_seed(3)
    ours = build_model("torchvision:resnet18", resolve_pool(3), num_classes=7)
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(num_classes=7).state_dict()
    mine = ours.state_dict()
    assert sorted(ours.source_key(k) for k in mine) == sorted(ref)
    for k, v in mine.items():
        assert torch.equal(v, ref[ours.source_key(k)]), k


def test_mobilenet_first_conv_inside_a_conv_block():
    model = build_model("torchvision:mobilenet_v3_small", resolve_pool(1), num_classes=10)
    assert _first_conv_then_pool(model, torch.randn(1, 3, 32, 32)) == (
        "net.features.0.0.conv", "net.features.0.0.rf_pool")
    counts = {_num_params(_meta("torchvision:mobilenet_v3_small", lvl)) for lvl in range(5)}
    assert counts == {_num_params(model)}


def test_timm_model_with_a_deep_stem():
    pytest.importorskip("timm")
    model = build_model("timm:test_resnet", resolve_pool(2), num_classes=10, in_channels=1)
    conv, after = _first_conv_then_pool(model, torch.randn(1, 1, 32, 32))
    assert (conv, after) == ("net.conv1.0.conv", "net.conv1.0.rf_pool")  # 3-conv stem
    assert model.get_submodule(conv).in_channels == 1
    counts = {_num_params(_meta("timm:test_resnet", lvl, in_channels=1)) for lvl in range(5)}
    assert counts == {_num_params(model)}
    rf = [max_receptive_field(_meta("timm:test_resnet", lvl)) for lvl in range(5)]
    assert rf == sorted(set(rf))


def test_timm_sets_the_input_channels_itself():
    """TResNet's first conv runs after a 4 x 4 space-to-depth: for one input channel timm
    builds it for 16, which must be kept (replacing it by a 1-channel conv broke the model)."""
    pytest.importorskip("timm")
    model = _meta("timm:tresnet_m", 0, in_channels=1)
    assert model.net.get_submodule(model.first_conv).conv.in_channels == 16
    assert model(torch.empty(2, 1, 32, 32, device="meta")).shape == (2, 10)


@pytest.mark.parametrize("name, message", [
    ("torchvision:resnet19", "unknown torchvision classification model 'resnet19'; did you mean "
                             "resnet18"),
    ("torchvision:vit_b_16", "is not a CNN the RF pool can follow: it has attention layers "
                             "(encoder.layers.encoder_layer_0.self_attention"),
    ("mymodule:build", "the pipeline builds torchvision:<name> or timm:<name>"),
])
def test_bad_names_are_refused_with_the_reason(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _meta(name, 1)


def test_pool_level_0_builds_models_the_rf_pool_cannot_follow_as_their_source_does():
    """A transformer is refused only where a pool would go in; at level 0 (no pool) it is the
    torchvision model itself, so it can be trained beside the CNNs at their base RF."""
    model = _meta("torchvision:vit_b_16", 0)
    reference = torchvision.models.vit_b_16(num_classes=10)
    assert _num_params(model) == _num_params(reference)
    assert isinstance(model.net.conv_proj, nn.Sequential)  # PooledConv(conv, Identity)
    assert isinstance(model.net.conv_proj.rf_pool, nn.Identity)
    with pytest.raises(ValueError, match="it has attention layers"):
        _meta("torchvision:vit_b_16", 2)


def test_timm_transformers_are_built_for_the_analysed_input_size(monkeypatch):
    """A ViT's token grid and a CoAtNet's attention are fixed at construction: built with
    img_size they run (and are analysed) at that size; a CNN ignores it; a size the model
    cannot take is refused with timm's reason."""
    pytest.importorskip("timm")
    from landscape.models.sources import timm_model
    from landscape.receptive_field import receptive_field_table

    vit = timm_model("deit_tiny_patch16_224", num_classes=10, img_size=32)
    assert vit.patch_embed.grid_size == (2, 2)
    t = receptive_field_table(vit, 32)
    assert t.loc[t["layer"] == "patch_embed.proj", "r_max"].item() == 16
    with pytest.raises(Exception, match="doesn't match model"):  # built for 224 as before
        receptive_field_table(timm_model("deit_tiny_patch16_224", num_classes=10), 32)
    assert _num_params(timm_model("resnet18", num_classes=10, img_size=32)) == _num_params(
        timm_model("resnet18", num_classes=10))
    import timm

    def strict(name, img_size=None, **kwargs):  # a model that checks its size when built
        assert img_size is None or img_size % 7 == 0, "img_size must be a multiple of 7"
        return nn.Identity()

    monkeypatch.setattr(timm, "create_model", strict)
    with pytest.raises(ValueError, match="timm:deit_tiny_patch16_224 cannot be built for a 30 "
                                         "px input .AssertionError: img_size must be"):
        timm_model("deit_tiny_patch16_224", num_classes=10, img_size=30)


def test_timm_close_names_and_missing_timm(monkeypatch):
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match="unknown timm model 'resnet10'; did you mean resnet10t"):
        _meta("timm:resnet10", 1)
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ValueError, match=re.escape("pip install 'rf-landscape[timm]'")):
        _meta("timm:resnet10t", 1)


def test_width_and_knobs_are_refused_for_external_models():
    with pytest.raises(ValueError, match=r"model.width=0.5: .*must be 1 for torchvision/timm"):
        _meta("torchvision:resnet18", 1, width=0.5)
    with pytest.raises(ValueError, match="model.stem is not a knob of torchvision:resnet18"):
        _meta("torchvision:resnet18", 1, spec=ModelSpec(stem="imagenet"))


def _digits_cfg(root, **model):
    model = {"name": "torchvision:resnet18", "pool_level": 2, **model}
    return RunConfig(model=ModelConfig(**model),
                     data=DataConfig(name="digits", image_size=16, train_subset=64,
                                     test_subset=32),
                     train=TrainConfig(epochs=1, batch_size=64, lr=0.05),
                     results_root=str(root), device="cpu", progress=False)


def test_weights_round_trip_identity_and_mismatch(tmp_path):
    src = torchvision.models.resnet18(num_classes=10)
    src.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # digits: one channel
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    model = build_model("torchvision:resnet18", resolve_pool(2), num_classes=10, in_channels=1,
                        weights=str(path))
    ref = src.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[model.source_key(k)]), k
    # the identity hashes the content: a copy elsewhere is the same cell, other weights not
    plain = identify(_digits_cfg(tmp_path))
    loaded = identify(_digits_cfg(tmp_path, weights=str(path)))
    assert loaded.cell_hash != plain.cell_hash and loaded.weights == str(path)
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())
    assert identify(_digits_cfg(tmp_path, weights=str(copy))).cell_hash == loaded.cell_hash
    torch.manual_seed(1)
    restarted = loaded.build_model()
    assert torch.equal(restarted.net.fc.weight, src.fc.weight)
    wrong = tmp_path / "wrong.pt"
    torch.save(torchvision.models.resnet18(num_classes=100).state_dict(), wrong)
    with pytest.raises(ValueError, match=re.escape(
            "does not fit torchvision:resnet18 as built for the data: other shape: conv1.weight "
            "(file [64, 3, 7, 7], model [64, 1, 7, 7]), fc.weight (file [100, 512], model "
            "[10, 512]), fc.bias")):
        identify(_digits_cfg(tmp_path, weights=str(wrong)))
    with pytest.raises(ValueError, match=r"model.weights='.*nope.pt': no such file"):
        identify(_digits_cfg(tmp_path, weights=str(tmp_path / "nope.pt")))


def test_statistics_from_model_weights_are_not_called_stale(tmp_path, caplog):
    """One training step leaves 90% of each BatchNorm's starting statistics: from a fresh
    init that is a warning (and a report caveat), from model.weights it is the file's."""
    from analysis.report import caveat_blocks

    src = torchvision.models.resnet18(num_classes=10)
    src.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    with caplog.at_level("WARNING", logger="landscape"):
        pipeline.run(_digits_cfg(tmp_path, weights=str(path)))
    assert "BatchNorm" not in caplog.text
    df = results.load(tmp_path)
    bn = df[df.metric == "bn_initial_share"].iloc[0]
    assert bn.value == pytest.approx(0.9) and bn.note.endswith("; initial = model.weights")
    assert caveat_blocks(df) == []


def test_pipeline_trains_and_prunes_a_torchvision_resnet18(tmp_path):
    cfg = dataclasses.replace(_digits_cfg(tmp_path), prune=PruneConfig(enabled=True, rates=[0.5]))
    summary = pipeline.run(cfg)
    assert summary.status == "ok" and summary.ran[:2] == ["receptive_field", "train"]
    assert summary.ran[2].startswith("prune_magnitude_0.5")
    df = results.load(tmp_path)
    assert set(df.arch) == {"torchvision:resnet18"}
    cell = df.run_id.iloc[0].split("/")[0]
    assert re.fullmatch(r"torchvision-resnet18-w1-digits-pool2-[0-9a-f]{10}", cell)
    assert (tmp_path / cell / "seed=0" / "checkpoints" / "final.pt").is_file()
    assert df[df.metric == "num_params"]["value"].item() == (
        _num_params(torchvision.models.resnet18(num_classes=10)) - 64 * 2 * 7 * 7)
    assert set(df.receptive_field) == {7 + 2 * 2 + 428 * 2}  # pool level 2: k 3, s 2
    assert df.query("stage == 'prune' and metric == 'sparsity'")["value"].item() == \
        pytest.approx(0.5, abs=0.01)
    r_max = df.query("stage == 'receptive_field' and metric == 'rf_r_max'").set_index("layer")
    assert r_max.loc["net.conv1.conv", "value"] == 7  # then the pool: 7 + 2 * (3 - 1)
    assert r_max.loc["net.conv1.rf_pool", "value"] == 11


def test_pipeline_measures_a_timm_model_in_every_run_stage(tmp_path):
    """Hessian, structured pruning (torch-pruning), importance at the last conv and probes on
    a small timm CNN (torchvision's smallest ResNet takes ~1.4 s per Hessian-vector product
    here)."""
    pytest.importorskip("timm")
    cfg = dataclasses.replace(
        _digits_cfg(tmp_path, name="timm:test_resnet"),
        data=DataConfig(name="digits", image_size=16, train_subset=64, test_subset=160),
        prune=PruneConfig(enabled=True, rates=[0.5], structured=True),
        hessian=HessianConfig(enabled=True, checkpoints=["final"], k=1, n_samples=8,
                              batch_size=8, density_runs=0, trace_samples=0),
        importance=ImportanceConfig(enabled=True, n_samples=2),
        probes=ProbesConfig(enabled=True, pool_size=1,
                           layers=["net.conv1.0.conv", "net.layer1.0.conv1", "net.fc"]))
    summary = pipeline.run(cfg)
    assert summary.status == "ok"
    df = results.load(tmp_path)
    assert set(df.arch) == {"timm:test_resnet"}
    assert re.fullmatch(r"timm-test_resnet-w1-digits-pool2-[0-9a-f]{10}",
                        df.run_id.iloc[0].split("/")[0])
    assert df.query("metric == 'hessian_eigenvalue'")["value"].item() > 0
    prune = df.query("stage == 'prune'").set_index("metric")["value"]
    assert prune["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert df.query("metric == 'importance_max'")["value"].item() > 0
    probed = df.query("metric == 'probe_acc'")["layer"].tolist()
    assert probed == ["net.conv1.0.conv", "net.layer1.0.conv1", "net.fc"]


def test_pipeline_builds_a_timm_vit_for_the_runs_input_size(tmp_path):
    """The "Size Matters" input-size axis for transformers: a timm ViT runs at the run's
    image size (built with img_size: 4 tokens at 32 px), trains, its checkpoint reloads into
    the model later stages build (the probes here) and is evaluated at other sizes."""
    pytest.importorskip("timm")
    cfg = dataclasses.replace(
        _digits_cfg(tmp_path, name="timm:deit_tiny_patch16_224", pool_level=0),
        data=DataConfig(name="digits", image_size=32, train_subset=64, test_subset=32),
        probes=ProbesConfig(enabled=True, n_train=32, n_test=32, layers=["net.blocks.0"]),
        resolution=ResolutionConfig(enabled=True, sizes=[16, 32, 48]))
    assert pipeline.run(cfg).status == "ok"
    df = results.load(tmp_path)
    # evaluated at other sizes on copies timm builds for them, the position table resampled
    res = df.query("metric == 'resolution_test_acc'").set_index("index")
    assert sorted(res.index) == [16, 32, 48]
    final = df.query("stage == 'train' and metric == 'test_acc'").sort_values("index")
    assert res.loc[32, "value"] == final["value"].iloc[-1]
    assert "resampled" not in res.loc[32, "note"]
    assert all("resampled=pos_embed (the source's checkpoint filter)" in res.loc[s, "note"]
               for s in (16, 48))
    params = df.query("metric == 'num_params'")["value"].item()
    at_224 = _num_params(build_model("timm:deit_tiny_patch16_224", resolve_pool(0),
                                     num_classes=10, in_channels=1))
    assert at_224 - params == (197 - 5) * 192  # position table: 1 + 196 tokens vs 1 + 4
    assert df.query("metric == 'probe_acc'")["layer"].tolist() == ["net.blocks.0"]
    rf = df.query("stage == 'receptive_field' and metric == 'rf_r_max'").set_index("layer")
    assert rf.loc["net.patch_embed.proj.conv", "value"] == 16
    # the RF column is the patch embedding's, and every row says that attention follows it
    assert set(df["receptive_field"]) == {16} and df["global_mixing"].all()
    from analysis.tables import cell_levels
    assert cell_levels(df)["label"].tolist() == ["RF 16 px, then global (pool 0)"]


@pytest.mark.parametrize("override, message", [
    ("model.name=torchvision:vit_b_16 model.pool_level=2", "is not a CNN the RF pool can follow"),
    ("model.name=torchvision:vit_b_32", "torchvision:vit_b_32 cannot be built for a 16 px "
                                        "input (AssertionError: Input shape indivisible by "
                                        "patch size!)"),
    ("model.name=torchvision:resnet18 model.width=0.5", "model.width=0.5: torchvision:resnet18"),
    ("model.name=torchvision:resnet18 model.weights=/nonexistent/w.pt",
     "model.weights='/nonexistent/w.pt': no such file"),
])
def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path, override, message, console):
    code, _, err = console("run_main", "data=synthetic", f"results_root={tmp_path / 'r'}",
                           *override.split())
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "r").exists()


def test_report_file_names_are_file_system_safe():
    import pandas as pd

    from analysis.tables import grid_slug
    g = pd.DataFrame({"arch": ["torchvision:resnet34"], "width": [1.0], "dataset": ["cifar10"]})
    assert grid_slug(g) == "torchvision-resnet34-w1-cifar10"


def test_landscape_rf_refuses_weights(tmp_path, console):
    code, _, err = console("rf_main", "model.name=torchvision:resnet18", "model.weights=w.pt")
    assert code == 2 and err.strip() == (
        "landscape-rf: error: model.weights: landscape-rf analyses shapes only and loads no "
        "weights; drop it (it is a setting of landscape-run)")


def test_too_small_input_names_the_torchvision_model_and_layer():
    from landscape.models import InputTooSmallError
    with pytest.raises(InputTooSmallError, match=re.escape(
            "shrinks a 16x16 input to nothing at layer 'net.features.8' of "
            "torchvision:squeezenet1_1; use a lower pool level or a larger input "
            "(data.image_size). the smallest square input that works is 31x31")):
        _meta("torchvision:squeezenet1_1", 2, input_size=16)


def test_a_model_whose_first_layer_is_not_a_conv_is_refused(monkeypatch):
    from landscape.models import external

    def fake(name, **kw):  # a normalisation before the first conv
        return nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, kw["num_classes"]))

    monkeypatch.setattr(external, "external_model", fake)
    with pytest.raises(ValueError, match=re.escape(
            "model.name='torchvision:bn_first' is not a CNN the RF pool can follow: the first "
            "layer with parameters to run is 0 (BatchNorm2d), not a Conv2d")):
        _meta("torchvision:bn_first", 1)


class PatchLinear(nn.Module):
    """NaFlexViT's and Gemma4's embedding: 4x4 patches reshaped out of the image, a Linear
    over each patch's pixels (no Conv2d anywhere), then mean pooling and a head."""

    def __init__(self, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj, self.head = nn.Linear(in_chans * 16, 8), nn.Linear(8, num_classes)

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 1, 3, 5)
        return self.head(self.proj(x.reshape(b, h // 4, w // 4, c * 16)).mean((1, 2)))


def test_a_model_without_a_first_conv_trains_at_pool_level_0(tmp_path, monkeypatch):
    """At level 0 nothing is wrapped: the source's model as it is (``first_conv`` None), so a
    Linear-first transformer trains and is measured; a level that inserts the pool is still
    refused with the reason, and a torchvision one cannot take other input channels."""
    from landscape.models import external

    def fake(name, **kw):
        with torch.device(kw["device"]):
            return PatchLinear(kw["num_classes"], kw["in_channels"])

    monkeypatch.setattr(external, "external_model", fake)
    external.first_conv_name.cache_clear()
    model = build_model("timm:patch_linear", resolve_pool(0), num_classes=10, in_channels=1)
    assert model.first_conv is None and isinstance(model.rf_pool, nn.Identity)
    assert model.state_key("proj.weight") == "net.proj.weight"
    assert model.source_key("net.proj.weight") == "proj.weight"
    with pytest.raises(ValueError, match=re.escape(
            "the first layer with parameters to run is proj (Linear), not a Conv2d")):
        build_model("timm:patch_linear", resolve_pool(1), num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match=re.escape(
            "model.name='torchvision:patch_linear': cannot set in_channels=1: its first "
            "layer with parameters is not a Conv2d")):
        build_model("torchvision:patch_linear", resolve_pool(0), num_classes=10, in_channels=1)
    summary = pipeline.run(_digits_cfg(tmp_path, name="timm:patch_linear", pool_level=0))
    assert summary.status == "ok" and summary.ran == ["receptive_field", "train"]
    df = results.load(tmp_path)
    assert set(df.receptive_field) == {4}  # the patch, read by its Linear
    assert df.query("metric == 'num_params'")["value"].item() == 1 * 16 * 8 + 8 + 8 * 10 + 10
    r_max = df.query("stage == 'receptive_field' and metric == 'rf_r_max'")
    assert r_max.set_index("layer").loc["net.proj", "value"] == 4
    external.first_conv_name.cache_clear()


def test_weights_of_a_built_in_architecture(tmp_path):
    src = build_model("small_cnn", resolve_pool(1), num_classes=10, width=0.25)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(5)
    loaded = build_model("small_cnn", resolve_pool(3), num_classes=10, width=0.25,
                         weights=str(tmp_path / "w.pt"))  # the pool has no parameters
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(ValueError, match=r"other shape: classifier.weight \(file \[10, 16\], "
                                         r"model \[7, 16\]\), classifier.bias"):
        build_model("small_cnn", resolve_pool(1), num_classes=7, width=0.25,
                    weights=str(tmp_path / "w.pt"))


def test_a_model_the_rf_analysis_cannot_follow_still_trains(tmp_path, monkeypatch, caplog):
    """An op the RF analysis does not follow (an LSTM over tokens, F.fold) leaves the
    receptive_field column empty, with a warning naming it, and one rf_unsupported row: the
    run trains (before, the identity refused the model)."""
    from analysis.tables import cell_levels
    from landscape import identity as ident_module
    from landscape.receptive_field import UnsupportedModelError
    from landscape.stages import receptive_field as rf_stage

    def unsupported(*args, **kwargs):
        raise UnsupportedModelError("module 'net.rnn' (LSTM) is not supported")

    monkeypatch.setattr(ident_module, "feature_field", unsupported)
    monkeypatch.setattr(rf_stage, "receptive_field_table", unsupported)
    ident_module._model_facts.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="landscape.identity"):
            assert pipeline.run(_digits_cfg(tmp_path)).status == "ok"
    finally:
        ident_module._model_facts.cache_clear()
    assert "receptive_field column is left empty: module 'net.rnn' (LSTM)" in caplog.text
    df = results.load(tmp_path)
    assert df["receptive_field"].isna().all() and df["global_mixing"].isna().all()
    rf = df.query("stage == 'receptive_field'").set_index("metric")
    assert rf.loc["rf_unsupported", "value"] == 1
    assert "(LSTM) is not supported" in rf.loc["rf_unsupported", "note"]
    assert rf.loc["flops_per_image", "value"] > 0
    assert df.query("stage == 'train' and metric == 'test_acc'")["value"].notna().all()
    assert cell_levels(df)["label"].tolist() == ["RF unknown (pool 2)"]
