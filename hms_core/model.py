"""The per-scale segmentation model: trunk + head + 1x1 class classifier."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hms_core.heads import DEEPLAB_HEADS, HEADS, SEGFORMER, build_head
from hms_core.trunks import MIT_TRUNKS, OUTPUT_STRIDES, PRETRAINED_NONE, build_trunk


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


def heads_for_trunk(trunk: str) -> tuple[str, ...]:
    """The heads ``trunk`` can carry.

    SegFormer's decoder reads the four stages of a MiT trunk, which the
    torchvision trunks do not return; the DeepLab heads' ASPP is made for a
    dilated CNN at stride 8 or 16, not for MiT's undilated stride 32.
    """
    return (SEGFORMER,) if trunk in MIT_TRUNKS else DEEPLAB_HEADS


def architecture_error(trunk: str, head: str, output_stride: int) -> tuple[str, str, Any] | None:
    """``(key, expected, value)`` for the first of ``head`` and ``output_stride`` that does not fit
    ``trunk``; None when they all go together (``trunk`` is assumed known)."""
    heads = heads_for_trunk(trunk)
    if head not in heads:
        why = ("the DeepLab heads need a dilated CNN trunk at stride 8 or 16" if trunk in MIT_TRUNKS
               else f"head {SEGFORMER} needs a MiT trunk: {', '.join(MIT_TRUNKS)}")
        return "head", f"{' or '.join(heads)} for trunk {trunk} ({why})", head
    strides = OUTPUT_STRIDES[trunk]
    if output_stride not in strides:
        return "output_stride", f"{' or '.join(map(str, strides))} for trunk {trunk}", output_stride
    return None


class SegModel(nn.Module):
    """A segmentation branch (DeepLab or SegFormer): ``p = up(conv1x1(head(trunk(x))))`` at the input's size."""

    def __init__(self, trunk: str, head: str, num_classes: int, output_stride: int = 16,
                 head_channels: int = 256, atrous_rates: tuple[int, ...] = (6, 12, 18),
                 pretrained: str = PRETRAINED_NONE) -> None:
        super().__init__()
        # Unknown names are left to build_trunk / build_head, which list the known ones.
        if trunk in OUTPUT_STRIDES and head in HEADS and (error := architecture_error(trunk, head, output_stride)):
            key, expected, value = error
            raise ValueError(f"{key}: expected {expected}, got {value!r}")
        self.trunk = build_trunk(trunk, output_stride, pretrained)
        # Only MiT trunks have stage widths (the segformer head reads all four stages).
        self.head = build_head(head, self.trunk.out_channels, self.trunk.low_channels, head_channels,
                               atrous_rates, getattr(self.trunk, "stage_channels", None))
        self.classifier = nn.Conv2d(head_channels, num_classes, kernel_size=1)
        self.feature_channels = head_channels

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits at the input size, decoder features at stride 4 (DeepLabV3+, SegFormer)
        or the output stride (DeepLabV3)).

        The logits are upsampled to the input here, so that HMS fuses the scales at full
        resolution: fusing at stride 4 of the scale-1.0 input instead (tried) drops what
        scale 2.0 sees, 78.2 -> 72.4 mIoU for HMS (0.5, 1, 2) on the embedded data.
        """
        features = self.head(self.trunk(x))
        logits = resize(self.classifier(features), tuple(x.shape[-2:]))
        return logits, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input size."""
        return self.forward_features(x)[0]


MODEL_META_KEYS = ("trunk", "head", "num_classes", "output_stride", "head_channels", "atrous_rates")


def build_seg_model(meta: dict[str, Any], pretrained: str = PRETRAINED_NONE) -> SegModel:
    """Build a :class:`SegModel` from the architecture fields saved with every checkpoint."""
    return SegModel(meta["trunk"], meta["head"], meta["num_classes"], meta["output_stride"],
                    meta["head_channels"], tuple(meta["atrous_rates"]), pretrained)
