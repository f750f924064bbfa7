"""VGG19_rf: the paper's VGG19 with the RF pool right after the first conv (before its BN)."""

from __future__ import annotations

from torch import Tensor, nn

from landscape.models.base import RFNet, scaled
from landscape.models.registry import register_model
from landscape.models.rf_pool import PoolSpec, make_rf_pool

# 16 convs 3x3 pad 1 and 3 max-pools 2x2/2 ("M").
VGG19_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"] + [512] * 8


class VGG(RFNet):
    """conv -> BN -> ReLU blocks; ``features[1]`` is the RF pool; GAP + linear head."""

    def __init__(
        self, cfg: list[int | str], *, num_classes: int, in_channels: int, pool: PoolSpec,
        width: float,
    ) -> None:
        super().__init__(pool, in_channels)
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            c_out = scaled(int(v), width)
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
            if i == 0:
                layers.append(make_rf_pool(pool))
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


@register_model("vgg19")
def vgg19(*, num_classes: int, in_channels: int, pool: PoolSpec, width: float) -> VGG:
    return VGG(VGG19_CFG, num_classes=num_classes, in_channels=in_channels, pool=pool, width=width)
