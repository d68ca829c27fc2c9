"""Confusion-matrix metrics shared by every evaluated model and baseline.

Rows are ground truth, columns predictions; pixels labelled 255 are ignored.
"""
from __future__ import annotations

import numpy as np
import torch

IGNORE = 255


def confusion_matrix(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of pixels of true class ``i`` predicted as ``j``."""
    counts = confusion_counts(_flat_long(pred), _flat_long(target), num_classes)
    return counts.reshape(num_classes, num_classes).numpy().astype(np.int64)


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The confusion matrix flattened, ``counts[i * C + j]``, on the tensors' own device
    (one ``bincount``: no copy of the predictions to the host)."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != IGNORE
    kept = target[keep]
    if kept.numel() and (int(kept.max()) >= num_classes or int(kept.min()) < 0):
        raise ValueError(f"target holds class ids outside 0..{num_classes - 1} (and 255)")
    return torch.bincount(kept * num_classes + pred[keep], minlength=num_classes * num_classes)


def _flat_long(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(x, np.ndarray):  # a copy: arrays read from images may be read-only
        return torch.from_numpy(np.array(x, dtype=np.int64).reshape(-1))
    return x.reshape(-1).long().cpu()


def scores(cm: np.ndarray) -> dict[str, float | list[float]]:
    """Scores of a confusion matrix.

    ``IoU_c = cm[c,c] / (row_c + col_c - cm[c,c])`` (NaN when the class is neither
    present nor predicted); ``mIoU`` = mean IoU over the other classes;
    pixel accuracy = ``trace / total``; mean class accuracy = mean over present
    classes of ``cm[c,c] / row_c``.
    """
    cm = cm.astype(np.float64)
    diag, rows, cols = np.diag(cm), cm.sum(1), cm.sum(0)
    union = rows + cols - diag
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, diag / union, np.nan)
        class_acc = np.where(rows > 0, diag / rows, np.nan)
    total = cm.sum()
    return {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_acc": float(diag.sum() / total) if total else float("nan"),
        "mean_class_acc": float(np.nanmean(class_acc)) if np.isfinite(class_acc).any() else float("nan"),
        "iou": [float(v) for v in iou],
    }
