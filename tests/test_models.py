import pytest
import torch
from torch import nn

from landscape.models import (
    InputTooSmallError, check_input_size, create_model, list_models, pool_preset, resolve_pool,
)
from landscape.registry import UnknownNameError

ARCHS = ["vgg19", "resnet18", "resnet50", "small_cnn"]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_the_architectures():
    assert set(ARCHS) <= set(list_models())


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError, match="unknown model 'vgg17'.*resnet50.*vgg19"):
        create_model("vgg17", num_classes=10)


@pytest.mark.parametrize("arch", ARCHS)
def test_param_count_independent_of_pool(arch):
    counts = {n_params(create_model(arch, num_classes=10, pool_level=L)) for L in range(5)}
    counts.add(n_params(create_model(arch, num_classes=10, pool_kernel=4, pool_stride=1)))
    assert len(counts) == 1


def test_param_counts_match_reference_cifar_resnets():
    # The widely used CIFAR ResNets (kuangliu/pytorch-cifar) have exactly these counts.
    assert n_params(create_model("resnet18", num_classes=10)) == 11_173_962
    assert n_params(create_model("resnet50", num_classes=10)) == 23_520_842


def test_vgg19_param_count_by_hand():
    cfg = [64, 64, 128, 128, 256, 256, 256, 256] + [512] * 8
    c_in, total = 3, 0
    for c in cfg:
        total += c_in * c * 9 + c + 2 * c  # conv weight + bias, BN weight + bias
        c_in = c
    total += 512 * 10 + 10
    assert n_params(create_model("vgg19", num_classes=10)) == total


def test_pool_presets_match_design():
    assert pool_preset(0) == (0, 1, 0)
    assert pool_preset(1) == (2, 1, 0)
    for L in range(2, 9):
        assert pool_preset(L) == (L + 1, L, 1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("level", range(5))
def test_rf_pool_module(arch, level):
    m = create_model(arch, num_classes=10, pool_level=level, width=0.125)
    k, s, p = pool_preset(level)
    if level == 0:
        assert isinstance(m.rf_pool, nn.Identity)
    else:
        assert isinstance(m.rf_pool, nn.MaxPool2d)
        assert (m.rf_pool.kernel_size, m.rf_pool.stride, m.rf_pool.padding) == (k, s, p)


def _forward_order(model, x):
    order = []
    hooks = [mod.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
             for n, mod in model.named_modules() if n and not list(mod.children())]
    model(x)
    for h in hooks:
        h.remove()
    return order


def test_vgg19_layout_pool_after_first_conv_before_bn():
    m = create_model("vgg19", num_classes=10, pool_level=2, width=0.125)
    kinds = [type(x).__name__ for x in m.features]
    assert kinds[:4] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert kinds.count("Conv2d") == 16
    assert kinds.count("MaxPool2d") == 4  # 3 stage pools + the RF pool
    assert [x.kernel_size for x in m.features if isinstance(x, nn.Conv2d)] == [(3, 3)] * 16


def test_resnet_stem_then_pool_then_stages():
    m = create_model("resnet50", num_classes=10, pool_level=3, width=0.0625)
    order = _forward_order(m, torch.randn(1, 3, 32, 32))
    assert order[:5] == ["conv1", "bn1", "relu", "rf_pool", "layer1.0.conv1"]
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    # stride on the 3x3 conv; 1x1 projection shortcut
    b = m.layer2[0]
    assert b.conv2.stride == (2, 2) and b.conv1.stride == (1, 1)
    assert b.shortcut[0].kernel_size == (1, 1) and b.shortcut[0].stride == (2, 2)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)


def test_width_and_channels_arguments():
    m = create_model("resnet18", num_classes=7, in_channels=1, width=0.25)
    assert m.conv1.in_channels == 1 and m.conv1.out_channels == 16
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 7)


def test_explicit_pool_overrides_preset_fieldwise():
    a, b = resolve_pool(3, kernel=2), resolve_pool(0, kernel=2, stride=3, padding=1)
    assert (a.kernel, a.stride, a.padding) == (b.kernel, b.stride, b.padding) == (2, 3, 1)
    spec = resolve_pool(0, kernel=5, stride=1)  # kernel-only sweep at fixed stride
    assert (spec.kernel, spec.stride, spec.padding) == (5, 1, 0)
    m = create_model("small_cnn", num_classes=10, pool_level=2, pool_kernel=5)
    assert (m.rf_pool.kernel_size, m.rf_pool.stride, m.rf_pool.padding) == (5, 2, 1)


@pytest.mark.parametrize("kwargs, field", [
    (dict(pool_level=-1), "pool_level"),
    (dict(pool_level=1, pool_kernel=2, pool_padding=2), "pool_padding"),
    (dict(pool_level=1, pool_stride=0), "pool_stride"),
    (dict(width=0), "width"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    kwargs = {"num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=field):
        create_model("small_cnn", **kwargs)


def test_impossible_pool_is_a_clear_error_at_build_and_a_torch_error_at_forward():
    with pytest.raises(InputTooSmallError, match=r"pool level 4 .*16x16.*smallest square input"):
        create_model("vgg19", num_classes=10, pool_level=4, width=0.125, input_size=16)
    m = create_model("vgg19", num_classes=10, pool_level=4, width=0.125)
    with pytest.raises(InputTooSmallError, match="pool level 4"):
        check_input_size(m, 16)
    # a forward does no check of its own: torch's error, no dry run, no hook on the model
    assert not any(mod._forward_pre_hooks or mod._forward_hooks for mod in m.modules())
    with pytest.raises(RuntimeError, match="Output size is too small"):
        m(torch.randn(2, 3, 16, 16))
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_check_message_names_pool_size_layer_and_smallest_input():
    m = create_model("small_cnn", num_classes=10, pool_level=4)
    with pytest.raises(InputTooSmallError) as err:
        check_input_size(m, (4, 6))
    assert str(err.value) == (
        "pool level 4 (kernel 5, stride 4, padding 1) shrinks a 4x6 input to nothing at layer "
        "'features.7' of SmallCNN; use a lower pool level or a larger input (data.image_size). "
        "the smallest square input that works is 15x15"
    )


def test_smallest_valid_size_is_exact():
    m = create_model("vgg19", num_classes=10, pool_level=4, width=0.125)
    with pytest.raises(InputTooSmallError, match=r"smallest square input that works is (\d+)x") as e:
        check_input_size(m, 8)
    smallest = int(str(e.value).rsplit("works is ", 1)[1].split("x")[0])
    check_input_size(m, smallest)
    with pytest.raises(InputTooSmallError):
        check_input_size(m, smallest - 1)


def test_a_forward_that_fails_at_every_size_is_not_called_too_small():
    """A model that breaks whatever the size (a stem written for 3 channels given 1) gets its
    own error, not 'shrinks the input to nothing'."""
    from landscape.models import RFNet, resolve_pool

    class ThreeChannelStem(RFNet):
        def __init__(self) -> None:
            super().__init__(resolve_pool(0), in_channels=1)
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x.reshape(x.shape[0], 3, x.shape[2], -1))

    with pytest.raises(ValueError, match=r"ThreeChannelStem fails on a 32x32 input before its "
                       r"first layer and at every larger square size up to 4096 px, so not for its "
                       r"size \(1 input channel\(s\)\): shape '\[1, 3, 32, -1\]' is invalid") as e:
        check_input_size(ThreeChannelStem(), 32)
    assert not isinstance(e.value, InputTooSmallError)


def test_input_check_leaves_mode_unchanged():
    m = create_model("small_cnn", num_classes=10, pool_level=1).train()
    check_input_size(m, 16)
    assert m.training and all(mod.training for mod in m.modules())
