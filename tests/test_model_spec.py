"""The architecture knobs (issue 25, part 1): stem, stage strides, dilation, skips, depths,
widths and the VGG/ResNet families, each against a hand count."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from landscape.config import RunConfig
from landscape.data.registry import DataConfig
from landscape.identity import cell_hash, identify, identity_dict
from landscape.models import InputTooSmallError, create_model
from landscape.models.spec import ModelSpec, spec_of
from landscape.receptive_field import max_receptive_field, min_feasible_input


def rf(arch: str, **knobs) -> int:
    with torch.device("meta"):
        return max_receptive_field(create_model(arch, num_classes=10, spec=ModelSpec(**knobs)))


def params(arch: str, pool_level: int = 0, **knobs) -> int:
    with torch.device("meta"):
        m = create_model(arch, num_classes=10, pool_level=pool_level, spec=ModelSpec(**knobs))
    return sum(p.numel() for p in m.parameters())


def test_resnet18_stems_and_a_dilated_stage_are_hand_counts():
    # CIFAR stem: conv3 -> 3; layer1: 4 convs +2 -> 11; layer2: strided conv +2 -> 13 (jump 2),
    # 3 convs +4 -> 25; layer3: +4 -> 29 (jump 4), +8 x 3 -> 53; layer4: +8 -> 61 (jump 8),
    # +16 x 3 -> 109 ("Size Matters": RF 109 for the CIFAR stem)
    assert rf("resnet18") == 109
    # ImageNet stem: conv7/2 -> 7 (jump 2), max-pool 3/2 -> 11 (jump 4); then each stage adds
    # 4 convs x 2 x jump: 11 + 4*2*4 = 43, + 2*4 + 3*2*8 = 99, + 2*8 + 3*2*16 = 211,
    # + 2*16 + 3*2*32 = 435 ("Size Matters" / torchvision's ResNet18: 435)
    assert rf("resnet18", stem="imagenet") == 435
    # layer4 dilated by 2 (effective kernel 5): 53 + 4*4 = 69 (jump 8), + 4*8 x 3 = 165
    assert rf("resnet18", dilation=(1, 1, 1, 2)) == 165
    # layer4 without its stride: 53 + 2*4 x 4 = 85
    assert rf("resnet18", stage_strides=(1, 2, 2, 1)) == 85
    # a 5x5 stem: 5, then the same additions as the 3x3 stem: 109 + 2
    assert rf("resnet18", stem_kernel=5) == 111


def test_vgg_families_and_knobs_are_hand_counts():
    # 3x3 convs, pools 2/2 between stages: RF = 1 + 2 * sum(depth_i * jump_i) + pools' 1*jump
    # vgg19 (2, 2, 4, 8): 1 + 2*(2*1 + 2*2 + 4*4 + 8*8) + (1 + 2 + 4) = 180 (DESIGN.md)
    assert rf("vgg19") == 180
    assert rf("vgg11") == 1 + 2 * (1 + 2 + 2 * 4 + 4 * 8) + 7  # 94
    assert rf("vgg16") == 1 + 2 * (2 + 4 + 3 * 4 + 6 * 8) + 7  # 140
    # no downsampling at the last pool (stride 1: the identity): jump stays 4
    assert rf("vgg19", stage_strides=(2, 2, 1)) == 1 + 2 * (2 + 4 + 16 + 8 * 4) + 3  # 112
    # the last stage dilated by 2: its 8 convs add 4 * jump 8 each
    assert rf("vgg19", dilation=(1, 1, 1, 2)) == 180 + 8 * 2 * 8
    assert params("vgg19", depths=(2, 2, 4, 4)) < params("vgg19")


@pytest.mark.parametrize("arch", ["resnet18", "vgg19"])
def test_strides_dilation_and_the_pool_keep_the_parameter_count(arch):
    base = params(arch)
    four = (1, 2, 2, 1) if arch == "resnet18" else (2, 2, 1)
    assert params(arch, stage_strides=four) == base
    assert params(arch, dilation=(2, 2, 2, 2)) == base
    assert params(arch, pool_level=3) == base
    assert params(arch, stem_kernel=5) > base  # a knob that changes it


def test_skips_false_is_the_plain_network_built_by_hand():
    torch.manual_seed(0)
    m = create_model("resnet18", num_classes=10, width=0.125,
                     spec=ModelSpec(skips=False, projection="drop")).eval()
    layers: list[nn.Module] = [m.conv1, m.bn1, m.relu, m.rf_pool]
    for stage in (m.layer1, m.layer2, m.layer3, m.layer4):
        for b in stage:
            assert b.shortcut is None
            layers += [b.conv1, b.bn1, b.relu1, b.conv2, b.bn2, b.relu2]
    plain = nn.Sequential(*layers, m.avgpool, nn.Flatten(), m.linear).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(m(x), plain(x))
    # projection="keep": the same convolutions as with skips, only identity additions gone
    kept = params("resnet18", skips=False)
    assert kept == params("resnet18") > params("resnet18", skips=False, projection="drop")


def test_the_paper_models_keep_their_hash_and_rows_say_the_variant():
    cfg = RunConfig(data=DataConfig(name="synthetic"))
    assert not any(k.startswith("model.") and k not in ("model.name",)
                   for k in identity_dict(cfg))  # knobs at defaults are not in the hash
    ident = identify(cfg)
    assert ident.columns()["arch_variant"] is None and ident.spec == ModelSpec()
    variant = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, stem="imagenet", depths=[2, 2, 2, 1]))
    v = identify(variant)
    assert cell_hash(variant) != cell_hash(cfg)
    assert v.columns()["arch_variant"] == "stem=imagenet,depths=[2, 2, 2, 1]"
    assert v.receptive_field == 435 - 2 * 2 * 32  # layer4 has one block: 2 convs fewer


@pytest.mark.parametrize("arch, knobs, message", [
    ("vgg19", {"skips": False}, "model.skips is not a knob of vgg19; architectures that have "
                                "it: resnet101, resnet18, resnet34, resnet50"),
    ("small_cnn", {"depths": (1, 1)}, "model.depths is not a knob of small_cnn"),
    ("resnet18", {"dilation": (1, 2)}, "model.dilation needs one value per stage: 4 values"),
    ("vgg19", {"stage_strides": (2, 2, 2, 2)}, "model.stage_strides needs one value per stage: "
                                              "3 values (default [2, 2, 2])"),
])
def test_a_knob_the_architecture_lacks_or_of_the_wrong_length_is_named(arch, knobs, message):
    with pytest.raises(ValueError) as e:
        create_model(arch, num_classes=10, spec=ModelSpec(**knobs))
    assert str(e.value).startswith(message), e.value


@pytest.mark.parametrize("fields, message", [
    ({"stem": "tiny"}, "model.stem must be one of cifar, imagenet, got 'tiny'"),
    ({"depths": [2, 0, 2, 2]}, "model.depths must be a non-empty list of integers >= 1"),
    ({"projection": "drop"}, "model.projection applies with model.skips=false only"),
])
def test_bad_knob_values_are_one_line(fields, message):
    cfg = dataclasses.replace(RunConfig().model, **fields)
    with pytest.raises(ValueError, match=message):
        spec_of(cfg)


def test_strides_that_shrink_the_map_to_nothing_name_the_knobs_and_the_smallest_input():
    with pytest.raises(InputTooSmallError) as e:
        create_model("vgg19", num_classes=10, input_size=32,
                     spec=ModelSpec(stage_strides=(4, 4, 4)))
    assert "with the knobs stage_strides=[4, 4, 4] shrinks a 32x32 input to nothing" in str(e.value)
    assert "the smallest square input that works is 64x64" in str(e.value)


def test_min_feasible_input_follows_the_knobs():
    with torch.device("meta"):
        plain = create_model("resnet18", num_classes=10,
                             spec=ModelSpec(skips=False, projection="drop"))
        kept = create_model("resnet18", num_classes=10, spec=ModelSpec(skips=False))
        res = create_model("resnet18", num_classes=10)
    assert min_feasible_input(plain).size == 109  # one path: r_min = r_max
    # the kept projections are short paths past two convs each; identity skips, more of them
    assert min_feasible_input(res).size < min_feasible_input(kept).size < 109


def test_the_last_conv_is_the_deepest_when_a_projection_runs_last():
    from landscape.importance.maps import last_conv

    m = create_model("resnet18", num_classes=10, width=0.125, spec=ModelSpec(depths=(2, 2, 2, 1)))
    # layer4.0.shortcut.0 (1x1, stride 2) runs after layer4.0.conv2 but sees only layer3's RF
    assert last_conv(m, torch.randn(1, 3, 16, 16)) == "layer4.0.conv2"


def test_a_knob_that_changes_the_parameter_count_is_warned_once_per_process(caplog):
    """Validating every run of a grid named the same change once per run (4 times for 2 seeds
    x 2 pool levels)."""
    from landscape.cli.submit import expand_grid
    from landscape.identity import _warn_once, identify, warn_parameter_change

    _warn_once.cache_clear()
    cfgs = expand_grid(["model=resnet18", "model.width=0.125", "model.stem=imagenet",
                        "data=digits", "seed=0,1", "model.pool_level=0,1"])
    with caplog.at_level("WARNING", logger="landscape"):
        for cfg in cfgs:
            warn_parameter_change(identify(cfg))
    found = [r.getMessage() for r in caplog.records if "change the parameter count" in r.message]
    assert len(cfgs) == 4 and len(found) == 1
    assert found[0].startswith("model knobs stem=imagenet change the parameter count of resnet18")
