"""VGG_rf: the paper's VGG19 (and VGG11/13/16 built the same way) with the RF pool right after
the first conv (before its BN).

The paper's VGG19 is torchvision's configuration without its last two max-pools: 16 convs
(3x3, padding 1) in stages of 2, 2, 4, 8 convs with 64, 128, 256, 512 channels, separated by
three 2x2 stride-2 max-pools. VGG11/13/16 drop the same two pools from their torchvision
configurations: stages of 1, 1, 2, 4 / 2, 2, 2, 4 / 2, 2, 3, 6 convs. Knobs
(:mod:`landscape.models.spec`): ``stem_kernel``, ``stem_stride``, ``stem_channels`` (the first
conv), ``stage_strides`` (the three pools), ``dilation``, ``depths``, ``widths``.
"""

from __future__ import annotations

from torch import Tensor, nn

from landscape.models.base import RFNet, scaled
from landscape.models.registry import register_model
from landscape.models.rf_pool import PoolSpec, make_rf_pool
from landscape.models.spec import ModelSpec, stage_values

WIDTHS = (64, 128, 256, 512)
DEPTHS = {"vgg11": (1, 1, 2, 4), "vgg13": (2, 2, 2, 4), "vgg16": (2, 2, 3, 6),
          "vgg19": (2, 2, 4, 8)}
KNOBS = ("stem_kernel", "stem_stride", "stem_channels", "stage_strides", "dilation", "depths",
         "widths")


class VGG(RFNet):
    """conv -> BN -> ReLU blocks; ``features[1]`` is the RF pool; GAP + linear head."""

    def __init__(
        self, depths: tuple[int, ...], *, num_classes: int, in_channels: int, pool: PoolSpec,
        width: float, spec: ModelSpec | None = None,
    ) -> None:
        super().__init__(pool, in_channels)
        spec = spec or ModelSpec()
        depths = stage_values(spec, "depths", depths)
        widths = stage_values(spec, "widths", WIDTHS)
        strides = stage_values(spec, "stage_strides", (2, 2, 2))
        dilations = stage_values(spec, "dilation", (1, 1, 1, 1))
        layers: list[nn.Module] = []
        c_in = in_channels
        for stage, (n, channels, d) in enumerate(zip(depths, widths, dilations)):
            if stage:  # the pool between stages: kernel = stride (1: no downsampling)
                layers.append(nn.MaxPool2d(kernel_size=strides[stage - 1],
                                           stride=strides[stage - 1]))
            for j in range(n):
                first = not layers
                c_out = scaled(spec.stem_channels if first and spec.stem_channels else channels,
                               width)
                if first:
                    k = spec.stem_kernel or 3
                    layers.append(nn.Conv2d(c_in, c_out, kernel_size=k, padding=k // 2,
                                            stride=spec.stem_stride or 1))
                    layers.append(make_rf_pool(pool))
                else:
                    layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=d,
                                            dilation=d))
                layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    @property
    def rf_pool(self) -> nn.Module:
        return self.features[1]

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def _register(name: str) -> None:
    @register_model(name, knobs=KNOBS)
    def build(*, num_classes: int, in_channels: int, pool: PoolSpec, width: float,
              spec: ModelSpec) -> VGG:
        return VGG(DEPTHS[name], num_classes=num_classes, in_channels=in_channels, pool=pool,
                   width=width, spec=spec)

    build.__name__ = build.__qualname__ = name


for _name in DEPTHS:
    _register(_name)
