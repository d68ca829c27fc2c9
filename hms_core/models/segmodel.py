"""The per-scale segmentation model: trunk + head + 1x1 class classifier."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hms_core.data.labels import build_grouping
from hms_core.data.resize import resize
from hms_core.models.dilated import skip_dead_taps
from hms_core.models.heads import (CONCAT, DECODER, DEEPLAB_HEADS, HEADS, LOW_LEVEL_CHANNELS, SEGFORMER,
                                   build_head)
from hms_core.models.mit import MIT_TRUNKS
from hms_core.models.trunks import OUTPUT_STRIDES, build_trunk
from hms_core.models.weights import PRETRAINED_NONE


def heads_for_trunk(trunk: str) -> tuple[str, ...]:
    """The heads ``trunk`` can carry.

    SegFormer's decoder reads the four stages of a MiT trunk, which the
    torchvision trunks do not return; the DeepLab heads' ASPP is made for a
    dilated CNN at stride 8 or 16, not for MiT's undilated stride 32.
    """
    return (SEGFORMER,) if trunk in MIT_TRUNKS else DEEPLAB_HEADS


def architecture_error(trunk: str, head: str, output_stride: int, attention_features: str = DECODER
                       ) -> tuple[str, str, Any] | None:
    """``(key, expected, value)`` for the first of ``head``, ``output_stride`` and ``attention_features``
    that does not fit ``trunk`` (and ``head``); None when they all go together (``trunk`` is assumed known)."""
    heads = heads_for_trunk(trunk)
    if head not in heads:
        why = ("the DeepLab heads need a dilated CNN trunk at stride 8 or 16" if trunk in MIT_TRUNKS
               else f"head {SEGFORMER} needs a MiT trunk: {', '.join(MIT_TRUNKS)}")
        return "head", f"{' or '.join(heads)} for trunk {trunk} ({why})", head
    strides = OUTPUT_STRIDES[trunk]
    if output_stride not in strides:
        return "output_stride", f"{' or '.join(map(str, strides))} for trunk {trunk}", output_stride
    if attention_features == CONCAT and head != "deeplabv3plus":
        return ("model.attention_features", f"{DECODER} for head {head} (only deeplabv3plus has a stride-4 "
                f"concatenation)", attention_features)
    return None


class SegModel(nn.Module):
    """A segmentation branch (DeepLab or SegFormer): ``p = up(conv1x1(head(trunk(x))))`` at the input's size.

    ``attention_features`` names the features :meth:`forward_features` returns for the HMS attention
    head: the decoder's output ``f`` (``decoder``) or its stride-4 input (``concat``, DeepLabV3+).
    """

    def __init__(self, trunk: str, head: str, num_classes: int, output_stride: int = 16,
                 head_channels: int = 256, atrous_rates: tuple[int, ...] = (6, 12, 18),
                 pretrained: str = PRETRAINED_NONE, attention_features: str = DECODER) -> None:
        super().__init__()
        # Unknown names are left to build_trunk / build_head, which list the known ones.
        if trunk in OUTPUT_STRIDES and head in HEADS and (
                error := architecture_error(trunk, head, output_stride, attention_features)):
            key, expected, value = error
            raise ValueError(f"{key}: expected {expected}, got {value!r}")
        self.trunk = build_trunk(trunk, output_stride, pretrained)
        # Only MiT trunks have stage widths (the segformer head reads all four stages).
        self.head = build_head(head, self.trunk.out_channels, self.trunk.low_channels, head_channels,
                               atrous_rates, getattr(self.trunk, "stage_channels", None))
        self.classifier = nn.Conv2d(head_channels, num_classes, kernel_size=1)
        self.attention_reads_concat = attention_features == CONCAT
        self.feature_channels = head_channels + LOW_LEVEL_CHANNELS * self.attention_reads_concat
        skip_dead_taps(self)  # the same function, faster on small feature maps

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits at the input size, the attention head's features: the decoder's output at
        stride 4 (DeepLabV3+, SegFormer) or the output stride (DeepLabV3), or with ``concat`` its input).

        The logits are upsampled to the input here, so that HMS fuses the scales at full
        resolution: fusing at stride 4 of the scale-1.0 input instead (tried) drops what
        scale 2.0 sees, 78.2 -> 72.4 mIoU for HMS (0.5, 1, 2) on the embedded data.
        """
        if self.attention_reads_concat:
            features, attention_input = self.head.forward_with_concat(self.trunk(x))
        else:
            features = attention_input = self.head(self.trunk(x))
        return resize(self.classifier(features), tuple(x.shape[-2:])), attention_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input size."""
        return self.forward_features(x)[0]


MODEL_META_KEYS = ("trunk", "head", "num_classes", "output_stride", "head_channels", "atrous_rates")


def build_seg_model(meta: dict[str, Any], pretrained: str = PRETRAINED_NONE) -> SegModel:
    """Build a :class:`SegModel` from the architecture fields saved with every checkpoint."""
    return SegModel(meta["trunk"], meta["head"], meta["num_classes"], meta["output_stride"],
                    meta["head_channels"], tuple(meta["atrous_rates"]), pretrained,
                    meta.get("attention_features", DECODER))   # absent from checkpoints made before the key


def model_meta(params: dict[str, Any]) -> dict[str, Any]:
    """Architecture fields saved with every checkpoint, taken from params."""
    return {
        "trunk": params["trunk"], "head": params["head"],
        "num_classes": build_grouping(params["data"]["grouping"]).num_classes,
        "output_stride": params["output_stride"], "head_channels": params["model"]["head_channels"],
        "atrous_rates": list(params["model"]["atrous_rates"]),
        "attention_channels": params["model"]["attention_channels"],
        "attention_features": params["model"]["attention_features"],
        "grouping": params["data"]["grouping"],
    }
