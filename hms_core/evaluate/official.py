"""Cross-check against the official Cityscapes pixel-level evaluator
(``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``).

Two halves, two DVC stages, so that a failed cross-check never costs the table:

* ``evaluate`` writes the class ids that one row (the last HMS row) predicts
  for every val image with :class:`PredictionWriter`: a folder with one
  ``{city}/{stem}_classIds.png`` per image and ``index.json`` (row, grouping,
  image paths);
* ``official_check`` (:func:`official_check`) turns them into official label-id
  PNGs, maps the ground truth through ``data.label_map`` when the dataset holds
  its own ids, scores them with the official code and compares its category
  scores (class scores in ``trainid`` mode) with ours from ``metrics/eval.json``.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from hms_core.data.dataset import CLASS_SUFFIX, IMAGE_SUFFIX, LABEL_SUFFIX
from hms_core.data.labelmap import class_label_ids, unmapped_ids
from hms_core.data.labels import Grouping, build_grouping
from hms_core.io import write_json

INDEX_FILE = "index.json"
TOLERANCE = 1e-4
# The official evaluator scores categories without void, or the 19 train classes.
OFFICIAL_MODES = ("category", "trainid")


class OfficialDisagreement(ValueError):
    """The official evaluator's scores of a row differ from ours by more than the tolerance."""


def ground_truth_path(image_path: str | Path) -> Path:
    """``.../leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` -> its ``gtFine`` label-id file."""
    image_path = Path(image_path)
    split_dir = image_path.parents[2]  # .../leftImg8bit
    relative = image_path.relative_to(split_dir)
    return split_dir.parent / "gtFine" / relative.parent / (image_path.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX)


def prediction_name(image_path: str | Path) -> str:
    """``.../{city}/{stem}_leftImg8bit.png`` -> ``{city}/{stem}_classIds.png``, its prediction's name."""
    image_path = Path(image_path)
    stem = image_path.name[: -len(IMAGE_SUFFIX)] if image_path.name.endswith(IMAGE_SUFFIX) else image_path.stem
    return f"{image_path.parent.name}/{stem}{CLASS_SUFFIX}"


def _save_png(array: np.ndarray, path: Path) -> Path:
    """Write ``array`` [H, W] as a PNG at ``path``, making its folder first; return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def check_official_mode(grouping: Grouping) -> None:
    """The official evaluator scores ``category`` or ``trainid`` only."""
    if grouping.mode not in OFFICIAL_MODES:
        raise ValueError(f"evaluate.official_check: the official evaluator scores only "
                         f"{' or '.join(OFFICIAL_MODES)}, not data.grouping {grouping.mode!r}")


class PredictionWriter:
    """Writes the class ids one row predicts for every val image to a folder, whole or not at all.

    Use it as a context manager around :func:`hms_core.evaluate.rows.evaluate`, with
    :meth:`collect` as its ``on_prediction`` hook. Predictions go to the sibling
    folder ``{out_dir}.tmp``; on a clean exit, once every image has its
    prediction, ``index.json`` is added and the folder is renamed to ``out_dir``.
    An error leaves ``out_dir`` as it was and no temporary folder. Disabled, the
    writer collects nothing and the folder holds only ``index.json``
    (``{"enabled": false}``).
    """

    def __init__(self, out_dir: str | Path, row: str, image_paths: Sequence[str | Path], grouping: str,
                 enabled: bool = True) -> None:
        self.out_dir, self.row, self.grouping, self.enabled = Path(out_dir), row, grouping, enabled
        self.image_paths = [Path(p).as_posix() for p in image_paths]
        self.names = [prediction_name(p) for p in self.image_paths]
        if len(set(self.names)) != len(self.names):
            duplicate = next(name for i, name in enumerate(self.names) if name in self.names[:i])
            raise ValueError(f"{self.out_dir}: two val images share the prediction name {duplicate}")
        self.tmp = self.out_dir.with_name(self.out_dir.name + ".tmp")
        self.written: set[int] = set()

    def __enter__(self) -> "PredictionWriter":
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self

    def collect(self, row: str, index: int, pred: np.ndarray) -> None:
        """The ``on_prediction(row, image_index, class_ids)`` hook: keep the checked row's prediction."""
        if not self.enabled or row != self.row:
            return
        if not 0 <= index < len(self.names):
            raise ValueError(f"{self.out_dir}: prediction for image {index}, but there are "
                             f"{len(self.names)} val images")
        _save_png(np.asarray(pred).astype(np.uint8), self.tmp / self.names[index])
        self.written.add(index)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _commit(self) -> None:
        if self.enabled and len(self.written) != len(self.names):
            missing = next(i for i in range(len(self.names)) if i not in self.written)
            raise ValueError(f"{self.out_dir}: no prediction of row {self.row} for val image "
                             f"{self.image_paths[missing]} ({len(self.written)} of {len(self.names)} written)")
        index = {"enabled": False}
        if self.enabled:
            index = {"enabled": True, "row": self.row, "grouping": self.grouping,
                     "predictions": [{"image": image, "prediction": name}
                                     for image, name in zip(self.image_paths, self.names)]}
        write_json(self.tmp / INDEX_FILE, index)
        shutil.rmtree(self.out_dir, ignore_errors=True)
        self.tmp.rename(self.out_dir)


def read_predictions(folder: str | Path) -> dict[str, Any]:
    """The ``index.json`` of a predictions folder written by :class:`PredictionWriter`."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions index (run the evaluate stage)")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(index, dict) or not isinstance(index.get("enabled"), bool):
        raise ValueError(f"{path}: expected a mapping with 'enabled' true or false")
    if index["enabled"] and not (isinstance(index.get("row"), str) and isinstance(index.get("grouping"), str)
                                 and isinstance(index.get("predictions"), list) and index["predictions"]):
        raise ValueError(f"{path}: expected 'row', 'grouping' and a non-empty list 'predictions'")
    return index


def map_ground_truth(gt_files: Sequence[str | Path], label_map: np.ndarray, out_dir: str | Path) -> list[Path]:
    """Write each ground-truth file through ``label_map`` (own id -> official label id) under ``out_dir``.

    The mapped files keep their ``{city}/{name}``; an id the map does not define is an error.
    """
    out = []
    for gt in map(Path, gt_files):
        ids = _read_label_png(gt)
        unmapped = unmapped_ids(label_map, ids)
        if unmapped:
            raise ValueError(f"{gt}: ids {unmapped} have no entry in the label map (data.label_map)")
        out.append(_save_png(label_map[ids], Path(out_dir) / gt.parent.name / gt.name))
    return out


def _read_label_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ground-truth label file not found")
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ground-truth PNG ({exc})") from None


def official_scores(pred_files: Sequence[str | Path], gt_files: Sequence[str | Path],
                    grouping: Grouping) -> dict[str, float]:
    """Score label-id prediction files against label-id ground-truth files with the official evaluator.

    Returns ``{name: IoU}`` for the scored categories (or the 19 classes in
    ``trainid`` mode) plus ``"mIoU"``, the official average. The evaluator quits
    (``sys.exit``) on input it cannot score; that becomes a ``ValueError`` naming
    the file when it can be found.
    """
    check_official_mode(grouping)
    # The module reads its settings at import; keep its console output out of ours.
    with contextlib.redirect_stdout(io.StringIO()):
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    args = official.args
    args.evalInstLevelScore, args.evalPixelAccuracy, args.JSONOutput, args.quiet = False, False, False, True
    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console):
            result = official.evaluateImgLists([str(p) for p in pred_files], [str(p) for p in gt_files], args)
    except SystemExit:
        raise ValueError(_evaluator_error(console.getvalue(), gt_files, args.evalLabels)) from None
    scores_key, mean_key = (("classScores", "averageScoreClasses") if grouping.mode == "trainid"
                            else ("categoryScores", "averageScoreCategories"))
    return {**{name: result[scores_key][name] for name in grouping.class_names}, "mIoU": result[mean_key]}


def _evaluator_error(console: str, gt_files: Sequence[str | Path], known_ids: Sequence[int]) -> str:
    """One line for an evaluator that quit: the ground-truth file with unknown ids first, then its message."""
    errors = [line[len("ERROR:"):].strip() for line in console.splitlines() if line.startswith("ERROR:")]
    message = f"the official Cityscapes evaluator stopped: {errors[-1] if errors else 'no message'}"
    known = np.zeros(256, dtype=bool)
    known[[i for i in known_ids if 0 <= i < 256]] = True
    for gt in map(Path, gt_files):
        with contextlib.suppress(OSError, ValueError, SyntaxError):
            unknown = [int(i) for i in np.unique(_read_label_png(gt)) if not known[i]]
            if unknown:
                return f"{gt}: label ids {unknown} are not official Cityscapes label ids; {message}"
    return message


def compare(ours: dict[str, float], official: dict[str, float]) -> float:
    """Largest absolute difference between our scores and the official ones, both ``{name: score}``.

    A score that is NaN (class absent) on one side only counts as an infinite difference.
    """
    pairs = [(ours[name], v) for name, v in official.items()]
    diffs = [0.0 if math.isnan(a) and math.isnan(b) else math.inf if math.isnan(a) or math.isnan(b)
             else abs(a - b) for a, b in pairs]
    return float(max(diffs))


def _label_id_predictions(folder: Path, entries: Sequence[dict], grouping: Grouping, out_dir: Path) -> list[Path]:
    """The class-id predictions of ``entries`` rewritten as official label-id PNGs under ``out_dir``."""
    out = []
    for entry in entries:
        source = folder / entry["prediction"]
        if not source.is_file():
            raise FileNotFoundError(f"{source}: prediction listed in {folder / INDEX_FILE} not found")
        with Image.open(source) as im:
            pred = np.asarray(im)
        if pred.ndim != 2 or pred.max(initial=0) >= grouping.num_classes:
            raise ValueError(f"{source}: expected class ids 0..{grouping.num_classes - 1} of {grouping.mode}")
        path = out_dir / entry["prediction"].replace(CLASS_SUFFIX, "_labelIds.png")
        out.append(_save_png(class_label_ids(grouping.mode)[pred], path))  # class ids -> official label ids
    return out


def _row_scores(eval_json: Path, row: str) -> dict:
    if not eval_json.is_file():
        raise FileNotFoundError(f"{eval_json}: our scores not found (run the evaluate stage)")
    results = json.loads(eval_json.read_text())
    if row not in results:
        raise ValueError(f"{eval_json}: no row {row!r} (the predictions' row); rerun the evaluate stage")
    return results[row]


def official_check(predictions: str | Path, eval_json: str | Path, grouping: str,
                   label_map: np.ndarray | None = None, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Score the predictions folder officially and compare with our scores of its row.

    ``grouping`` is ``data.grouping``; ``label_map`` (:func:`hms_core.data.labelmap.load_label_map`)
    turns the dataset's own ground-truth ids into official label ids first. Returns the
    report: row, official scores, ours, ``max_abs_diff``, ``tolerance`` and
    ``agreement``; a disagreement is recorded, not raised (see :func:`check_agreement`).
    """
    folder = Path(predictions)
    index = read_predictions(folder)
    if not index["enabled"]:
        raise ValueError(f"{folder / INDEX_FILE}: evaluate wrote no predictions (evaluate.official_check was "
                         f"false when it ran); rerun the evaluate stage")
    if index["grouping"] != grouping:
        raise ValueError(f"{folder / INDEX_FILE}: predictions of grouping {index['grouping']!r}, but data.grouping "
                         f"is {grouping!r}; rerun the pipeline")
    g = build_grouping(grouping)
    check_official_mode(g)
    row = _row_scores(Path(eval_json), index["row"])
    entries = index["predictions"]
    with tempfile.TemporaryDirectory(prefix="hms_official_") as tmp:
        pred_files = _label_id_predictions(folder, entries, g, Path(tmp) / "pred")
        gt_files = [ground_truth_path(e["image"]) for e in entries]
        for gt in gt_files:
            if not gt.is_file():
                raise FileNotFoundError(f"{gt}: ground-truth label file not found")
        if label_map is not None:
            gt_files = map_ground_truth(gt_files, label_map, Path(tmp) / "gt")
        official = official_scores(pred_files, gt_files, g)
    ours = {**{k: row["iou"][k] for k in official if k != "mIoU"}, "mIoU": row["mIoU"]}
    diff = compare(ours, official)
    return {"enabled": True, "row": index["row"], "grouping": grouping, "label_mapped": label_map is not None,
            "official": official, "ours": ours,
            "max_abs_diff": diff, "tolerance": tolerance, "agreement": bool(diff <= tolerance)}


def check_agreement(report: dict[str, Any], where: str = "metrics/official.json") -> None:
    """Raise :class:`OfficialDisagreement` (one line) when ``report`` records a disagreement."""
    if report.get("enabled") and not report["agreement"]:
        diff = report["max_abs_diff"]
        by = "inf (a class scored on one side only)" if math.isinf(diff) else f"{diff:.2e}"
        raise OfficialDisagreement(f"official evaluator disagrees with our scores of row {report['row']} by {by} "
                                   f"(tolerance {report['tolerance']:.0e}); both recorded in {where}")
