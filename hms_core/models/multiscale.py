"""The one N-scale forward pass: ``{scale: (p_s, a_s)}`` for an image batch.

HMS inference, the explicit-attention baseline, evaluation, prediction, export
and the cost measurement all run their scales through :func:`multiscale_forward`,
so every one of them resizes, runs branches and attention heads, and mirrors
the same way.

For scale ``s`` the image is resized by ``s`` (:func:`hms_core.models.segmodel.resize_image`,
the resize of training) and run through the branch of ``s`` (or of
``source_scale``: the one-model multi-scale baseline runs the scale-1.0 model at
every scale). ``p_s`` are the class logits and ``a_s`` the attention, both at
the size of the resized image. The highest scale's attention is never read by
the HMS chain (it has no higher scale to defer to), so it is not computed.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

import torch

from hms_core.data.resize import scaled_size


class Branches(Protocol):
    """A model with a branch per scale (:class:`hms_core.models.hms.HMS`, which imports this module)."""

    def branch_forward(self, image: torch.Tensor, scale: float, size: tuple[int, int], *,
                       attention: bool = True, features: bool = False) -> "ScaleOutput": ...


class ScaleOutput(NamedTuple):
    """One scale's outputs: logits ``p_s``, attention ``a_s`` (or None), decoder features (or None)."""

    logits: torch.Tensor
    attention: torch.Tensor | None = None
    features: torch.Tensor | None = None


def multiscale_forward(model: Branches, image: torch.Tensor, scales: Sequence[float], *, attention: bool = True,
                       features: bool = False, flip: bool = False, source_scale: float | None = None,
                       sizes: dict[float, tuple[int, int]] | None = None) -> dict[float, ScaleOutput]:
    """Run ``image`` [B, 3, H, W] at every scale of ``scales``; ``{s: ScaleOutput}`` in ascending order.

    * ``attention``: compute ``a_s`` for every scale but the highest (where the
      branch has an attention head);
    * ``features``: keep the decoder features (the explicit baseline's head reads them);
    * ``flip``: average every output with that of the mirrored image, mirrored back,
      ``x_s = (f(I)_s + mirror(f(mirror(I))_s)) / 2``;
    * ``source_scale``: run this scale's branch at every scale instead of each scale's own;
    * ``sizes``: the resized image size of each scale (export fixes them as Python ints);
      default ``round(H * s) x round(W * s)``.

    Outputs are float32 whatever autocast computed them in, so fusion and argmax
    do not depend on the mixed-precision mode.
    """
    ordered = sorted(float(s) for s in scales)
    top = ordered[-1]
    out = {}
    for s in ordered:
        size = sizes[s] if sizes is not None else scaled_size(tuple(image.shape[-2:]), s)
        run = lambda x: model.branch_forward(x, s if source_scale is None else float(source_scale), size,
                                             attention=attention and s != top, features=features)
        o = run(image)
        if flip:
            m = run(image.flip(-1))
            o = ScaleOutput(*((None if a is None else (a + b.flip(-1)) / 2) for a, b in zip(o, m)))
        out[s] = ScaleOutput(*(None if t is None else t.float() for t in o))
    return out
