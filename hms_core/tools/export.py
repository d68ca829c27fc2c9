"""Export HMS inference at fixed scales and a fixed image size to TorchScript.

``hms export --model models/hms/model.pt --scales 0.5 1.0 2.0 --height 1024 --width 2048 --out models/hms/model.ts``

The exported module maps a normalised image batch [B, 3, H, W] (ImageNet mean/std,
as :func:`hms_core.data.dataset.load_sample`) to class logits [B, C, H, W]. It is traced
(``torch.jit.trace``), so the resize sizes of every scale are fixed at the traced
``H x W``: feed it images of exactly that size. The archive carries ``meta.json``
(scales, size, classes, normalisation), readable with ``torch.jit.load(...,
_extra_files={"meta.json": ""})``.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from hms_core.data.dataset import MEAN, STD
from hms_core.data.labels import build_grouping
from hms_core.data.resize import resize, scaled_size
from hms_core.io import atomic_write
from hms_core.models.hms import HMS, hierarchical_fusion
from hms_core.models.multiscale import multiscale_forward
from hms_core.tools.predict import PredictError, check_scales, load_model

META_FILE = "meta.json"


class FixedScaleHMS(nn.Module):
    """HMS N-scale inference for one image size: ``image [B, 3, H, W] -> logits [B, C, H, W]``.

    The same computation as ``HMS(image, scales)``, with every resize size computed
    here as a Python int: tracing turns ``image.shape`` into tensors, which
    :func:`hms_core.models.segmodel.scaled_size` cannot round.
    """

    def __init__(self, model: HMS, scales: Sequence[float], height: int, width: int) -> None:
        super().__init__()
        self.model = model
        self.scales = sorted(float(s) for s in scales)
        self.size = (height, width)
        self.sizes = {s: scaled_size(self.size, s) for s in self.scales}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        outputs = multiscale_forward(self.model, image, self.scales, sizes=self.sizes)
        return resize(hierarchical_fusion(outputs), self.size)


def export_meta(model: HMS, scales: Sequence[float], height: int, width: int) -> dict[str, Any]:
    """What a user of the exported file needs besides the weights."""
    grouping = model.meta["grouping"]
    return {"scales": [float(s) for s in scales], "height": height, "width": width,
            "input": "float [B, 3, height, width], RGB / 255 normalised with mean and std",
            "mean": [round(v, 6) for v in MEAN.flatten().tolist()],
            "std": [round(v, 6) for v in STD.flatten().tolist()],
            "output": "logits [B, num_classes, height, width]", "grouping": grouping,
            "classes": list(build_grouping(grouping).class_names)}


def trace(model: HMS, scales: Sequence[float], height: int, width: int) -> torch.jit.ScriptModule:
    """Trace :class:`FixedScaleHMS` on CPU for inputs of ``height x width``."""
    wrapper = FixedScaleHMS(model.cpu().eval(), scales, height, width).eval()
    example = torch.zeros(1, 3, height, width)
    with torch.no_grad(), warnings.catch_warnings():
        # Newer torch marks tracing as deprecated and warns that shapes become constants:
        # both are expected here (the size is fixed on purpose and 2.4 has no replacement
        # that we have verified), so they would only be noise.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(wrapper, example)


def save(traced: torch.jit.ScriptModule, path: str | Path, meta: dict[str, Any]) -> None:
    """Save atomically, with ``meta`` as the archive's ``meta.json``."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, buffer, _extra_files={META_FILE: json.dumps(meta, indent=2)})
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def load(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load an exported model (on CPU) and its meta."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: exported model not found")
    extra = {META_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra[META_FILE])


DESCRIPTION = __doc__.split("\n\n")[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``hms export``, on ``p``."""
    p.add_argument("--model", default="models/hms/model.pt", help="HMS checkpoint (default: %(default)s)")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="inference scales, must contain 1.0 (default: the model's scales)")
    p.add_argument("--height", type=int, required=True, help="input height the model is traced for")
    p.add_argument("--width", type=int, required=True, help="input width the model is traced for")
    p.add_argument("--out", default="models/hms/model.ts", help="output file (default: %(default)s)")


def run(args: argparse.Namespace, prog: str = "hms export") -> int:
    """Export as ``args`` say; returns 0 (``hms`` turns a raised error into its exit status)."""
    for name in ("height", "width"):
        if getattr(args, name) < 1:
            raise PredictError(f"--{name}: expected a positive integer, got {getattr(args, name)}")
    model = load_model(args.model, torch.device("cpu"))
    scales = check_scales(model, args.scales if args.scales is not None else model.scales)
    traced = trace(model, scales, args.height, args.width)
    save(traced, args.out, export_meta(model, scales, args.height, args.width))
    print(f"{prog}: scales {scales}, input {args.height}x{args.width} -> {args.out}", file=sys.stderr)
    return 0

