"""The one resize of images, labels' logits and attention maps, and the size an image takes at a scale.

Images are resized by :func:`resize_image` alone (bilinear, antialiased when
shrinking) in training crops and at inference, so a model sees at test time
the pixels it learnt from; logits and attention maps go through :func:`resize`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
