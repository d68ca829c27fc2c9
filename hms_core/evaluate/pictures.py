"""Pictures of an evaluation: prediction panels with HMS attention maps, confusion matrices.

Panels show, for one val image: the image, its ground truth, the prediction of
each table row, and the HMS attention ``a_s`` of each non-top scale as a heat
map (bright: scale ``s`` is trusted over the next higher scale).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import torch

from hms_core.data.dataset import MEAN, STD
from hms_core.data.labelmap import class_colors
from hms_core.data.labels import Grouping
from hms_core.evaluate.rows import Row, attention_maps, method_label, predict_rows
from hms_core.io import atomic_write
from hms_core.models.hms import HMS
from hms_core.runtime.speed import Speed

IGNORE_COLOUR = (0, 0, 0)


def colourise(classes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Class ids [H, W] (taken as uint8) -> official Cityscapes colours [H, W, 3]; 255 (ignored) is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colours)] = colours
    lut[255] = IGNORE_COLOUR
    return lut[classes.astype(np.uint8)]


def _save(fig: plt.Figure, path: str | Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


@torch.no_grad()
def prediction_panel(model: HMS, image: torch.Tensor, label: torch.Tensor, grouping: Grouping,
                     rows: dict[str, Row], path: str | Path, explicit: HMS | None = None,
                     speed: Speed | None = None, title: str = "") -> None:
    """One figure: image, ground truth, every row's prediction, and HMS attention heat maps.

    The models run on ``speed``'s device (default: the CPU) like in :func:`hms_core.evaluate.rows.evaluate`.
    """
    speed = speed or Speed(torch.device("cpu"))
    with speed.autocast():
        scores, outputs = predict_rows(model, speed.to_device(image[None]), rows, explicit)
    colours = class_colors(grouping.mode)
    shown = np.clip((image * STD + MEAN).permute(1, 2, 0).numpy(), 0, 1)
    tiles = [("image", shown, None), ("ground truth", colourise(label.numpy(), colours), None)]
    tiles += [(method_label(name), colourise(score[0].argmax(0).cpu().numpy(), colours), None)
              for name, score in scores.items()]
    tiles += [(f"attention a_{s:g}", a[0, 0].cpu().numpy(), "magma")
              for s, a in attention_maps(outputs, tuple(image.shape[-2:])).items()]
    cols = 4
    rows = -(-len(tiles) // cols)
    aspect = image.shape[-1] / image.shape[-2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2 * aspect, rows * 2.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (text, picture, cmap) in zip(axes.ravel(), tiles):
        ax.imshow(picture, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None,
                  interpolation="nearest")
        ax.set_title(text, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


def confusion_figure(cm: np.ndarray, class_names: Sequence[str], title: str, path: str | Path) -> None:
    """Row-normalised confusion matrix (rows: truth, columns: prediction) as a heat map."""
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("prediction", fontsize=8)
    ax.set_ylabel("ground truth", fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    _save(fig, path)
