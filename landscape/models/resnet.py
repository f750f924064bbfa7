"""ResNets with the RF pool after the stem (conv + BN + ReLU), CIFAR-style by default.

Bottleneck/BasicBlock stages, stride on the 3x3 conv, 1x1 projection shortcuts where shape
changes, global average pool, linear head. Every ReLU is its own module so that forward hooks
see each activation exactly once. ``resnet18/34`` (BasicBlock, 2-2-2-2 / 3-4-6-3 blocks) and
``resnet50/101`` (Bottleneck, 3-4-6-3 / 3-4-23-3). Knobs (:mod:`landscape.models.spec`):
``stem`` (``cifar``: 3x3 stride 1; ``imagenet``: 7x7 stride 2 and a 3x3 stride-2 max-pool
``stem_pool`` after the RF pool), ``stem_kernel/stride/channels``, ``stage_strides``
(default 1, 2, 2, 2), ``dilation``, ``skips``, ``projection``, ``depths``, ``widths``.
"""

from __future__ import annotations

from torch import Tensor, nn

from landscape.models.base import RFNet, scaled
from landscape.models.registry import register_model
from landscape.models.rf_pool import PoolSpec, make_rf_pool
from landscape.models.spec import ModelSpec, stage_values

KNOBS = ("stem", "stem_kernel", "stem_stride", "stem_channels", "stage_strides", "dilation",
         "skips", "projection", "depths", "widths")
WIDTHS = (64, 128, 256, 512)


def _shortcut(c_in: int, c_out: int, stride: int, skips: bool, projection: str
              ) -> nn.Module | None:
    """The block's shortcut: identity or a 1x1 projection where the shape changes; without
    skips, None for an identity shortcut, and for a projection too with ``"drop"``."""
    if stride == 1 and c_in == c_out:
        return nn.Identity() if skips else None
    if not skips and projection == "drop":
        return None
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, dilation: int = 1,
                 skips: bool = True, projection: str = "keep") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(c_in, planes, stride, skips, projection)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu2(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, dilation: int = 1,
                 skips: bool = True, projection: str = "keep") -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = _shortcut(c_in, c_out, stride, skips, projection)
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu3(out)


class ResNet(RFNet):
    def __init__(
        self, block: type[BasicBlock] | type[Bottleneck], num_blocks: tuple[int, ...], *,
        num_classes: int, in_channels: int, pool: PoolSpec, width: float,
        spec: ModelSpec | None = None,
    ) -> None:
        super().__init__(pool, in_channels)
        spec = spec or ModelSpec()
        imagenet = spec.stem == "imagenet"
        depths = stage_values(spec, "depths", tuple(num_blocks))
        widths = stage_values(spec, "widths", WIDTHS)
        strides = stage_values(spec, "stage_strides", (1, 2, 2, 2))
        dilations = stage_values(spec, "dilation", (1, 1, 1, 1))
        stem = scaled(spec.stem_channels or 64, width)
        k = spec.stem_kernel or (7 if imagenet else 3)
        self.conv1 = nn.Conv2d(in_channels, stem, k, stride=spec.stem_stride or (2 if imagenet
                               else 1), padding=k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.rf_pool = make_rf_pool(pool)
        self.stem_pool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet else None
        c_in = stem
        stages = []
        for planes, n, s, d in zip(widths, depths, strides, dilations):
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, scaled(planes, width), s if j == 0 else 1, d,
                                    spec.skips, spec.projection))
                c_in = scaled(planes, width) * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.rf_pool(self.relu(self.bn1(self.conv1(x))))
        if self.stem_pool is not None:
            x = self.stem_pool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.avgpool(x).flatten(1))


FAMILY = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
          "resnet50": (Bottleneck, (3, 4, 6, 3)), "resnet101": (Bottleneck, (3, 4, 23, 3))}


def _register(name: str) -> None:
    block, depths = FAMILY[name]

    @register_model(name, knobs=KNOBS)
    def build(*, num_classes: int, in_channels: int, pool: PoolSpec, width: float,
              spec: ModelSpec) -> ResNet:
        return ResNet(block, depths, num_classes=num_classes, in_channels=in_channels,
                      pool=pool, width=width, spec=spec)

    build.__name__ = build.__qualname__ = name


for _name in FAMILY:
    _register(_name)
