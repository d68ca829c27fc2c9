"""Evaluation of every row of the results table from one pass over the val split.

Per image, each scale runs once; its logits and attention feed every row:
single scales, average and max pooling over scales (both at scale 1.0), and
HMS chains. One confusion matrix per row, at full label resolution.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from hms_core.hms import HMS, hierarchical_fusion
from hms_core.metrics import confusion_matrix, scores
from hms_core.model import resize, scaled_size


def scale_name(s: float) -> str:
    return f"{float(s):.1f}" if float(s) * 10 == int(float(s) * 10) else f"{float(s):g}"


def single_rows(scales: Sequence[float]) -> dict[str, float]:
    """Row name -> scale of each single-scale row (``scale_0.5``, ...), in ascending scale order."""
    return {f"scale_{scale_name(s)}": s for s in sorted(scales)}


def hms_rows(hms_scales: Sequence[Sequence[float]]) -> dict[str, Sequence[float]]:
    """Row name -> scale chain of each HMS row (``hms_0.5-1.0``, ...)."""
    return {"hms_" + "-".join(scale_name(s) for s in sorted(chain)): chain for chain in hms_scales}


def row_names(scales: Sequence[float], hms_scales: Sequence[Sequence[float]]) -> list[str]:
    return list(row_specs(scales, hms_scales))


def row_specs(scales: Sequence[float], hms_scales: Sequence[Sequence[float]], explicit: HMS | None = None
              ) -> dict[str, Sequence[float] | str]:
    """Row name -> its scales, ``"avg"``/``"max"`` pooling, or ``"explicit"``, in table order."""
    specs: dict[str, Sequence[float] | str] = {name: [s] for name, s in single_rows(scales).items()}
    specs.update({"avg": "avg", "max": "max"})
    specs.update(hms_rows(hms_scales))
    if explicit is not None:
        specs[explicit_row(explicit)] = "explicit"
    return specs


@torch.no_grad()
def predict_rows(model: HMS, image: torch.Tensor, scales: Sequence[float],
                 hms_scales: Sequence[Sequence[float]], flip: bool = False) -> dict[str, torch.Tensor]:
    """Logits of every row for a batch ``image`` [B, 3, H, W], each at ``H x W``."""
    size = tuple(image.shape[-2:])
    outputs = {float(s): model.scale_forward(image, s) for s in
               sorted({float(s) for s in scales} | {float(s) for c in hms_scales for s in c})}
    if flip:  # average with the mirrored prediction, mirrored back
        for s, (p, a) in outputs.items():
            pf, af = model.scale_forward(image.flip(-1), s)
            outputs[s] = ((p + pf.flip(-1)) / 2, None if a is None else (a + af.flip(-1)) / 2)
    logits = {name: resize(outputs[float(s)][0], size) for name, s in single_rows(scales).items()}
    at_one = torch.stack([resize(outputs[float(s)][0], scaled_size(size, 1.0)) for s in scales])
    logits["avg"] = resize(at_one.mean(0), size)
    logits["max"] = resize(at_one.amax(0), size)
    for name, chain in hms_rows(hms_scales).items():
        logits[name] = resize(hierarchical_fusion({float(s): outputs[float(s)] for s in chain}), size)
    return logits


def explicit_row(model: HMS) -> str:
    return "explicit_" + "-".join(scale_name(s) for s in model.scales)


@torch.no_grad()
def predict_explicit(model: HMS, image: torch.Tensor, flip: bool = False) -> torch.Tensor:
    logits = model(image)
    return (logits + model(image.flip(-1)).flip(-1)) / 2 if flip else logits


def evaluate(model: HMS, loader: torch.utils.data.DataLoader, scales: Sequence[float],
             hms_scales: Sequence[Sequence[float]], num_classes: int, device: torch.device,
             flip: bool = False, explicit: HMS | None = None,
             on_prediction: Callable[[str, int, np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
    """One confusion matrix per row over the whole loader; ``explicit`` adds its row.

    ``on_prediction(row, image_index, class_ids)`` sees every prediction (e.g. to
    write it for the official evaluator); the loader must not shuffle.
    """
    model.eval().to(device)
    names = row_names(scales, hms_scales)
    if explicit is not None:
        explicit.eval().to(device)
        names.append(explicit_row(explicit))
    cms = {n: np.zeros((num_classes, num_classes), dtype=np.int64) for n in names}
    seen = 0
    for image, label in tqdm(loader, desc="evaluate", unit="batch"):
        image = image.to(device)
        logits = predict_rows(model, image, scales, hms_scales, flip)
        if explicit is not None:
            logits[names[-1]] = predict_explicit(explicit, image, flip)
        for name in names:
            pred = logits[name].argmax(1)
            cms[name] += confusion_matrix(pred, label, num_classes)
            if on_prediction is not None:
                for i, p in enumerate(pred.cpu().numpy()):
                    on_prediction(name, seen + i, p)
        seen += len(image)
    return cms


def method_label(name: str) -> str:
    if name.startswith("scale_"):
        return f"scale {name[6:]}"
    if name.startswith("hms_"):
        return "HMS " + name[4:].replace("-", ", ")
    if name.startswith("explicit_"):
        return "explicit attention " + name[9:].replace("-", ", ")
    return {"avg": "average pooling", "max": "max pooling"}[name]


def results(cms: dict[str, np.ndarray], class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Metrics per row: mIoU, pixel accuracy, mean class accuracy, IoU per class."""
    out = {}
    for name, cm in cms.items():
        s = scores(cm)
        out[name] = {"mIoU": s["mIoU"], "pixel_acc": s["pixel_acc"], "mean_class_acc": s["mean_class_acc"],
                     "iou": {c: v for c, v in zip(class_names, s["iou"])}}
    return out


def table_rows(res: dict[str, dict[str, Any]], meta: dict[str, Any],
               costs: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Rows laid out like seed 000's Table 2: trunk, head, scale or method, epochs, mIoU, accuracy
    (then the costs, when measured, and the IoU of each class)."""
    rows = []
    for name, r in res.items():
        cost = (costs or {}).get(name)
        rows.append({
            "trunk": meta["trunk"], "head": meta["head"], "method": method_label(name), "row": name,
            "epochs": round(meta["epochs"], 2),
            "finetune_epochs": 0.0 if name.startswith("scale_") else round(meta.get("finetune_epochs", 0), 2),
            "mIoU": round(100 * r["mIoU"], 2), "accuracy": round(100 * r["pixel_acc"], 2),
            "mean_class_acc": round(100 * r["mean_class_acc"], 2),
            **({} if cost is None else {"params (M)": round(cost["params"] / 1e6, 2),
                                        "ms/image": round(cost["ms_per_image"], 1),
                                        "peak MB": round(cost["peak_mem_mb"], 1)}),
            **{f"IoU {c}": round(100 * v, 2) for c, v in r["iou"].items()},
        })
    return rows


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str], mark_best: Sequence[str] = ()) -> str:
    """A markdown table; in each column of ``mark_best`` the highest value is bold."""
    best = {c: max((r[c] for r in rows if not _missing(r[c])), default=None) for c in mark_best}

    def cell(r: dict[str, Any], c: str) -> str:
        v = r[c]
        if _missing(v):
            return "-"
        return f"**{v}**" if c in best and v == best[c] else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))
