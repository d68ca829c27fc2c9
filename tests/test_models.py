"""Trunk strides, head shapes, the per-scale model."""
import math

import pytest
import torch

from hms_core.models.heads import AttentionHead, build_head
from hms_core.models.segmodel import SegModel
from hms_core.models.trunks import build_trunk


@pytest.mark.parametrize("name,stride", [("resnet50", 8), ("resnet50", 16), ("resnet101", 16),
                                         ("mobilenet_v3_large", 16)])
def test_trunk_output_strides(name, stride):
    trunk = build_trunk(name, stride).eval()
    with torch.no_grad():
        out = trunk(torch.zeros(1, 3, 64, 96))
    assert out["low"].shape == (1, trunk.low_channels, 16, 24)  # stride 4 for the decoder
    assert out["out"].shape == (1, trunk.out_channels, 64 // stride, 96 // stride)


def test_mobilenet_rejects_output_stride_8():
    with pytest.raises(ValueError, match="output_stride"):
        build_trunk("mobilenet_v3_large", 8)


def test_unknown_trunk_and_head_are_named():
    with pytest.raises(ValueError, match="trunk: unknown trunk 'vgg'"):
        build_trunk("vgg", 16)
    with pytest.raises(ValueError, match="head: unknown head 'fcn'"):
        build_head("fcn", 960, 24, 16, [6])


@pytest.mark.parametrize("head,feature_stride", [("deeplabv3plus", 4), ("deeplabv3", 16)])
def test_head_feature_shapes(head, feature_stride):
    features = {"low": torch.randn(2, 24, 16, 16), "out": torch.randn(2, 960, 4, 4)}
    out = build_head(head, 960, 24, 32, [2, 4]).eval()(features)
    assert out.shape == (2, 32, 64 // feature_stride, 64 // feature_stride)


def test_seg_model_logits_at_input_size_and_attention_at_feature_size(tiny_meta):
    model = SegModel("mobilenet_v3_large", "deeplabv3plus", 5, head_channels=16, atrous_rates=(2, 4)).eval()
    with torch.no_grad():
        logits, features = model.forward_features(torch.randn(1, 3, 50, 70))
        attention = AttentionHead(16, 8).eval()(features)
    assert logits.shape == (1, 5, 50, 70)
    assert features.shape[-2:] == (13, 18)  # stride 4, rounded up by the strided convs
    assert attention.shape == (1, 1, 13, 18)


def test_attention_head_ends_in_sigmoid_of_one_channel_or_softmax_over_scales():
    features = torch.randn(2, 16, 5, 7)
    head = AttentionHead(16, 8).eval()
    with torch.no_grad():
        assert not torch.allclose(head(features), head(torch.randn(2, 16, 5, 7)))  # it reads the features
        head.net[-1].weight.zero_()
        head.net[-1].bias.fill_(-0.8)
        assert torch.allclose(head(features), torch.full((2, 1, 5, 7), 1 / (1 + math.exp(0.8))))  # sigmoid(b)
        explicit = AttentionHead(16, 8, outputs=3).eval()
        explicit.net[-1].weight.zero_()
        explicit.net[-1].bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
        e = torch.tensor([1.0, math.e, math.e ** 2])
        assert torch.allclose(explicit(features), (e / e.sum()).view(1, 3, 1, 1).expand(2, 3, 5, 7))  # softmax(b)
