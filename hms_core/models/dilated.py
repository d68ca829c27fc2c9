"""Dilated convolutions that skip the kernel taps which only ever read zero padding.

A ``k x k`` convolution with dilation ``d`` and "same" padding ``d (k - 1) / 2`` reads, for the
output row ``i``, the input rows ``i + (j - c) d`` (``c = (k - 1) / 2``, tap ``j = 0 .. k - 1``).
On a feature map of height ``H`` a tap with ``|j - c| d >= H`` lands in the padding for every
``i``: it multiplies zeros and its weight gets a zero gradient. Only the taps
``|j - c| <= m``, ``m = min(c, (H - 1) // d)``, are live, so

    conv(x, w, padding=c d) == conv(x, w[c - m : c + m + 1], padding=m d)

(per axis; the same output, up to the order of float sums). At the small crops of CPU training
(64 px at stride 16: 4 x 4 features) the ASPP rates 6, 12, 18 are all center-only and the
trunk's dilated 5 x 5 depthwise convolutions 3 x 3: a quarter of a MobileNetV3 training step
(``bench/step_time.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LiveTapConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` (stride 1, odd kernel, "same" padding) computed with its live taps only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, padding = [], []
        for size, k, d in zip(x.shape[-2:], self.kernel_size, self.dilation):
            c = (k - 1) // 2
            m = min(c, (int(size) - 1) // d)
            keep.append(slice(c - m, c + m + 1))
            padding.append(m * d)
        if keep[0].start == 0 and keep[1].start == 0:  # every tap reads some pixel
            return super().forward(x)
        return F.conv2d(x, self.weight[:, :, keep[0], keep[1]], self.bias, 1, tuple(padding), self.dilation,
                        self.groups)


def _same_padded_dilated(conv: nn.Conv2d) -> bool:
    return (max(conv.dilation) > 1 and conv.stride == (1, 1) and conv.padding_mode == "zeros"
            and all(isinstance(p, int) and k % 2 == 1 and p == d * (k - 1) // 2
                    for p, k, d in zip(conv.padding, conv.kernel_size, conv.dilation)))


def skip_dead_taps(model: nn.Module) -> nn.Module:
    """Make every dilated "same" convolution of ``model`` a :class:`LiveTapConv2d`, in place.

    The class is swapped rather than the module rebuilt: no weight is re-initialised, the random
    stream is untouched, and the parameters and ``state_dict`` keys stay the same.
    """
    for module in model.modules():
        if type(module) is nn.Conv2d and _same_padded_dilated(module):
            module.__class__ = LiveTapConv2d
    return model
