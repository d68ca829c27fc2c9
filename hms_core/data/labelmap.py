"""Label maps between id spaces, all built from the official Cityscapes table.

* A dataset's own ids -> official Cityscapes label ids, read from a YAML file
  (``data.label_map``), so that any dataset can go through the same grouping::

      to: labelIds          # targets are official label names or ids
      map:
        0: unlabeled        # void: ignored in training and evaluation
        1: road
        2: car
        3: 21               # vegetation, by id

  With ``to: category`` the targets are category names (flat, construction,
  object, nature, sky, human, vehicle, void); each becomes the representative
  label id of its category (:func:`category_label_ids`).
* Our class ids -> Cityscapes label ids and colours, for writing predictions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hms_core.data.labels import CATEGORY_NAMES, build_grouping, official_labels
from hms_core.io import read_yaml

TARGETS = ("labelIds", "category")
# A source id the map does not define; 255 is never an official label id, so the
# official-table check of ``prepare`` would reject it even if it slipped through.
UNMAPPED = 255


class LabelMapError(ValueError):
    """A label-map file that cannot be read or does not define a valid map."""


def category_label_ids() -> dict[str, int]:
    """Category name -> its representative official label id.

    The representative is the lowest-id label of the category that the official
    evaluator scores (road, building, pole, vegetation, sky, person, car); void has
    no scored label and takes its lowest id (unlabeled, 0).
    """
    out: dict[str, int] = {}
    for category in CATEGORY_NAMES:
        members = sorted((l for l in official_labels() if l.category == category), key=lambda l: l.id)
        scored = [l for l in members if not l.ignoreInEval]
        out[category] = (scored or members)[0].id
    return out


def class_label_ids(grouping: str) -> np.ndarray:
    """uint8[num_classes]: class id of ``grouping`` -> Cityscapes label id.

    ``trainid``: the label of each trainId; category modes: the representative
    label id of each category (:func:`category_label_ids`).
    """
    label_id = {l.name: l.id for l in official_labels()} if grouping == "trainid" else category_label_ids()
    return np.array([label_id[n] for n in build_grouping(grouping).class_names], dtype=np.uint8)


def class_colors(grouping: str) -> np.ndarray:
    """uint8[num_classes, 3]: the official colour of the label each class id stands for."""
    color = {l.id: l.color for l in official_labels()}
    return np.array([color[int(i)] for i in class_label_ids(grouping)], dtype=np.uint8)


def _label_id(target: Any) -> int | None:
    """Official label id of a label name (case-insensitive) or id; None when there is none."""
    labels = official_labels()
    if isinstance(target, int) and not isinstance(target, bool):
        return target if any(l.id == target for l in labels) else None
    if isinstance(target, str):
        return {l.name.lower(): l.id for l in labels}.get(target.strip().lower())
    return None


def load_label_map(path: str | Path) -> np.ndarray:
    """Read a label-map YAML file; return a uint8[256] table source id -> Cityscapes label id.

    Source ids the file does not define map to :data:`UNMAPPED`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.label_map: no label-map file at {path}")
    doc = read_yaml(path, LabelMapError)
    if not isinstance(doc, dict) or set(doc) != {"to", "map"}:
        raise LabelMapError(f"{path}: expected exactly the keys 'to' ({' or '.join(TARGETS)}) and 'map' "
                            f"(source id -> target)")
    to, mapping = doc["to"], doc["map"]
    if to not in TARGETS:
        raise LabelMapError(f"{path}: 'to' must be one of {', '.join(TARGETS)}, got {to!r}")
    if not isinstance(mapping, dict) or not mapping:
        raise LabelMapError(f"{path}: 'map' must be a non-empty mapping source id -> target")
    representative = category_label_ids()
    lut = np.full(256, UNMAPPED, dtype=np.uint8)
    for source, target in mapping.items():
        if not (isinstance(source, int) and not isinstance(source, bool) and 0 <= source < 256):
            raise LabelMapError(f"{path}: source id {source!r} must be an integer in [0, 255]")
        if to == "category":
            label_id = representative.get(target.strip().lower()) if isinstance(target, str) else None
            expected = "a category name (" + ", ".join(CATEGORY_NAMES) + ")"
        else:
            label_id = _label_id(target)
            expected = "an official Cityscapes label name or id (e.g. road, car, 26)"
        if label_id is None:
            raise LabelMapError(f"{path}: source id {source} maps to {target!r}; expected {expected}")
        lut[source] = label_id
    return lut


def unmapped_ids(lut: np.ndarray, source_ids: np.ndarray) -> list[int]:
    """Ids present in ``source_ids`` that the label map ``lut`` does not define."""
    return [int(i) for i in np.unique(source_ids) if lut[i] == UNMAPPED]

