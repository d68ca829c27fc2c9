"""Pretrained weights from a local file: read with ``weights_only=True``, every key and shape checked.

Nothing is downloaded: ``imagenet`` means torchvision's file in the local torch
cache (:mod:`hms_core.models.trunks`), any other value a path to a state dict.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

PRETRAINED_NONE, PRETRAINED_IMAGENET = "none", "imagenet"


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The state dict saved at ``path``, read with ``weights_only=True``; errors are one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained: no state dict file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, or pickled objects other than tensors (a whole model)
        raise ValueError(f"pretrained: {path} is not a readable state dict of tensors ({type(exc).__name__}); "
                         f"save one with torch.save(model.state_dict(), path)") from None
    if not isinstance(state, dict):
        raise ValueError(f"pretrained: {path} holds a {type(state).__name__}, expected a state dict")
    return state


def load_checked(net: nn.Module, state: dict[str, Any], name: str, path: str | Path,
                 skip: Iterable[str] = ()) -> None:
    """Load ``state`` into ``net`` after checking that every key and shape fits (but ``skip``'s keys,
    which ``net`` holds and the file need not)."""
    target = net.state_dict()
    skip = set(skip)
    missing = [k for k in target if k not in state and k not in skip]
    unexpected = [k for k in state if k not in target]
    # Checked here: load_state_dict would raise a many-line RuntimeError on shape mismatches.
    wrong = [f"{k} {tuple(getattr(v, 'shape', ()))} vs {tuple(target[k].shape)}"
             for k, v in state.items() if k in target and getattr(v, "shape", None) != target[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"pretrained: {path} does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"wrong shape {wrong[:3]}")
    net.load_state_dict(state, strict=False)
