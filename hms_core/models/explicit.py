"""Explicit multi-scale attention, the baseline HMS is compared with
(Chen et al. 2016, "Attention to Scale"; Tao et al. 2020, Sec. 3.1).

One attention head reads the decoder features of *all* scales at once
(resized to the scale-1.0 feature size and concatenated) and predicts N
weights per pixel, a softmax over the scales:
``P = sum_s w_s * up(p_s)`` at the scale-1.0 resolution. It is trained on all
scales together, so a crop costs ``sum_s s^2`` image areas
(0.25 + 1 + 4 = 5.25 for scales 0.5, 1, 2) against 1.25 for an HMS pair.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hms_core.data.dataset import IGNORE
from hms_core.data.resize import resize
from hms_core.models.heads import AttentionHead
from hms_core.models.hms import HMS
from hms_core.models.multiscale import ScaleOutput, multiscale_forward

EXPLICIT = "explicit"


class ExplicitAttention(HMS):
    """The per-scale branches of :class:`HMS` with one explicit attention head over all scales."""

    def build_attention(self, channels: int) -> nn.ModuleDict:
        n = len(self.scales)
        return nn.ModuleDict({EXPLICIT: AttentionHead(channels * n, self.meta["attention_channels"], n)})

    def explicit_forward(self, image: torch.Tensor
                         ) -> tuple[torch.Tensor, dict[float, torch.Tensor], torch.Tensor]:
        """Return ``(P, {s: p_s}, w)`` for ``image`` at scale 1.0; ``P`` and ``w`` at its size."""
        outputs = multiscale_forward(self, image, self.scales, attention=False, features=True)
        fused, weights = self.fuse(outputs, tuple(image.shape[-2:]))
        return fused, {s: o.logits for s, o in outputs.items()}, weights

    def fuse(self, outputs: dict[float, ScaleOutput], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, w)`` at ``size`` from every scale's logits and decoder features:
        ``w = softmax_s(head(concat_s features_s))``, ``P = sum_s w_s * up(p_s)``.

        ``outputs`` may come from another model's pass when its branches hold the
        same weights (evaluation then runs each scale once for HMS and explicit rows).
        """
        ordered = [outputs[s] for s in sorted(self.scales)]
        ref = tuple(outputs[1.0].features.shape[-2:])
        weights = resize(self.attention[EXPLICIT](torch.cat([resize(o.features, ref) for o in ordered], 1)), size)
        fused = sum(weights[:, i:i + 1] * resize(o.logits, size) for i, o in enumerate(ordered))
        return fused, weights

    def forward(self, image: torch.Tensor, scales: Any = None) -> torch.Tensor:
        return self.explicit_forward(image)[0]


def explicit_loss(fused: torch.Tensor, logits: dict[float, torch.Tensor], target: torch.Tensor,
                  aux_weight: float, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``CE(P) + w * sum_s CE(up(p_s))``, ignore index 255 (the HMS loss, over all scales)."""
    size = tuple(target.shape[-2:])
    ce = lambda x: F.cross_entropy(resize(x, size), target, weight=class_weights, ignore_index=IGNORE)
    return ce(fused) + aux_weight * sum(ce(p) for p in logits.values())
