"""Hierarchical Multi-Scale Attention (Tao, Sapra & Catanzaro 2020, arXiv:2005.10821).

Each scale ``s`` gives class logits ``p_s`` and an attention map ``a_s`` in (0, 1),
both at the size of the image resized by ``s``. Attention is *relative* between
adjacent scales: ``a_s`` says how much to trust scale ``s`` over the next higher
one, which is why the chain works for scale sets never seen in training.

Two modes (DESIGN.md section 2):

* ``experts``: scale ``s`` runs through the DeepLab model trained at ``s``; each
  non-top scale has its own attention head. A scale below the top one that has no
  expert (0.25 in a 0.25, 0.5, 1, 2 chain) runs the expert of the nearest scale
  (in ``log s``) and that expert's attention head: relative attention lets the chain
  run scale sets it never trained on.
* ``shared``: one DeepLab model and one attention head for every scale (the paper's model).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hms_core.data.labels import IGNORE
from hms_core.data.resize import resize, resize_image, scaled_size
from hms_core.io import load_checkpoint
from hms_core.models.heads import AttentionHead
from hms_core.models.multiscale import ScaleOutput, multiscale_forward
from hms_core.models.segmodel import SegModel, build_seg_model

MODES = ("experts", "shared")
SHARED = "shared"


def scale_key(scale: float) -> str:
    """Module-dict key of a scale (``0.5 -> 's0_5'``); dots are not allowed in module names."""
    return "s" + f"{float(scale):g}".replace(".", "_").replace("-", "m")


def nearest_expert(experts: Sequence[float], scale: float) -> float | None:
    """The expert that runs ``scale`` in experts mode: its own, else the nearest in ``log s``,
    ``argmin_e |log e - log s|`` (the lower on a tie); None when that is the top expert, which
    has no attention head to fuse a scale below another."""
    experts, scale = sorted(float(e) for e in experts), float(scale)
    if scale in experts:
        return scale
    nearest = min(experts, key=lambda e: (abs(math.log(e / scale)), e))
    return None if nearest == experts[-1] else nearest


def fuse_lower(pred: torch.Tensor, p_s: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """Fuse a lower scale into ``pred`` (Eq. 1 of the paper), in logit space.

    ``pred' = up(a_s * p_s) + (1 - up(a_s)) * pred``; the product is taken at the
    low resolution, then upsampled to ``pred``'s size.
    """
    size = tuple(pred.shape[-2:])
    return resize(a_s * p_s, size) + (1 - resize(a_s, size)) * pred


def fuse_higher(pred: torch.Tensor, p_s: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """Fuse scale ``s >= 1`` into ``pred`` coming from a higher scale.

    ``pred`` is first shrunk to ``p_s``'s size, then ``pred' = a_s * p_s + (1 - a_s) * pred``.
    """
    pred = resize(pred, tuple(p_s.shape[-2:]))
    return a_s * p_s + (1 - a_s) * pred


def hierarchical_fusion(outputs: dict[float, Sequence[torch.Tensor | None]]) -> torch.Tensor:
    """N-scale inference chain over ``{scale: (p_s, a_s, ...)}``; ``1.0`` must be present.

    Scales are visited from high to low; ``pred`` starts as the highest scale's
    logits (its attention is unused). The result is at the scale-1.0 resolution.
    """
    scales = sorted(outputs, reverse=True)
    if 1.0 not in outputs:
        raise ValueError(f"hms scales {scales} must contain 1.0")
    pred = outputs[scales[0]][0]
    for s in scales[1:]:
        p_s, a_s = outputs[s][:2]
        pred = fuse_higher(pred, p_s, a_s) if s >= 1.0 else fuse_lower(pred, p_s, a_s)
    return pred


def hms_pair_loss(joint: torch.Tensor, p_lo: torch.Tensor, p_hi: torch.Tensor, target: torch.Tensor,
                  aux_weight: float, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Two-scale training loss: ``CE(joint) + w * (CE(up(p_lo)) + CE(p_hi))``, ignore index 255."""
    size = tuple(target.shape[-2:])
    ce = lambda logits: F.cross_entropy(resize(logits, size), target, weight=class_weights, ignore_index=IGNORE)
    return ce(joint) + aux_weight * (ce(p_lo) + ce(p_hi))


class HMS(nn.Module):
    """The hierarchical multi-scale attention model over per-scale DeepLab branches."""

    def __init__(self, meta: dict[str, Any]) -> None:
        super().__init__()
        self.meta = dict(meta)
        self.mode = meta["mode"]
        if self.mode not in MODES:
            raise ValueError(f"hms.mode: unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        self.scales = sorted(float(s) for s in meta["scales"])
        keys = [scale_key(s) for s in self.scales] if self.mode == "experts" else [SHARED]
        self.branches = nn.ModuleDict({k: build_seg_model(meta) for k in keys})
        self.attention = self.build_attention(self.branches[keys[0]].feature_channels)

    def build_attention(self, channels: int) -> nn.ModuleDict:
        """One relative attention head per non-top scale (experts) or one for all (shared)."""
        # The top scale's attention is never used: it has no higher scale to defer to.
        keys = [scale_key(s) for s in self.scales[:-1]] if self.mode == "experts" else [SHARED]
        return nn.ModuleDict({k: AttentionHead(channels, self.meta["attention_channels"]) for k in keys})

    def expert_scale(self, scale: float) -> float:
        """The expert that runs ``scale`` in experts mode (:func:`nearest_expert`)."""
        expert = nearest_expert(self.scales, scale)
        if expert is None:
            raise ValueError(f"scale {scale} has no expert; in experts mode a scale without its own expert "
                             f"must be nearer to a lower expert than to the top one ({self.scales})")
        return expert

    def _key(self, scale: float, table: nn.ModuleDict) -> str | None:
        if self.mode == SHARED:
            return SHARED
        key = scale_key(self.expert_scale(scale))
        return key if key in table else None

    def branch(self, scale: float) -> SegModel:
        return self.branches[self._key(scale, self.branches)]

    def attention_key(self, scale: float) -> str | None:
        """Key of ``scale``'s attention head in ``self.attention``; None when it has none."""
        return self._key(scale, self.attention)

    def scale_forward(self, image: torch.Tensor, scale: float, attention: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run one scale on the full image: ``(p_s, a_s)`` at the size of ``image`` resized by ``scale``.

        ``a_s`` is ``None`` when the scale has no attention head (experts' top scale)
        or ``attention`` is False.
        """
        size = scaled_size(tuple(image.shape[-2:]), scale)
        return self.branch_forward(image, scale, size, attention=attention)[:2]

    def pair_forward(self, image_hi: torch.Tensor, lo: float, hi: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two-scale training forward on an image already resized to scale ``hi``.

        Returns ``(joint, p_lo, p_hi, a_lo)`` with
        ``joint = up(a_lo * p_lo) + (1 - up(a_lo)) * p_hi`` at ``image_hi``'s size.
        """
        size_hi = tuple(image_hi.shape[-2:])
        p_hi = self.branch_forward(image_hi, hi, size_hi, attention=False).logits
        p_lo, a_lo, _ = self.branch_forward(image_hi, lo, scaled_size(size_hi, lo / hi), attention=True)
        if a_lo is None:
            raise ValueError(f"scale {lo} has no attention head")
        return fuse_lower(p_hi, p_lo, a_lo), p_lo, p_hi, a_lo

    def branch_forward(self, image: torch.Tensor, scale: float, size: tuple[int, int], attention: bool = True,
                       features: bool = False) -> ScaleOutput:
        """Branch (and attention head) of ``scale`` on ``image`` resized to ``size``; ``p_s`` and
        ``a_s`` at ``size``.

        ``a_s`` is None when ``attention`` is False or the scale has no head; the
        decoder features are kept only when ``features`` is True.
        """
        x = resize_image(image, size)
        # A frozen branch needs no graph: only the attention head learns then.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.branches_frozen):
            logits, feats = self.branch(scale).forward_features(x)
        key = self.attention_key(scale) if attention else None
        a = None if key is None else resize(self.attention[key](feats), tuple(x.shape[-2:]))
        return ScaleOutput(logits, a, feats if features else None)

    def forward(self, image: torch.Tensor, scales: Sequence[float] = (0.5, 1.0)) -> torch.Tensor:
        """N-scale inference; logits at ``image``'s size."""
        return resize(hierarchical_fusion(multiscale_forward(self, image, scales)), tuple(image.shape[-2:]))

    @property
    def branches_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.branches.parameters())

    def freeze_branches(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) every trunk and head; the attention heads stay trainable."""
        for p in self.branches.parameters():
            p.requires_grad_(not frozen)

    def train(self, mode: bool = True) -> "HMS":
        super().train(mode)
        if self.branches_frozen:
            self.branches.eval()  # frozen branches keep their BatchNorm statistics
        return self


def load_hms(path: str | Path, cls: type[HMS] = HMS) -> HMS:
    """The model saved at ``path`` (``{"meta", "state_dict"}`` from transplant or fine-tuning),
    rebuilt as ``cls`` from its meta and loaded with ``strict=True``."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "mode" not in ckpt.get("meta", {}):
        raise ValueError(f"{path}: not an HMS model checkpoint (expected the output of the finetune "
                         f"or transplant stage)")
    try:
        model = cls(ckpt["meta"])
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:  # load_state_dict lists every key: keep the start
        reason = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])[:200]
        raise ValueError(f"{path}: weights do not match the model its meta describes "
                         f"({type(exc).__name__}: {reason})") from None
    return model
