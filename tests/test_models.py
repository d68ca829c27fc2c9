"""Trunk strides, head shapes, the per-scale model."""
import copy
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hms_core.models.dilated import LiveTapConv2d, skip_dead_taps
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


@pytest.mark.parametrize("kernel,dilation,size,live_taps", [
    (3, 6, (4, 4), 1), (3, 12, (8, 16), 1 * 3), (3, 6, (16, 4), 3 * 1),
    (5, 2, (4, 4), 3 * 3), (5, 2, (3, 9), 3 * 5), (3, 2, (16, 16), 3 * 3)])
def test_live_tap_convolution_equals_the_full_one(kernel, dilation, size, live_taps):
    """Skipping the taps that only read padding changes neither the output nor any gradient, and the
    convolution costs live_taps / kernel**2 of the full one's FLOPs."""
    torch.manual_seed(0)
    full = torch.nn.Conv2d(6, 6, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=2)
    live = skip_dead_taps(torch.nn.Sequential(copy.deepcopy(full)))[0]
    assert type(live) is LiveTapConv2d and live.state_dict().keys() == full.state_dict().keys()
    x = torch.randn(2, 6, *size, requires_grad=True)
    x_live = x.detach().clone().requires_grad_(True)
    out, out_live = full(x), live(x_live)
    torch.testing.assert_close(out_live, out)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_live.backward(grad)
    torch.testing.assert_close(x_live.grad, x.grad)
    torch.testing.assert_close(live.weight.grad, full.weight.grad)
    torch.testing.assert_close(live.bias.grad, full.bias.grad)
    flops = []
    for conv in (full, live):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            conv(x)
        flops.append(counter.get_total_flops())
    assert flops[1] * kernel ** 2 == flops[0] * live_taps


def test_seg_model_skips_dead_taps_of_its_dilated_convolutions_only(tiny_meta):
    model = SegModel(tiny_meta["trunk"], tiny_meta["head"], 7, 16, 16, (6, 12, 18))
    live = [m for m in model.modules() if isinstance(m, LiveTapConv2d)]
    assert len(live) == 6  # the trunk's three dilated depthwise convolutions and ASPP's three rates
    assert all(max(m.dilation) > 1 for m in live)
