"""Trunks (backbones): torchvision CNNs with dilation, and SegFormer's Mix Transformer.

Every trunk returns at least two feature maps: ``low`` at stride 4 (read by the
DeepLabV3+ decoder) and ``out`` at the trunk's output stride. The torchvision
trunks reach stride 8 or 16, where the last stages use dilated convolutions
instead of striding (``replace_stride_with_dilation`` for ResNet,
``dilated=True`` for MobileNetV3). The MiT trunks (:mod:`hms_core.models.mit`) have
no dilated variant: their ``out`` is at stride 32, and they also return their
four stages ``stage1`` .. ``stage4`` for the SegFormer head.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models._utils import IntermediateLayerGetter

from hms_core.models.mit import MIT_TRUNKS, MitTrunk
from hms_core.models.weights import PRETRAINED_IMAGENET, PRETRAINED_NONE, load_checked, read_state_dict

TRUNKS = ("resnet50", "resnet101", "mobilenet_v3_large", *MIT_TRUNKS)
# The output strides each trunk can be built at (the stride of its ``out`` features).
OUTPUT_STRIDES = {"resnet50": (8, 16), "resnet101": (8, 16), "mobilenet_v3_large": (16,), "mit_b0": (32,)}

_IMAGENET_WEIGHTS = {
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": models.ResNet101_Weights.IMAGENET1K_V1,
    "mobilenet_v3_large": models.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
}


class Trunk(nn.Module):
    """A torchvision backbone cut at stride 4 (``low``) and at its last stage (``out``)."""

    def __init__(self, body: IntermediateLayerGetter, low_channels: int, out_channels: int,
                 output_stride: int) -> None:
        super().__init__()
        self.body = body
        self.low_channels = low_channels
        self.out_channels = out_channels
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.body(x)


def _load_pretrained(net: nn.Module, name: str, pretrained: str) -> None:
    """Load ImageNet weights from a local file; never downloads.

    ``pretrained`` is ``imagenet`` (torchvision's file in the torch hub cache)
    or a path to a state dict of the torchvision classification model.
    """
    if pretrained == PRETRAINED_IMAGENET:
        path = Path(torch.hub.get_dir()) / "checkpoints" / _IMAGENET_WEIGHTS[name].url.rsplit("/", 1)[-1]
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained: imagenet weights for {name} are not in the local torch cache ({path}); "
                f"copy {path.name} there, give a path to a state dict, or use 'none'")
    else:
        path = Path(pretrained)
    state = read_state_dict(path)
    # The classifier (fc / classifier.*) is not part of the trunk; everything else must match.
    head_keys = [k for k in net.state_dict() if k.startswith(("fc.", "classifier."))]
    load_checked(net, {k: v for k, v in state.items() if k not in head_keys}, name, path, skip=head_keys)


def build_trunk(name: str, output_stride: int = 16, pretrained: str = PRETRAINED_NONE) -> nn.Module:
    """Build a trunk with features ``low`` at stride 4 and ``out`` at ``output_stride``.

    A dilated torchvision :class:`Trunk`, or for the MiT trunks a
    :class:`hms_core.models.mit.MitTrunk` (stride 32 only).
    """
    if name not in TRUNKS:
        raise ValueError(f"trunk: unknown trunk {name!r}; expected one of {', '.join(TRUNKS)}")
    if output_stride not in OUTPUT_STRIDES[name]:
        raise ValueError(f"output_stride: {name} supports {' or '.join(map(str, OUTPUT_STRIDES[name]))} only, "
                         f"got {output_stride}")
    if name in MIT_TRUNKS:
        return MitTrunk(name, pretrained)
    # The name and the stride were checked above: a ResNet or MobileNetV3 at a stride it supports.
    if name.startswith("resnet"):
        # OS16 dilates layer4, OS8 dilates layer3 and layer4 (DeepLab's recipe).
        dilation = [False, output_stride == 8, True]
        net = getattr(models, name)(weights=None, replace_stride_with_dilation=dilation)
    else:
        net = models.mobilenet_v3_large(weights=None, dilated=True)
    if pretrained != PRETRAINED_NONE:
        _load_pretrained(net, name, pretrained)
    if name.startswith("resnet"):
        body = IntermediateLayerGetter(net, return_layers={"layer1": "low", "layer4": "out"})
        return Trunk(body, 256, 2048, output_stride)
    features = net.features
    # Blocks marked _is_cn are the strided ones; the block before the second
    # of them is the last one at stride 4.
    strided = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    low_index, out_index = strided[1] - 1, len(features) - 1
    body = IntermediateLayerGetter(features, return_layers={str(low_index): "low", str(out_index): "out"})
    return Trunk(body, features[low_index].out_channels, features[out_index].out_channels, output_stride)
