"""Cityscapes-layout datasets: discovery, label preparation, paired transforms.

Layout: ``{root}/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` with labels
``{root}/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png`` (official label ids).
``prepare_split`` groups the labels once and writes class-id PNGs plus an index;
the datasets read that index.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from hms_core.data.fastpng import decode_rgb8
from hms_core.data.labelmap import unmapped_ids
from hms_core.data.labels import IGNORE, Grouping
from hms_core.data.resize import scaled_size
from hms_core.io import atomic_dir, atomic_write, write_json

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
CLASS_SUFFIX = "_classIds.png"
# ImageNet statistics: the torchvision trunks (and their pretrained weights) expect them.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
# The mean colour in uint8: training crops are padded with it where the resized image ends
# (it normalises to within 0.01 of 0, the padding of the float path before).
PAD_RGB = tuple(round(255 * m) for m in MEAN.flatten().tolist())


class DataError(ValueError):
    """The dataset on disk is not what the pipeline expects."""


def find_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """All (image, label) pairs of ``split``; every image needs its label and vice versa."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root: dataset root {root} does not exist")
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DataError(f"{d}: missing folder (expected the Cityscapes layout leftImg8bit/{split}/, "
                            f"gtFine/{split}/)")
    images, labels = ({p.relative_to(d).as_posix()[: -len(suffix)]: p for p in d.glob(f"*/*{suffix}")}
                      for d, suffix in ((image_dir, IMAGE_SUFFIX), (label_dir, LABEL_SUFFIX)))
    for stem in sorted(set(images) - set(labels)):
        raise DataError(f"{images[stem]}: image has no label {label_dir / (stem + LABEL_SUFFIX)}")
    for stem in sorted(set(labels) - set(images)):
        raise DataError(f"{labels[stem]}: label has no image {image_dir / (stem + IMAGE_SUFFIX)}")
    if not images:
        raise DataError(f"{image_dir}: split '{split}' is empty (no */*{IMAGE_SUFFIX})")
    return [(images[s], labels[s]) for s in sorted(images)]


def _read_png(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(mode) if im.mode != mode else im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or corrupt PNG ({exc})") from None


def _check_size(label: str | Path, label_hw: tuple[int, ...], image: str | Path, image_hw: tuple[int, ...]) -> None:
    if label_hw != image_hw:
        raise DataError(f"{label}: label size {label_hw[::-1]} differs from its image {image} "
                        f"size {image_hw[::-1]} (width, height)")


def prepare_split(root: str | Path, split: str, out_dir: str | Path, grouping: Grouping,
                  label_map: np.ndarray | None = None) -> dict[str, Any]:
    """Group the label ids of ``split`` and write class-id PNGs plus ``{split}.json``.

    ``label_map`` (see :mod:`hms_core.data.labelmap`) first turns a dataset's own ids into
    official label ids.

    Returns the split's statistics (images, pixels per class).
    """
    out_dir = Path(out_dir)
    pairs = find_pairs(root, split)
    counts = np.zeros(grouping.num_classes + 1, dtype=np.int64)  # last bin: ignored pixels
    index = []
    for image_path, label_path in tqdm(pairs, desc=f"prepare {split}", unit="img"):
        label_ids = _read_png(label_path, "L")
        # Decoding the whole image, not just its header, finds truncated files now
        # rather than hours into training.
        _check_size(label_path, label_ids.shape, image_path, _read_png(image_path, "RGB").shape[:2])
        if label_map is not None:
            unmapped = unmapped_ids(label_map, label_ids)
            if unmapped:
                raise DataError(f"{label_path}: ids {unmapped} have no entry in the label map (data.label_map)")
            label_ids = label_map[label_ids]
        unknown = grouping.unknown_ids(label_ids)
        if unknown:
            raise DataError(f"{label_path}: label ids {unknown} are not in the official Cityscapes table")
        classes = grouping.apply(label_ids)
        counts += np.bincount(np.where(classes == IGNORE, grouping.num_classes, classes).ravel(),
                              minlength=grouping.num_classes + 1)
        city = label_path.parent.name
        out = out_dir / split / city / (label_path.name[: -len(LABEL_SUFFIX)] + CLASS_SUFFIX)
        atomic_write(out, lambda f: Image.fromarray(classes).save(f, format="PNG"))
        index.append({"image": image_path.as_posix(), "label": out.relative_to(out_dir).as_posix()})
    write_json(out_dir / f"{split}.json", index)
    return {"images": len(pairs),
            "class_pixels": dict(zip(grouping.class_names, counts[:-1].tolist())),
            "ignored_pixels": int(counts[-1])}


def read_index(prepared: str | Path, split: str) -> list[dict[str, str]]:
    path = Path(prepared) / f"{split}.json"
    if not path.is_file():
        raise DataError(f"{path}: prepared split not found (run the prepare stage)")
    index = json.loads(path.read_text())
    if not index:
        raise DataError(f"{path}: split '{split}' is empty")
    # Label paths are stored relative to the prepared folder, so the folder can move.
    return [{**e, "label": (Path(prepared) / e["label"]).as_posix()} for e in index]


def prepare_dataset(root: str | Path, out_dir: str | Path, grouping: Grouping, splits: Sequence[str],
                    label_map: np.ndarray | None = None) -> dict[str, Any]:
    """Prepare every split into ``out_dir`` with ``meta.json``; the folder appears whole or not at all."""
    with atomic_dir(out_dir) as tmp:
        stats = {split: prepare_split(root, split, tmp, grouping, label_map) for split in splits}
        meta = {"root": str(root), "grouping": grouping.mode, "classes": list(grouping.class_names),
                "splits": stats}
        write_json(tmp / "meta.json", meta)
    return meta


def normalise(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``[3, H, W]`` or a batch ``[B, 3, H, W]``, on any device -> float
    ``(x / 255 - mean) / std`` with ImageNet statistics, on the same device.

    The one normalisation of the pipeline: evaluation and prediction call it on the
    CPU per image, training on the device per batch (:func:`training_inputs`).
    """
    mean, std = _statistics(image.device)
    return (image.float() / 255 - mean) / std


@functools.lru_cache(maxsize=None)
def _statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per device: a fresh host-to-device copy of MEAN and STD at every training
    # step would be a small synchronous transfer in the middle of the step's queue.
    return MEAN.to(device), STD.to(device)


def training_inputs(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of :class:`TrainSet` crops, already on the device, as the losses take it:
    ``(normalise(image), label as int64)``.

    The loader ships uint8 (a quarter of the float bytes for images, an eighth of int64
    for labels) and the device does the arithmetic; every training stream goes through here.
    """
    return normalise(image), label.long()


def load_pair(entry: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image as uint8 RGB ``[3, H, W]`` and class ids as uint8 ``[H, W]``, as stored."""
    image = decode_rgb8(Path(entry["image"]))  # libpng: faster than PIL, the same pixels
    if image is None:
        image = torch.from_numpy(_read_png(Path(entry["image"]), "RGB").copy()).permute(2, 0, 1)
    label = torch.from_numpy(_read_png(Path(entry["label"]), "L").copy())
    _check_size(entry["label"], tuple(label.shape), entry["image"], tuple(image.shape[-2:]))
    return image, label


def load_sample(entry: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image as a normalised float tensor [3, H, W] and class ids as int64 [H, W] (evaluation)."""
    image, label = load_pair(entry)
    return normalise(image), label.long()


@dataclass(frozen=True)
class CropPlan:
    """One training crop: the image resized to ``size`` (``(H', W')``), the ``crop x crop``
    window at ``(top, left)`` of it (reaching past ``H'`` or ``W'`` into padding when the
    resized image is smaller than the crop), mirrored when ``flip``."""

    size: tuple[int, int]
    top: int
    left: int
    crop: int
    flip: bool


def draw_crop(shape: tuple[int, int], scale: float, crop: int, jitter: Sequence[float], hflip: bool,
              g: torch.Generator) -> CropPlan:
    """The random draws of one training crop of an ``(h, w)`` image, in this order from ``g``:

    ``f = scale * (j0 + (j1 - j0) * U)``, ``(H', W') = (max(1, round(h f)), max(1, round(w f)))``,
    ``top ~ U{0 .. max(H', crop) - crop}``, ``left ~ U{0 .. max(W', crop) - crop}``, then
    (only when ``hflip``) ``flip = U < 1/2``.
    """
    f = scale * (jitter[0] + (jitter[1] - jitter[0]) * torch.rand((), generator=g).item())
    size = scaled_size(shape, f)
    top = int(torch.randint(0, max(size[0], crop) - crop + 1, (), generator=g))
    left = int(torch.randint(0, max(size[1], crop) - crop + 1, (), generator=g))
    flip = hflip and torch.rand((), generator=g).item() < 0.5
    return CropPlan(size, top, left, crop, flip)


def source_span(start: int, count: int, in_size: int, out_size: int) -> tuple[int, int]:
    """The source pixels ``[a, b)`` that output pixels ``start .. start + count - 1`` of a resize
    from ``in_size`` to ``out_size`` pixels read.

    The output pixels cover the source interval ``[s start, s (start + count)]``,
    ``s = in_size / out_size``; the triangle filter of the resize reaches ``r = max(s, 1)``
    beyond it, and one more pixel guards against rounding:
    ``a = max(0, floor(s start - r) - 1)``, ``b = min(in_size, ceil(s (start + count) + r) + 1)``.
    """
    s = in_size / out_size
    r = max(s, 1.0)
    return max(0, math.floor(s * start - r) - 1), min(in_size, math.ceil(s * (start + count) + r) + 1)


def _valid(plan: CropPlan) -> tuple[int, int]:
    """Rows and columns of the crop that lie inside the resized image (the rest is padding)."""
    return min(plan.crop, plan.size[0] - plan.top), min(plan.crop, plan.size[1] - plan.left)


def crop_image(image: torch.Tensor, plan: CropPlan) -> torch.Tensor:
    """``plan``'s crop of ``resize_image(image, plan.size)``, uint8 ``[3, h, w]`` -> uint8
    ``[3, crop, crop]``, resizing only the source window the crop needs (:func:`source_span`).

    The window goes through PIL's ``resize(box=...)`` with the BILINEAR filter: output pixel
    ``i`` of the whole resize is centred at ``s (i + 1/2)`` in source coordinates and averages
    the source pixels ``j`` within ``r = max(s, 1)`` of it with weights ``1 - |j + 1/2 - c| / r``
    (normalised): the triangle filter of ``resize_image`` (PyTorch's antialiased bilinear mode
    copies PIL's), plain bilinear interpolation when growing. The box
    ``[s top, s (top + rows)]`` (less the window's corner) places the crop's pixel centres
    exactly where the whole resize has them. PIL computes in 8-bit fixed point and rounds after
    each of its two passes, so a pixel is within 1 (of 255) of the float resize; integer
    arithmetic gives the same bits in every process. Beyond the resized image the crop is
    :data:`PAD_RGB`. Not flipped.
    """
    (h, w), (rows, cols) = image.shape[-2:], _valid(plan)
    sy, sx = h / plan.size[0], w / plan.size[1]
    y0, y1 = source_span(plan.top, rows, h, plan.size[0])
    x0, x1 = source_span(plan.left, cols, w, plan.size[1])
    window = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0)[y0:y1, x0:x1].numpy()))
    # PIL refuses a box past the image by a rounding error: clamp to the window.
    box = (sx * plan.left - x0, sy * plan.top - y0,
           min(sx * (plan.left + cols), x1) - x0, min(sy * (plan.top + rows), y1) - y0)
    out = np.full((plan.crop, plan.crop, 3), PAD_RGB, dtype=np.uint8)
    out[:rows, :cols] = np.asarray(window.resize((cols, rows), Image.Resampling.BILINEAR, box=box))
    return torch.from_numpy(out).permute(2, 0, 1)


def nearest_index(in_size: int, out_size: int, start: int, count: int) -> torch.Tensor:
    """Source pixels of output pixels ``start .. start + count - 1`` of
    ``F.interpolate(mode="nearest")`` from ``in_size`` to ``out_size`` pixels:
    ``min(floor(i * s), in_size - 1)`` with ``s = in_size / out_size``, both the quotient
    and the product in float32 as PyTorch computes them, so labels come out bit-identical.
    """
    s = np.float32(in_size) / np.float32(out_size)
    i = np.arange(start, start + count, dtype=np.float32)
    return torch.from_numpy(np.minimum(np.floor(i * s).astype(np.int64), in_size - 1))


def crop_label(label: torch.Tensor, plan: CropPlan) -> torch.Tensor:
    """``plan``'s crop of the nearest-neighbour resize of ``label`` (``[h, w]`` -> ``[crop, crop]``,
    same dtype), reading only the label pixels it needs; :data:`IGNORE` beyond the resized image.
    Not flipped."""
    (h, w), (rows, cols) = label.shape, _valid(plan)
    out = torch.full((plan.crop, plan.crop), IGNORE, dtype=label.dtype)
    out[:rows, :cols] = label.index_select(0, nearest_index(h, plan.size[0], plan.top, rows)) \
                             .index_select(1, nearest_index(w, plan.size[1], plan.left, cols))
    return out


def random_scale_crop_flip(image: torch.Tensor, label: torch.Tensor, scale: float, crop: int,
                           jitter: Sequence[float], hflip: bool, g: torch.Generator
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired training transform of uint8 ``[3, h, w]`` and ``[h, w]``: resize by ``scale * U(jitter)``,
    random ``crop x crop`` crop, random flip (:func:`draw_crop`); uint8 out.

    Geometrically the crop of the whole image resized by :func:`hms_core.data.resize.resize_image`
    (bilinear, antialiased when shrinking: the resize of inference too) and of the label
    resized by nearest neighbour, padded with the mean colour and 255 where the resized
    image is smaller than the crop. Only the source window under the crop is resized: at
    scale 2 the whole resized image would be 4x the source's pixels, in float.
    """
    plan = draw_crop(tuple(label.shape), scale, crop, jitter, hflip, g)
    image, label = crop_image(image, plan), crop_label(label, plan)
    if plan.flip:
        image, label = image.flip(-1), label.flip(-1)
    return image.contiguous(), label.contiguous()


class TrainSet(torch.utils.data.Dataset):
    """Training crops at one scale: uint8 images ``[3, crop, crop]`` and uint8 class ids
    ``[crop, crop]`` (255 ignored); :func:`training_inputs` turns a batch on the device into
    model inputs.

    Indexed by ``(i, key)``: ``i`` picks the image, ``key`` (the sample's position in
    the run's sample stream) seeds its augmentation, so a crop depends on the seed
    and its position alone, not on workers or on where a resumed run started.
    """

    def __init__(self, index: list[dict[str, str]], scale: float, crop: int, jitter: Sequence[float],
                 hflip: bool, seed: int) -> None:
        self.index, self.scale, self.crop, self.jitter, self.hflip, self.seed = \
            index, scale, crop, list(jitter), hflip, seed

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, key = item
        image, label = load_pair(self.index[i])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
        return random_scale_crop_flip(image, label, self.scale, self.crop, self.jitter, self.hflip, g)


class StreamSampler(torch.utils.data.Sampler):
    """The run's sample stream from position ``start``: ``(image, position)`` pairs.

    Position ``p`` is sample ``p % n`` of epoch ``p // n``'s permutation, seeded by
    ``(seed, epoch)``. Resuming at ``start`` replays exactly the samples an
    uninterrupted run would have seen.

    Sharded over ``world_size`` processes, the stream is cut into blocks of
    ``batch`` positions and rank ``r`` keeps the blocks ``b`` with
    ``b % world_size == r``: with ``start`` a multiple of ``world_size * batch``,
    the ranks' batches of one step, in rank order, are the batch of
    ``world_size * batch`` positions a single process would draw.
    """

    def __init__(self, n: int, seed: int, start: int, stop: int, rank: int = 0, world_size: int = 1,
                 batch: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"StreamSampler: rank {rank} is not in [0, {world_size})")
        self.n, self.seed, self.start, self.stop = n, seed, start, stop
        self.rank, self.world_size, self.batch = rank, world_size, batch

    def _count_below(self, p: int) -> int:
        """Positions of this rank in ``[0, p)``: full cycles of ``world_size * batch``, then the rest."""
        cycle = self.world_size * self.batch
        return p // cycle * self.batch + min(max(p % cycle - self.rank * self.batch, 0), self.batch)

    def __len__(self) -> int:
        return max(0, self._count_below(self.stop) - self._count_below(self.start))

    def _positions(self):
        for block in range(self.start // self.batch, -(-self.stop // self.batch)):
            if block % self.world_size == self.rank:
                yield from range(max(self.start, block * self.batch), min(self.stop, (block + 1) * self.batch))

    def __iter__(self):
        epoch, perm = -1, None
        for p in self._positions():
            if p // self.n != epoch:
                epoch = p // self.n
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            yield int(perm[p % self.n]), p


class EvalSet(torch.utils.data.Dataset):
    """Whole images at full label resolution."""

    def __init__(self, index: list[dict[str, str]]) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_sample(self.index[i])
