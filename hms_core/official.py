"""Cross-check against the official Cityscapes pixel-level evaluator
(``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``).

Predictions are written as official label-id PNGs and scored by the official
code against the dataset's ``*_gtFine_labelIds.png``; its category scores
(class scores in ``trainid`` mode) must equal ours from the confusion matrix.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from hms_core.data import IMAGE_SUFFIX, LABEL_SUFFIX
from hms_core.labelmap import class_label_ids
from hms_core.labels import Grouping


def ground_truth_path(image_path: str | Path) -> Path:
    """``.../leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` -> its ``gtFine`` label-id file."""
    image_path = Path(image_path)
    split_dir = image_path.parents[2]  # .../leftImg8bit
    relative = image_path.relative_to(split_dir)
    return split_dir.parent / "gtFine" / relative.parent / (image_path.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX)


def write_label_ids(pred: np.ndarray, path: str | Path, grouping: Grouping) -> None:
    """Write class ids ``pred`` [H, W] as an official label-id PNG."""
    Image.fromarray(class_label_ids(grouping.mode)[pred]).save(path)


def official_scores(pred_files: Sequence[str | Path], image_paths: Sequence[str | Path],
                    grouping: Grouping) -> dict[str, float]:
    """Score label-id prediction files with the official evaluator.

    Returns ``{name: IoU}`` for the scored categories (or the 19 classes in
    ``trainid`` mode) plus ``"mIoU"``, the official average.
    """
    if grouping.mode not in ("category", "trainid"):
        raise ValueError(f"evaluate.official_check: the official evaluator scores 'category' or 'trainid', "
                         f"not {grouping.mode!r}")
    # The module reads its settings at import; keep its console output out of ours.
    with contextlib.redirect_stdout(io.StringIO()):
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    gt_files = [str(ground_truth_path(p)) for p in image_paths]
    args = official.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    with contextlib.redirect_stdout(io.StringIO()):
        result = official.evaluateImgLists([str(p) for p in pred_files], gt_files, args)
    if grouping.mode == "trainid":
        scores = {name: result["classScores"][name] for name in grouping.class_names}
        scores["mIoU"] = result["averageScoreClasses"]
    else:
        scores = {name: result["categoryScores"][name] for name in grouping.class_names}
        scores["mIoU"] = result["averageScoreCategories"]
    return scores


def compare(ours: dict, official: dict[str, float]) -> float:
    """Largest absolute difference between our row (``results()`` format) and the official scores."""
    diffs = [abs(ours["iou"][name] - v) for name, v in official.items() if name != "mIoU"
             if not (np.isnan(v) and np.isnan(ours["iou"][name]))]
    diffs.append(abs(ours["mIoU"] - official["mIoU"]))
    return float(max(diffs))


class OfficialCheck:
    """Collects one row's predictions during evaluation, then scores them officially.

    ``collect`` is the ``on_prediction`` hook of :func:`hms_core.evaluation.evaluate`.
    """

    TOLERANCE = 1e-4

    def __init__(self, row: str, image_paths: Sequence[str | Path], grouping: Grouping,
                 workdir: str | Path) -> None:
        self.row, self.image_paths, self.grouping = row, list(image_paths), grouping
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.files: dict[int, Path] = {}

    def collect(self, row: str, index: int, pred: np.ndarray) -> None:
        if row == self.row:
            self.files[index] = self.workdir / f"{index:06d}_pred_labelIds.png"
            write_label_ids(pred, self.files[index], self.grouping)

    def finish(self, ours: dict) -> dict:
        """Official scores, ours, and their largest difference; raises if above tolerance."""
        files = [self.files[i] for i in range(len(self.image_paths))]
        official = official_scores(files, self.image_paths, self.grouping)
        diff = compare(ours, official)
        report = {"row": self.row, "official": official,
                  "ours": {**{k: ours["iou"][k] for k in official if k != "mIoU"}, "mIoU": ours["mIoU"]},
                  "max_abs_diff": diff, "tolerance": self.TOLERANCE}
        if not diff <= self.TOLERANCE:
            raise ValueError(f"official evaluator disagrees with our scores of row {self.row} by {diff:.2e} "
                             f"(tolerance {self.TOLERANCE})")
        return report
