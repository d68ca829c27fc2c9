"""Trunks (backbones) from torchvision with dilation.

Every trunk returns two feature maps: ``low`` at stride 4 (read by the
DeepLabV3+ decoder) and ``out`` at the trunk's output stride (8 or 16), where
the last stages use dilated convolutions instead of striding
(``replace_stride_with_dilation`` for ResNet, ``dilated=True`` for MobileNetV3).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models._utils import IntermediateLayerGetter

TRUNKS = ("resnet50", "resnet101", "mobilenet_v3_large")
PRETRAINED_NONE, PRETRAINED_IMAGENET = "none", "imagenet"

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


def _classifier_net(name: str, output_stride: int) -> nn.Module:
    if name in ("resnet50", "resnet101"):
        # OS16 dilates layer4, OS8 dilates layer3 and layer4 (DeepLab's recipe).
        dilation = [False, output_stride == 8, True]
        return getattr(models, name)(weights=None, replace_stride_with_dilation=dilation)
    if name == "mobilenet_v3_large":
        if output_stride != 16:
            raise ValueError(f"output_stride: mobilenet_v3_large supports 16 only, got {output_stride}")
        return models.mobilenet_v3_large(weights=None, dilated=True)
    raise ValueError(f"trunk: unknown trunk {name!r}; expected one of {', '.join(TRUNKS)}")


def _load_pretrained(net: nn.Module, name: str, pretrained: str) -> None:
    """Load ImageNet weights from a local file; never downloads.

    ``pretrained`` is ``imagenet`` (torchvision's file in the torch hub cache)
    or a path to a state dict of the torchvision classification model.
    """
    if pretrained == PRETRAINED_IMAGENET:
        url = _IMAGENET_WEIGHTS[name].url
        path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained: imagenet weights for {name} are not in the local torch cache ({path}); "
                f"copy {url.rsplit('/', 1)[-1]} there, give a path to a state dict, or use 'none'")
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained: no state dict file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, or pickled objects other than tensors (a whole model)
        raise ValueError(f"pretrained: {path} is not a readable state dict of tensors ({type(exc).__name__}); "
                         f"save one with torch.save(model.state_dict(), path)") from None
    if not isinstance(state, dict):
        raise ValueError(f"pretrained: {path} holds a {type(state).__name__}, expected a state dict")
    # The classifier (fc / classifier.*) is not part of the trunk; everything else must match.
    target = net.state_dict()
    head_keys = [k for k in target if k.startswith(("fc.", "classifier."))]
    state = {k: v for k, v in state.items() if k not in head_keys}
    missing = [k for k in target if k not in state and k not in head_keys]
    unexpected = [k for k in state if k not in target]
    # Checked here: load_state_dict would raise a many-line RuntimeError on shape mismatches.
    wrong = [f"{k} {tuple(getattr(v, 'shape', ()))} vs {tuple(target[k].shape)}"
             for k, v in state.items() if k in target and getattr(v, "shape", None) != target[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"pretrained: {path} does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"wrong shape {wrong[:3]}")
    net.load_state_dict(state, strict=False)


def build_trunk(name: str, output_stride: int = 16, pretrained: str = PRETRAINED_NONE) -> Trunk:
    """Build a dilated torchvision trunk with features at strides 4 and ``output_stride``."""
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride: expected 8 or 16, got {output_stride}")
    net = _classifier_net(name, output_stride)
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
