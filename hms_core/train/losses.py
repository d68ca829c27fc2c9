"""The training losses, each step as one module call (:class:`ExpertLoss`, :class:`PairLoss`,
:class:`ExplicitLoss`), so that DistributedDataParallel and ``torch.compile`` see the whole
forward pass and loss; the class weights they take; and the glue that turns a step's loss
into the loss of the global batch in a multi-process job (:func:`batch_loss`,
:func:`pair_batch_loss`, over :func:`hms_core.runtime.distributed.global_batch_loss`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hms_core.data.dataset import IGNORE
from hms_core.models.explicit import ExplicitAttention, explicit_loss
from hms_core.models.hms import HMS, hms_pair_loss
from hms_core.models.segmodel import SegModel
from hms_core.runtime import distributed
from hms_core.runtime.distributed import Context


def class_weights(prepared: str | Path, power: float, device: torch.device) -> torch.Tensor | None:
    """Class-balancing weights ``w_c = (median_f / f_c) ** power`` from the train split's pixel
    frequencies ``f_c`` (median-frequency balancing, Eigen & Fergus 2015, at ``power`` = 1).

    Rare classes (thin poles, distant people) otherwise vanish under plain
    cross-entropy in short runs. ``power`` = 0 gives plain cross-entropy.
    """
    if power == 0:
        return None
    meta_path = Path(prepared) / "meta.json"
    counts = torch.tensor(list(json.loads(meta_path.read_text())["splits"]["train"]["class_pixels"].values()),
                          dtype=torch.float64)
    freq = counts / counts.sum()
    present = freq > 0
    weights = torch.ones_like(freq)
    weights[present] = (freq[present].median() / freq[present]) ** power
    return weights.float().to(device)


def ce_denominator(label: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The divisor of a mean cross-entropy: ``D = sum_i w[y_i]`` over the pixels not ignored
    (their count without class weights); computed without a host sync."""
    valid = label != IGNORE
    if weights is None:
        return valid.sum(dtype=torch.float64)
    padded = torch.cat([weights.to(torch.float64), weights.new_zeros(1, dtype=torch.float64)])
    return padded[torch.where(valid, label, len(weights))].sum()


class ExpertLoss(nn.Module):
    """``CE(model(image), label)`` (class weights, ignore 255) as one module call."""

    def __init__(self, model: SegModel, weights: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.weights = weights  # a plain attribute, not a buffer: DDP need not broadcast it

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(image), label, weight=self.weights, ignore_index=IGNORE)


class PairLoss(nn.Module):
    """The two-scale losses of every pair (one per pair) as one module call."""

    def __init__(self, model: HMS, pairs: list[tuple[float, float]], aux_weight: float,
                 weights: torch.Tensor | None) -> None:
        super().__init__()
        self.model, self.pairs, self.aux_weight, self.weights = model, pairs, aux_weight, weights

    def forward(self, batch: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        losses = []
        for (lo, hi), (image, label) in zip(self.pairs, batch):
            joint, p_lo, p_hi, _ = self.model.pair_forward(image, lo, hi)
            losses.append(hms_pair_loss(joint, p_lo, p_hi, label, self.aux_weight, self.weights))
        return losses


class ExplicitLoss(nn.Module):
    """The explicit-attention loss over all scales of one batch as one module call."""

    def __init__(self, model: ExplicitAttention, aux_weight: float, weights: torch.Tensor | None) -> None:
        super().__init__()
        self.model, self.aux_weight, self.weights = model, aux_weight, weights

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        fused, logits, _ = self.model.explicit_forward(image)
        return explicit_loss(fused, logits, label, self.aux_weight, self.weights)


def batch_loss(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], weights: torch.Tensor | None,
               ctx: Context) -> Callable[[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The loss of one ``(image, label)`` batch; in a multi-process job, of the global batch."""
    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, label = batch
        loss = step(image, label)
        if not ctx.enabled:
            return loss
        return distributed.global_batch_loss([loss], [ce_denominator(label, weights)], ctx)
    return loss_fn


def pair_batch_loss(step: Callable[[list[tuple[torch.Tensor, torch.Tensor]]], list[torch.Tensor]],
                    weights: torch.Tensor | None, ctx: Context
                    ) -> Callable[[list[tuple[torch.Tensor, torch.Tensor]]], torch.Tensor]:
    """The summed loss of one ``(image, label)`` batch per pair (:class:`PairLoss`); in a
    multi-process job, each pair's loss is that of its global batch."""
    def loss_fn(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        losses = step(batch)
        denominators = [ce_denominator(label, weights) for _, label in batch] if ctx.enabled else []
        return distributed.global_batch_loss(losses, denominators, ctx)
    return loss_fn
