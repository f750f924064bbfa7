"""A small plain CNN for tests, oracles and quick experiments (same RF-pool convention)."""

from __future__ import annotations

from torch import Tensor, nn

from landscape.models.base import RFNet, scaled
from landscape.models.registry import register_model
from landscape.models.rf_pool import PoolSpec, make_rf_pool


class SmallCNN(RFNet):
    """conv3x3 -> RF pool -> BN -> ReLU -> [conv3x3 -> BN -> ReLU -> maxpool2] x2 -> GAP -> linear."""

    def __init__(self, *, num_classes: int, in_channels: int, pool: PoolSpec, width: float) -> None:
        super().__init__(pool, in_channels)
        c1, c2, c3 = scaled(16, width), scaled(32, width), scaled(64, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), make_rf_pool(pool), nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c3, num_classes)

    @property
    def rf_pool(self) -> nn.Module:
        return self.features[1]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@register_model("small_cnn")
def small_cnn(*, num_classes: int, in_channels: int, pool: PoolSpec, width: float) -> SmallCNN:
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, pool=pool, width=width)
