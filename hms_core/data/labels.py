"""Label grouping through the official Cityscapes label table (``cityscapesscripts``).

Modes (``data.grouping``):

* ``category``: the 7 scored categories of the official "IoU categories"
  benchmark (flat ... vehicle -> 0..6). Void labels and labels the official
  evaluator ignores (``ignoreInEval``: parking, rail track, guard rail, bridge,
  tunnel, polegroup, caravan, trailer) map to 255, as in the benchmark.
* ``category_with_void``: every label -> its category id 0..7, void included
  as class 0 (seed 000's setup, Table 1).
* ``trainid``: the standard 19 training classes (official ``trainId``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS

GROUPINGS = ("category", "category_with_void", "trainid")
IGNORE = 255
# Official category ids: void 0, flat 1, construction 2, object 3, nature 4, sky 5, human 6, vehicle 7.
CATEGORY_NAMES = ("void", "flat", "construction", "object", "nature", "sky", "human", "vehicle")


def official_labels() -> list:
    """Official labels that can appear in label images (the license plate, id -1, never does)."""
    return [label for label in CITYSCAPES_LABELS if 0 <= label.id < 256]


@dataclass(frozen=True)
class Grouping:
    """A label-id -> class-id lookup table and the names of the scored classes."""

    mode: str
    lut: np.ndarray          # uint8[256]: label id -> class id or 255
    known: np.ndarray        # bool[256]: label id exists in the official table
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def apply(self, label_ids: np.ndarray) -> np.ndarray:
        """Map an array of official label ids to class ids (255 = ignored)."""
        return self.lut[label_ids]

    def unknown_ids(self, label_ids: np.ndarray) -> list[int]:
        """Label ids present in ``label_ids`` that the official table does not define."""
        return [int(i) for i in np.unique(label_ids) if not self.known[i]]


def build_grouping(mode: str) -> Grouping:
    """Build the lookup table of ``mode`` from the official label table."""
    if mode not in GROUPINGS:
        raise ValueError(f"data.grouping: unknown mode {mode!r}; expected one of {', '.join(GROUPINGS)}")
    lut = np.full(256, IGNORE, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    for label in official_labels():
        known[label.id] = True
        if mode == "category":
            if label.categoryId != 0 and not label.ignoreInEval:
                lut[label.id] = label.categoryId - 1
        elif mode == "category_with_void":
            lut[label.id] = label.categoryId
        elif 0 <= label.trainId < IGNORE:
            lut[label.id] = label.trainId
    if mode == "category":
        names = CATEGORY_NAMES[1:]
    elif mode == "category_with_void":
        names = CATEGORY_NAMES
    else:
        by_train_id = {l.trainId: l.name for l in CITYSCAPES_LABELS if 0 <= l.trainId < IGNORE}
        names = tuple(by_train_id[i] for i in range(len(by_train_id)))
    return Grouping(mode, lut, known, names)

