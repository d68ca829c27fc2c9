"""Segmentation heads: DeepLabV3+, plain DeepLabV3, SegFormer's all-MLP decoder, and the HMS attention head.

The heads return decoder *features*; the 1x1 class classifier lives in
:class:`hms_core.models.segmodel.SegModel` so that the attention head can read the same
features as the classifier (Tao et al. 2020, Fig. 2).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

DEEPLAB_HEADS = ("deeplabv3plus", "deeplabv3")
SEGFORMER = "segformer"  # hms_core.models.mit.SegformerHead, on the four stages of a MiT trunk
HEADS = (*DEEPLAB_HEADS, SEGFORMER)
LOW_LEVEL_CHANNELS = 48  # DeepLabV3+ projects the stride-4 feature to 48 channels (Chen et al. 2018).
# What the HMS attention head reads: the decoder's output (the classifier's input), or the decoder's
# stride-4 input [up(ASPP), proj48(low)] as in the paper's DeepLabV3+ model (DeepLabV3+ only).
DECODER, CONCAT = "decoder", "concat"
ATTENTION_FEATURES = (DECODER, CONCAT)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the last trunk stage + stride-4 decoder.

    ``f = conv3x3(conv3x3([up(ASPP(out)), proj48(low)]))``, returned at stride 4.
    """

    def __init__(self, out_channels_trunk: int, low_channels: int, channels: int,
                 atrous_rates: Sequence[int]) -> None:
        super().__init__()
        self.aspp = ASPP(out_channels_trunk, list(atrous_rates), channels)
        self.low_proj = conv_bn_relu(low_channels, LOW_LEVEL_CHANNELS, kernel_size=1)
        self.decoder = nn.Sequential(
            conv_bn_relu(channels + LOW_LEVEL_CHANNELS, channels),
            conv_bn_relu(channels, channels),
        )
        self.channels = channels

    def forward_with_concat(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f, c)``: the decoder's output ``f = decoder(c)`` and its input
        ``c = [up(ASPP(out)), proj48(low)]`` at stride 4 (``channels + 48`` wide)."""
        low = self.low_proj(features["low"])
        high = F.interpolate(self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear",
                             align_corners=False)
        c = torch.cat([high, low], dim=1)
        return self.decoder(c), c

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_with_concat(features)[0]


class DeepLabV3Head(nn.Module):
    """Plain DeepLabV3: ``f = conv3x3(ASPP(out))`` at the trunk's output stride."""

    def __init__(self, out_channels_trunk: int, low_channels: int, channels: int,
                 atrous_rates: Sequence[int]) -> None:
        super().__init__()
        self.aspp = ASPP(out_channels_trunk, list(atrous_rates), channels)
        self.decoder = conv_bn_relu(channels, channels)
        self.channels = channels

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.decoder(self.aspp(features["out"]))


def build_head(name: str, out_channels_trunk: int, low_channels: int, channels: int,
               atrous_rates: Sequence[int], stage_channels: Sequence[int] | None = None) -> nn.Module:
    """The head ``name``, returning ``channels`` decoder features.

    ``stage_channels`` are the widths of a MiT trunk's four stages (the
    ``segformer`` head reads them all; it has no ASPP, so ``atrous_rates`` is unused there).
    """
    if name == SEGFORMER:
        if stage_channels is None or len(stage_channels) != 4:
            raise ValueError("head: segformer reads the four stages of a MiT trunk (trunk mit_b0), "
                             f"got stage widths {stage_channels}")
        from hms_core.models.mit import SegformerHead  # imported here: transformers is slow to load
        return SegformerHead(stage_channels, channels)
    if name == "deeplabv3plus":
        return DeepLabV3PlusHead(out_channels_trunk, low_channels, channels, atrous_rates)
    if name == "deeplabv3":
        return DeepLabV3Head(out_channels_trunk, low_channels, channels, atrous_rates)
    raise ValueError(f"head: unknown head {name!r}; expected one of {', '.join(HEADS)}")


class AttentionHead(nn.Module):
    """Per-pixel scale attention.

    With one output, HMS's relative attention (Tao et al. 2020, Sec. 3.2):
    ``a = sigmoid(conv1x1(relu(bn(conv3x3(relu(bn(conv3x3(f))))))))``, one value in (0, 1)
    per pixel. With ``outputs = N`` > 1, explicit attention over N scales
    (Chen et al. 2016): the same stack ending in N channels and a softmax over them.
    """

    def __init__(self, in_channels: int, channels: int = 256, outputs: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv_bn_relu(in_channels, channels),
            conv_bn_relu(channels, channels),
            nn.Conv2d(channels, outputs, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.net(features)
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
