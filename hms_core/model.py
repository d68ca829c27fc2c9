"""The per-scale segmentation model: trunk + head + 1x1 class classifier."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hms_core.heads import build_head
from hms_core.trunks import PRETRAINED_NONE, build_trunk


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False); the identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The one image resize of training and inference: bilinear (align_corners=False),
    antialiased when either side shrinks; the identity when the size already matches.

    Experts learn on antialiased downscales (``data.random_scale_crop_flip``), so
    HMS, evaluation, prediction and export must shrink images the same way: a
    model sees at test time the same kind of pixels it was trained on.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=bool(shrink))


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Spatial size of an image of ``size`` resized by factor ``scale``."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


class SegModel(nn.Module):
    """A DeepLab branch: ``p = up(conv1x1(head(trunk(x))))`` at the input's size."""

    def __init__(self, trunk: str, head: str, num_classes: int, output_stride: int = 16,
                 head_channels: int = 256, atrous_rates: tuple[int, ...] = (6, 12, 18),
                 pretrained: str = PRETRAINED_NONE) -> None:
        super().__init__()
        self.trunk = build_trunk(trunk, output_stride, pretrained)
        self.head = build_head(head, self.trunk.out_channels, self.trunk.low_channels, head_channels,
                               atrous_rates)
        self.classifier = nn.Conv2d(head_channels, num_classes, kernel_size=1)
        self.feature_channels = head_channels

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits at the input size, decoder features at stride 4 or the output stride)."""
        features = self.head(self.trunk(x))
        logits = resize(self.classifier(features), tuple(x.shape[-2:]))
        return logits, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


MODEL_META_KEYS = ("trunk", "head", "num_classes", "output_stride", "head_channels", "atrous_rates")


def build_seg_model(meta: dict[str, Any], pretrained: str = PRETRAINED_NONE) -> SegModel:
    """Build a :class:`SegModel` from the architecture fields saved with every checkpoint."""
    return SegModel(meta["trunk"], meta["head"], meta["num_classes"], meta["output_stride"],
                    meta["head_channels"], tuple(meta["atrous_rates"]), pretrained)
