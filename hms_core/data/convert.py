"""Convert an "images/ + masks/ + class list" dataset into the Cityscapes layout (``hms convert``, and
the ``convert`` stage for ``data.convert.root``).

* ``classes.txt``: one class name per line; line ``i`` (from 0) is mask value ``i``.
* ``masks/``: single-channel PNGs of class indices, matched to ``images/`` by file stem.

Writes ``ROOT/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` (PNG images are
copied, JPEGs re-encoded as PNG), ``ROOT/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png``
(mask values unchanged), and a label-map skeleton (default ``ROOT/label_map.yaml``)
mapping each class index to a Cityscapes label: names that match an official label
name are filled in, the rest are ``null`` for the user to complete. An existing
label map is never overwritten, so converting a second split keeps the user's edits.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from hms_core.data.dataset import IMAGE_SUFFIX, LABEL_SUFFIX
from hms_core.data.labels import official_labels
from hms_core.io import atomic_write, write_text

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_CITY = "custom"
# Many datasets mark "ignore" pixels with 255 outside their class list.
IGNORE_VALUE = 255


class ConvertError(ValueError):
    """The source dataset is not in the expected images/ + masks/ + class list layout."""


def read_classes(path: str | Path) -> list[str]:
    """Class names, one per line; trailing blank lines are allowed, blank names are not."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--classes: no class list at {path}")
    names = [line.strip() for line in path.read_text().splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ConvertError(f"{path}: empty class list (expected one class name per line)")
    for i, name in enumerate(names):
        if not name:
            raise ConvertError(f"{path}: line {i + 1} is blank; line i (from 1) names mask value i - 1")
    if len(names) > 256:
        raise ConvertError(f"{path}: {len(names)} classes; 8-bit masks index at most 256")
    return names


def _files(folder: Path, extensions: Sequence[str], what: str) -> dict[str, Path]:
    """Files under ``folder`` (recursively) by stem; stems must be unique."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--{what}: folder {folder} does not exist")
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in extensions:
            if p.stem in out:
                raise ConvertError(f"{p}: same stem as {out[p.stem]}; images and masks are matched by stem")
            out[p.stem] = p
    if not out:
        raise ConvertError(f"--{what}: no {'/'.join(extensions)} files in {folder}")
    return out


def match_pairs(images: Path, masks: Path) -> list[tuple[str, Path, Path]]:
    """(stem, image, mask) for every image; each image needs its mask and vice versa."""
    image_files = _files(images, IMAGE_EXTENSIONS, "images")
    mask_files = _files(masks, (".png",), "masks")
    for stem in sorted(set(image_files) - set(mask_files)):
        raise ConvertError(f"{image_files[stem]}: image has no mask {masks}/{stem}.png")
    for stem in sorted(set(mask_files) - set(image_files)):
        raise ConvertError(f"{mask_files[stem]}: mask has no image in {images}")
    return [(s, image_files[s], mask_files[s]) for s in sorted(image_files)]


def _read_mask(path: Path) -> tuple[np.ndarray, str]:
    try:
        with Image.open(path) as im:
            im.load()
            # 'P' is read as its palette indices, never converted through the palette.
            return np.asarray(im), im.mode
    except (OSError, SyntaxError, ValueError) as exc:
        raise ConvertError(f"{path}: unreadable mask ({exc})") from None


def convert_pair(image: Path, mask: Path, image_out: Path, mask_out: Path, num_classes: int) -> set[int]:
    """Write one image and its mask in the Cityscapes layout; return the mask values present."""
    values, mode = _read_mask(mask)
    if mode not in ("L", "P"):
        raise ConvertError(f"{mask}: mask mode {mode}; expected a single-channel 8-bit PNG of class "
                           f"indices (mode L or P)")
    present = {int(v) for v in np.unique(values)}
    bad = sorted(v for v in present if v >= num_classes and v != IGNORE_VALUE)
    if bad:
        raise ConvertError(f"{mask}: values {bad} are not indices of the {num_classes} classes of the class list")
    try:
        with Image.open(image) as im:
            size, fmt = im.size, im.format
            rgb = None if fmt == "PNG" else im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise ConvertError(f"{image}: unreadable image ({exc})") from None
    if size != (values.shape[1], values.shape[0]):
        raise ConvertError(f"{mask}: size {values.shape[::-1]} differs from its image {image} size {size} "
                           f"(width, height)")
    if rgb is None:
        atomic_write(image_out, lambda f: f.write(image.read_bytes()))
    else:
        atomic_write(image_out, lambda f: rgb.save(f, format="PNG"))
    if mode == "L":
        atomic_write(mask_out, lambda f: f.write(mask.read_bytes()))
    else:  # a palette PNG would be read through its palette: store the indices themselves
        atomic_write(mask_out, lambda f: Image.fromarray(values.astype(np.uint8)).save(f, format="PNG"))
    return present


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def label_map_skeleton(classes: Sequence[str], extra_values: Sequence[int] = ()) -> str:
    """Label-map YAML text (``to: labelIds``): official names pre-filled, others ``null``.

    Class names match official Cityscapes label names case-insensitively, with ``_``
    and ``-`` read as spaces. ``extra_values`` are mask values outside the class
    list (255, commonly "ignore"); they map to ``unlabeled``.
    """
    official = {_normalise_name(l.name): l.name for l in official_labels()}
    lines = ["# Label map: mask value -> official Cityscapes label name or id (see README.md).",
             "# Complete every null; map classes to ignore to 'unlabeled'.",
             "# With 'to: category' the targets are category names instead",
             "# (flat, construction, object, nature, sky, human, vehicle, void).",
             "to: labelIds", "map:"]
    for i, name in enumerate(classes):
        target = official.get(_normalise_name(name))
        comment = name.replace("\n", " ")
        lines.append(f"  {i}: {target}  # {comment}" if target else f"  {i}: null  # {comment}: TO DO")
    for v in extra_values:
        lines.append(f"  {v}: unlabeled  # not in the class list (usually 'ignore')")
    return "\n".join(lines) + "\n"


def convert(images: str | Path, masks: str | Path, classes: str | Path, out: str | Path, split: str,
            city: str = DEFAULT_CITY, label_map: str | Path | None = None) -> tuple[int, Path, bool]:
    """Convert one split; return (number of images, label-map path, whether it was written)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", city):
        raise ConvertError(f"--city: expected a folder name of letters, digits, '.', '_', '-', got {city!r}")
    names = read_classes(classes)
    pairs = match_pairs(Path(images), Path(masks))
    out = Path(out)
    present: set[int] = set()
    for stem, image, mask in tqdm(pairs, desc=f"convert {split}", unit="img"):
        present |= convert_pair(image, mask,
                                out / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}",
                                out / "gtFine" / split / city / f"{stem}{LABEL_SUFFIX}", len(names))
    label_map = Path(label_map) if label_map is not None else out / "label_map.yaml"
    written = not label_map.exists()
    if written:
        extra = sorted(v for v in present if v >= len(names))
        write_text(label_map, label_map_skeleton(names, extra))
    return len(pairs), label_map, written


def convert_dataset(root: str | Path, out: str | Path, splits: Sequence[str], label_map: str | Path
                    ) -> dict[str, int]:
    """Convert ``root/images/{split}``, ``root/masks/{split}`` and ``root/classes.txt`` for every split
    into ``out`` (Cityscapes layout), with ``label_map`` copied to ``out/label_map.yaml``.

    The label map is the dataset's (``data.convert.label_map``): a skeleton would hold
    ``null`` entries that ``prepare`` refuses. Returns the number of images per split.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"data.convert.root: no dataset folder at {root}")
    if not Path(label_map).is_file():
        raise FileNotFoundError(f"data.convert.label_map: no label-map file at {label_map}")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(label_map, out / "label_map.yaml")
    return {split: convert(root / "images" / split, root / "masks" / split, root / "classes.txt", out, split)[0]
            for split in splits}
