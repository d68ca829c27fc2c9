"""Predict with a trained HMS model: class ids, Cityscapes label ids, overlay, attention.

``hms predict IMAGES_OR_FOLDERS --model models/hms/model.pt --scales 0.5 1.0 2.0 --out predictions``

Per image ``{stem}`` it writes to ``--out``:

* ``{stem}_classIds.png``: our class ids (``data.grouping`` of the model);
* ``{stem}_labelIds.png``: Cityscapes label ids (:func:`hms_core.data.labelmap.class_label_ids`);
* ``{stem}_overlay.png``: the image blended with the official colours of the predicted classes;
* ``{stem}_attention_{scale}.png``: the attention ``a_s`` of every scale that takes part in
  the fusion with an attention head (all but the highest scale of ``--scales``), as
  grey levels 0..255 for ``a_s`` in 0..1, resized to the image size.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from hms_core.data.dataset import normalise as normalise_chw
from hms_core.data.labelmap import class_colors, class_label_ids
from hms_core.data.resize import resize
from hms_core.evaluate.rows import attention_maps
from hms_core.io import atomic_write
from hms_core.models.hms import HMS, hierarchical_fusion, load_hms
from hms_core.models.multiscale import multiscale_forward
from hms_core.text import scale_name
from hms_core.train.engine import resolve_device

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
OVERLAY_ALPHA = 0.5  # weight of the class colour in the overlay


class PredictError(ValueError):
    """Bad input to prediction: no images, an unreadable image, a bad argument."""


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files among ``inputs``; folders are searched recursively for PNG and JPEG files."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            found.append(item)
        else:
            raise PredictError(f"{item}: no such image file or folder")
    if not found:
        raise PredictError(f"no images found in {', '.join(map(str, inputs))} (looked for "
                           f"{', '.join('*' + e for e in IMAGE_EXTENSIONS)})")
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems and stems[path.stem] != path:
            # Outputs are named by stem in one folder: two such images would overwrite each other.
            raise PredictError(f"{path}: same file name stem as {stems[path.stem]}; outputs would collide")
        stems[path.stem] = path
    return list(dict.fromkeys(found))


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image, read from its header only."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, SyntaxError, ValueError) as exc:
        raise PredictError(f"{path}: unreadable image ({exc})") from None


def read_image(path: Path) -> np.ndarray:
    """An image as uint8 RGB [H, W, 3]."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise PredictError(f"{path}: unreadable image ({exc})") from None


def normalise(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> float [3, H, W], normalised exactly as in training (ImageNet mean/std)."""
    return normalise_chw(torch.from_numpy(image.copy()).permute(2, 0, 1))


def load_model(path: str | Path, device: torch.device) -> HMS:
    """The HMS model saved at ``path`` (``{"meta", "state_dict"}``), in eval mode on ``device``."""
    return load_hms(path).eval().to(device)


def check_scales(model: HMS, scales: Sequence[float]) -> list[float]:
    """Distinct positive scales containing 1.0, and in experts mode only those the model has."""
    scales = [float(s) for s in scales]
    if not scales or any(s <= 0 for s in scales) or len(set(scales)) != len(scales):
        raise PredictError(f"--scales: expected distinct positive numbers, got {scales}")
    if 1.0 not in scales:
        raise PredictError(f"--scales: must contain 1.0 (HMS fuses at the scale-1.0 resolution), got {scales}")
    if model.mode == "experts" and not set(scales) <= set(model.scales):
        raise PredictError(f"--scales: the model has experts for {model.scales} only, got {scales}")
    return sorted(scales)


@torch.no_grad()
def predict_image(model: HMS, image: torch.Tensor, scales: Sequence[float]
                  ) -> tuple[torch.Tensor, dict[float, torch.Tensor]]:
    """HMS inference on a normalised image [3, H, W] or batch [B, 3, H, W].

    Returns the fused logits [(B,) C, H, W] and ``{scale: a_s}`` [(B,) 1, H, W] for
    every scale whose attention enters the fusion, each resized to ``H x W``.
    """
    batched = image.dim() == 4
    x = image if batched else image[None]
    size = tuple(x.shape[-2:])
    outputs = multiscale_forward(model, x, scales)
    logits = resize(hierarchical_fusion(outputs), size)
    attention = attention_maps(outputs, size)
    if not batched:
        logits, attention = logits[0], {s: a[0] for s, a in attention.items()}
    return logits, attention


def overlay(image: np.ndarray, classes: np.ndarray, colors: np.ndarray, alpha: float = OVERLAY_ALPHA
            ) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colour(class)`` as uint8 [H, W, 3]."""
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colors[classes].astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def attention_image(a: torch.Tensor) -> np.ndarray:
    """Attention [1, H, W] in (0, 1) -> uint8 grey levels [H, W]."""
    return (a[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _save_png(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def write_outputs(out: Path, stem: str, image: np.ndarray, logits: torch.Tensor,
                  attention: dict[float, torch.Tensor], label_ids: np.ndarray, colors: np.ndarray) -> None:
    """The four kinds of output files of one image (see the module docstring)."""
    classes = logits.argmax(0).to(torch.uint8).cpu().numpy()
    _save_png(out / f"{stem}_classIds.png", classes)
    _save_png(out / f"{stem}_labelIds.png", label_ids[classes])
    _save_png(out / f"{stem}_overlay.png", overlay(image, classes, colors))
    for s, a in attention.items():
        _save_png(out / f"{stem}_attention_{scale_name(s)}.png", attention_image(a))


def batches(paths: Sequence[Path], batch_size: int) -> Iterator[list[Path]]:
    """Batches of images of one size (a batch is one tensor), in input order within each size."""
    by_size: dict[tuple[int, int], list[Path]] = defaultdict(list)
    for p in paths:
        by_size[image_size(p)].append(p)
    for group in by_size.values():
        for i in range(0, len(group), batch_size):
            yield group[i:i + batch_size]


def predict_files(model: HMS, paths: Sequence[Path], scales: Sequence[float], out: str | Path,
                  batch_size: int = 1, device: torch.device = torch.device("cpu")) -> None:
    """Predict every image of ``paths`` and write its outputs to ``out``."""
    out = Path(out)
    grouping = model.meta["grouping"]
    label_ids, colors = class_label_ids(grouping), class_colors(grouping)
    groups = list(batches(paths, batch_size))  # reads every header first: a bad file fails before any output
    with tqdm(total=len(paths), desc="predict", unit="img") as bar:
        for batch in groups:
            images = [read_image(p) for p in batch]
            x = torch.stack([normalise(im) for im in images]).to(device)
            logits, attention = predict_image(model, x, scales)
            for i, (path, image) in enumerate(zip(batch, images)):
                write_outputs(out, path.stem, image, logits[i], {s: a[i] for s, a in attention.items()},
                              label_ids, colors)
            bar.update(len(batch))


DESCRIPTION = __doc__.split("\n\n")[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``hms predict``, on ``p``."""
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively for *.png, *.jpg)")
    p.add_argument("--model", default="models/hms/model.pt", help="HMS checkpoint (default: %(default)s)")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="inference scales, must contain 1.0 (default: the model's scales)")
    p.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=1, help="images per batch, same-size images only "
                   "(default: %(default)s)")


def run(args: argparse.Namespace, prog: str = "hms predict") -> int:
    """Predict as ``args`` say; returns 0 (``hms`` turns a raised error into its exit status)."""
    if args.batch_size < 1:
        raise PredictError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    paths = find_images(args.inputs)
    device = resolve_device(args.device, key="--device")
    model = load_model(args.model, device)
    scales = check_scales(model, args.scales if args.scales is not None else model.scales)
    predict_files(model, paths, scales, args.out, args.batch_size, device)
    print(f"{prog}: {len(paths)} images -> {args.out}", file=sys.stderr)
    return 0

