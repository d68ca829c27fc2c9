"""Evaluation of every row of the results table from one pass over the val split.

Per image, each scale runs once; its logits and attention feed every row:
single scales, average and max pooling over scales (both at scale 1.0), and
HMS chains. The one-model multi-scale baseline (the scale-1.0 model at several
scales, probabilities averaged: what mmsegmentation's ``--tta`` does) runs its
own pass; so does the explicit-attention baseline, unless its branches hold the
HMS model's weights (frozen fine-tuning from the same experts): it then fuses
the HMS pass's outputs. One confusion matrix per row, at full label resolution,
and the mean HMS attention per class. Large images can be run in overlapping
windows (``evaluate.window``) to bound the memory of the highest scale.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from hms_core.data.resize import resize, scaled_size
from hms_core.evaluate.metrics import IGNORE, confusion_counts, scores
from hms_core.models.hms import HMS, hierarchical_fusion, nearest_expert
from hms_core.models.multiscale import ScaleOutput, multiscale_forward
from hms_core.runtime.speed import Speed
from hms_core.text import chain_name, scale_name, table_lines


@dataclass(frozen=True)
class Row:
    """One row of the results table: how its prediction is made.

    ``kind``: ``single`` (one scale), ``avg`` / ``max`` (pooling of the per-scale
    logits at scale 1.0), ``tta`` (the scale-1.0 model at every scale of
    ``scales``, softmax probabilities averaged), ``hms`` (the attention chain over
    ``scales``) or ``explicit`` (the explicit-attention baseline). ``flip``: every
    scale's outputs averaged with those of the mirrored image.
    """

    kind: str
    scales: tuple[float, ...]
    flip: bool = False


def headline_chain(hms_scales: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """The chain of the table's headline HMS row: the last of ``evaluate.hms_scales`` (the row the
    official check scores, and the scales of the TTA and control rows)."""
    return tuple(sorted(float(s) for s in hms_scales[-1]))


def row_specs(scales: Sequence[float], hms_scales: Sequence[Sequence[float]],
              explicit_scales: Sequence[float] | None = None, flip: bool = False) -> dict[str, Row]:
    """Every row of the table in order: single scales, average and max pooling over every scale,
    average pooling over each HMS chain of other scales (``avg_0.5-1.0`` beside ``hms_0.5-1.0``),
    the HMS model's scale-1.0 branch at the headline chain's scales (TTA), without and with flip,
    the HMS chains, and the explicit baseline when ``explicit_scales`` is given.

    ``flip`` (``evaluate.flip``) mirrors every row; the TTA-with-flip row is then the TTA row.
    """
    every = tuple(sorted(float(s) for s in scales))
    chains = [tuple(sorted(float(s) for s in chain)) for chain in hms_scales]
    specs = {f"scale_{scale_name(s)}": Row("single", (s,), flip) for s in every}
    specs.update({"avg": Row("avg", every, flip), "max": Row("max", every, flip)})
    specs.update({"avg_" + chain_name(chain): Row("avg", chain, flip) for chain in chains if chain != every})
    specs.update(tta_rows(hms_scales, flip))
    specs.update({"hms_" + chain_name(chain): Row("hms", chain, flip) for chain in chains})
    if explicit_scales is not None:
        specs["explicit_" + chain_name(explicit_scales)] = Row("explicit", tuple(explicit_scales), flip)
    return specs


def tta_rows(hms_scales: Sequence[Sequence[float]], flip: bool = False, prefix: str = "") -> dict[str, Row]:
    """The scale-1.0 network run at every scale of the headline chain (TTA), without and with flip
    (only with flip when ``flip``)."""
    chain = headline_chain(hms_scales)
    specs = {f"{prefix}tta_{chain_name(chain)}": Row("tta", chain, flip)}
    if not flip:
        specs[f"{prefix}tta_flip_{chain_name(chain)}"] = Row("tta", chain, True)
    return specs


def control_specs(hms_scales: Sequence[Sequence[float]], flip: bool = False) -> dict[str, Row]:
    """Rows of the equal-budget control (one scale-1.0 network trained on as many images as the
    whole HMS pipeline): alone, and at the headline chain's scales without and with flip."""
    return {CONTROL + "1.0": Row("single", (1.0,), flip),
            **tta_rows(hms_scales, flip, prefix=CONTROL)}


CONTROL = "control_"


def row_names(scales: Sequence[float], hms_scales: Sequence[Sequence[float]]) -> list[str]:
    """Names of the rows of :func:`row_specs` without the explicit baseline; the last is the HMS
    row of the last chain of ``evaluate.hms_scales``."""
    return list(row_specs(scales, hms_scales))


def _pass_key(model: HMS, row: Row) -> tuple[float | None, bool]:
    """Which multi-scale pass a row reads: ``(source scale or None for each scale's own branch, flip)``."""
    # In shared mode every scale already runs the one model: TTA reads the HMS pass.
    source = 1.0 if row.kind == "tta" and model.mode != "shared" else None
    return source, row.flip


def branches_match(model: HMS, explicit: HMS | None) -> bool:
    """True when ``explicit`` runs each of its scales with the same weights as ``model``: its
    rows can then be fused from ``model``'s pass instead of running every scale again."""
    if explicit is None or (model.mode != "shared" and not set(explicit.scales) <= set(model.scales)):
        return False
    for s in explicit.scales:
        ours, theirs = model.branch(s).state_dict(), explicit.branch(s).state_dict()
        if ours.keys() != theirs.keys() or not all(torch.equal(ours[k], theirs[k]) for k in ours):
            return False
    return True


@torch.no_grad()
def predict_rows(model: HMS, image: torch.Tensor, rows: dict[str, Row], explicit: HMS | None = None,
                 reuse_explicit: bool = False) -> tuple[dict[str, torch.Tensor], dict[float, ScaleOutput]]:
    """Scores of every row for a batch ``image`` [B, 3, H, W], each [B, C, H, W]
    (logits, or probabilities for TTA rows: both give the prediction by argmax).

    Each scale runs once per multi-scale pass (:func:`multiscale_forward`); the
    single, pooling and HMS rows share a pass. Also returns that pass's outputs,
    ``{s: (p_s, a_s)}``, for the attention maps.

    * single: ``up(p_s)``; avg / max: ``mean_s`` / ``max_s`` of ``p_s`` resized to scale 1.0;
    * tta: ``mean_s softmax(up(p'_s))``, ``p'_s`` the scale-1.0 model run at scale ``s``;
    * hms: :func:`hierarchical_fusion` of the chain; explicit: the explicit model, fused
      from the HMS pass when ``reuse_explicit`` (:func:`branches_match`; rows without flip,
      as a flipped explicit row averages fused outputs, not per-scale ones).
    """
    size = tuple(image.shape[-2:])
    needed: dict[tuple[float | None, bool], set[float]] = defaultdict(set)
    own = (None, False)  # each scale's own branch, no flip
    fused_from_pass = reuse_explicit and any(r.kind == "explicit" and not r.flip for r in rows.values())
    for row in rows.values():
        if row.kind != "explicit":
            needed[_pass_key(model, row)].update(row.scales)
    if fused_from_pass:
        needed[own].update(explicit.scales)
    passes = {key: multiscale_forward(model, image, sorted(sc), source_scale=key[0], flip=key[1],
                                      attention=key[0] is None, features=fused_from_pass and key == own)
              for key, sc in needed.items()}
    scores = {}
    for name, row in rows.items():
        if row.kind == "explicit":
            scores[name] = (explicit.fuse(passes[own], size)[0] if fused_from_pass and not row.flip
                            else _explicit_scores(explicit, image, row.flip))
            continue
        out = passes[_pass_key(model, row)]
        if row.kind == "single":
            scores[name] = resize(out[row.scales[0]].logits, size)
        elif row.kind in ("avg", "max"):
            at_one = torch.stack([resize(out[s].logits, scaled_size(size, 1.0)) for s in row.scales])
            scores[name] = resize(at_one.mean(0) if row.kind == "avg" else at_one.amax(0), size)
        elif row.kind == "tta":
            scores[name] = torch.stack([resize(out[s].logits, size).softmax(1) for s in row.scales]).mean(0)
        else:
            scores[name] = resize(hierarchical_fusion({s: out[s] for s in row.scales}), size)
    hms_pass = next((passes[_pass_key(model, r)] for r in rows.values() if r.kind == "hms"),
                    passes.get(own, {}))
    return scores, hms_pass


def _explicit_scores(explicit: HMS | None, image: torch.Tensor, flip: bool) -> torch.Tensor:
    if explicit is None:
        raise ValueError("an explicit row needs the explicit-attention model")
    logits = explicit(image).float()
    return (logits + explicit(image.flip(-1)).float().flip(-1)) / 2 if flip else logits


def attention_maps(outputs: dict[float, ScaleOutput], size: tuple[int, int]) -> dict[float, torch.Tensor]:
    """``{s: a_s}`` resized to ``size`` for every scale of ``outputs`` that has an attention map."""
    return {s: resize(o.attention, size) for s, o in outputs.items() if o.attention is not None}


def window_starts(length: int, window: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels covering ``length`` with at least 1/3
    overlap: ``0, d, 2d, ..., length - window`` with ``d = floor(2 * window / 3)``."""
    if length <= window:
        return [0]
    step = max(1, 2 * window // 3)
    return [*range(0, length - window, step), length - window]


@torch.no_grad()
def predict_windows(model: HMS, image: torch.Tensor, rows: dict[str, Row], explicit: HMS | None = None,
                    reuse_explicit: bool = False, window: int = 0
                    ) -> tuple[dict[str, torch.Tensor], dict[float, torch.Tensor]]:
    """Scores of every row and the attention maps ``{s: a_s}``, all at ``image``'s size.

    ``window > 0``: :func:`predict_rows` on each ``window x window`` crop (scale-1.0
    pixels; every scale sees the crop resized by ``s``), scores and maps averaged over
    the windows covering each pixel: ``x(i) = sum_w x_w(i) / #{w : i in w}``. Memory
    then grows with the window, not the image.
    """
    size = tuple(image.shape[-2:])
    if window <= 0 or max(size) <= window:
        scores, outputs = predict_rows(model, image, rows, explicit, reuse_explicit)
        return scores, attention_maps(outputs, size)
    score_sums: dict[str, torch.Tensor] = {}
    map_sums: dict[float, torch.Tensor] = {}
    count = torch.zeros(size, device=image.device)

    def add(sums: dict, key: Any, value: torch.Tensor, y: int, x: int) -> None:
        if key not in sums:
            sums[key] = value.new_zeros((*value.shape[:2], *size))
        sums[key][..., y:y + value.shape[-2], x:x + value.shape[-1]] += value

    for y in window_starts(size[0], window):
        for x in window_starts(size[1], window):
            crop = image[..., y:y + window, x:x + window]
            scores, outputs = predict_rows(model, crop, rows, explicit, reuse_explicit)
            for name, score in scores.items():
                add(score_sums, name, score, y, x)
            for s, a in attention_maps(outputs, tuple(crop.shape[-2:])).items():
                add(map_sums, s, a, y, x)
            count[y:y + crop.shape[-2], x:x + crop.shape[-1]] += 1
    return ({n: v / count for n, v in score_sums.items()}, {s: v / count for s, v in map_sums.items()})


@dataclass
class Evaluation:
    """What one pass over the val split measures.

    ``confusion``: one matrix per row (rows: truth, columns: prediction).
    ``attention_sums[s][c]``: the sum of ``a_s`` over the val pixels of true class
    ``c``, for each scale ``s`` with attention in the longest HMS chain
    (divided by the class's pixel count in :func:`attention_means`).
    """

    confusion: dict[str, np.ndarray]
    attention_sums: dict[float, np.ndarray]


def evaluate(model: HMS, loader: torch.utils.data.DataLoader, rows: dict[str, Row], num_classes: int,
             speed: Speed, explicit: HMS | None = None,
             on_prediction: Callable[[str, int, np.ndarray], None] | None = None, window: int = 0) -> Evaluation:
    """One confusion matrix per row over the whole loader, accumulated on the device.

    Runs under ``speed``'s autocast and memory layout (``runtime.amp``,
    ``channels_last``; both act on CUDA only). ``on_prediction(row, image_index,
    class_ids)`` sees every prediction (e.g. to write it for the official
    evaluator); the loader must not shuffle. ``window``: see :func:`predict_windows`.
    """
    speed.prepare_model(model.eval())
    if explicit is not None:
        speed.prepare_model(explicit.eval())
    reuse = branches_match(model, explicit)
    device = speed.device
    cms = {n: torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device) for n in rows}
    sums: dict[float, torch.Tensor] = {}
    seen = 0
    for image, label in tqdm(loader, desc="evaluate", unit="batch"):
        image, label = speed.to_device(image), label.to(device, non_blocking=True)
        with speed.autocast():
            scores, maps = predict_windows(model, image, rows, explicit, reuse, window)
        keep = label != IGNORE
        for name, score in scores.items():
            pred = score.argmax(1)
            cms[name] += confusion_counts(pred, label, num_classes)
            if on_prediction is not None:
                for i, p in enumerate(pred.cpu().numpy()):
                    on_prediction(name, seen + i, p)
        for s, a in maps.items():
            per_class = torch.bincount(label[keep], weights=a[:, 0][keep].double(), minlength=num_classes)
            sums[s] = sums.get(s, 0) + per_class
        seen += len(image)
    return Evaluation({n: cm.view(num_classes, num_classes).cpu().numpy() for n, cm in cms.items()},
                      {s: v.cpu().numpy() for s, v in sums.items()})


def attention_means(evaluation: Evaluation, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{"a_<s>": {class: mean a_s over the val pixels of that class}}`` (NaN for absent classes):
    how much the chain trusts scale ``s`` over the next higher one, per class."""
    pixels = next(iter(evaluation.confusion.values())).sum(1)  # every row sees the same ground truth
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {s: np.where(pixels > 0, sums / pixels, np.nan) for s, sums in evaluation.attention_sums.items()}
    return {f"a_{scale_name(s)}": {c: float(v) for c, v in zip(class_names, means[s])} for s in sorted(means)}


# TTA rows run the HMS model's own scale-1.0 branch: fine-tuned when finetune.train_all (or in
# shared mode, where it is the one network), the scale-1.0 expert as trained otherwise.
_BRANCH = "HMS model's scale-1.0 branch"
# Labels of the rows named prefix + scales ("0.5-1.0", shown "0.5, 1.0"); tta_flip_ comes before tta_.
_CHAIN_LABELS = {"hms_": "HMS {}", "explicit_": "explicit attention {}", "tta_flip_": _BRANCH + " at {} + flip (TTA)",
                 "tta_": _BRANCH + " at {} (TTA)", "avg_": "average pooling {}"}


def method_label(name: str) -> str:
    if name.startswith("scale_"):
        return f"scale {name[6:]}"
    if name.startswith(CONTROL):
        rest = name[len(CONTROL):]
        return "equal-budget scale-1.0 network" + ("" if rest == "1.0" else method_label(rest)[len(_BRANCH):])
    for prefix, label in _CHAIN_LABELS.items():
        if name.startswith(prefix):
            return label.format(name[len(prefix):].replace("-", ", "))
    return {"avg": "average pooling", "max": "max pooling"}[name]


def confusion_report(cms: dict[str, np.ndarray], class_names: Sequence[str]) -> dict[str, Any]:
    """Per row the confusion matrix (pixels; rows: truth, columns: prediction) and the same
    normalised by row, in %: ``percent[i][j]`` = share of class ``i``'s pixels predicted as ``j``."""
    out: dict[str, Any] = {"classes": list(class_names), "rows": {}}
    for name, cm in cms.items():
        total = cm.sum(1, keepdims=True)
        percent = np.divide(100 * cm, total, out=np.zeros(cm.shape, dtype=float), where=total > 0)
        out["rows"][name] = {"pixels": cm.tolist(), "percent": np.round(percent, 2).tolist()}
    return out


def results(cms: dict[str, np.ndarray], class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Metrics per row: mIoU, pixel accuracy, mean class accuracy, IoU per class."""
    out = {}
    for name, cm in cms.items():
        s = scores(cm)
        out[name] = {"mIoU": s["mIoU"], "pixel_acc": s["pixel_acc"], "mean_class_acc": s["mean_class_acc"],
                     "iou": dict(zip(class_names, s["iou"]))}
    return out


def experts_used(row: Row, mode: str, experts: Sequence[float] = ()) -> int:
    """How many separately trained experts a row's prediction runs through: in experts mode a scale
    without its own expert (0.25) runs its nearest one (:func:`nearest_expert`), which counts once."""
    if mode == "shared" or row.kind in ("single", "tta"):
        return 1
    return len({nearest_expert(experts, s) if experts else s for s in row.scales})


def row_budget(row: Row, hms_meta: dict[str, Any], explicit_meta: dict[str, Any] | None = None
               ) -> tuple[int | None, int]:
    """``(train_images, finetune_images)``: the training crops behind a row's weights.

    ``train_images = experts_used * images per expert``; ``finetune_images`` counts the
    crops drawn by the fine-tuning whose weights the row uses: HMS rows (one crop per
    pair per step), the explicit row (its own stage), and the other rows only when
    ``finetune.train_all`` changed the branches they run. ``None`` when a model
    predates these counts.
    """
    per_expert = hms_meta.get("images")
    train = None if per_expert is None else experts_used(row, hms_meta["mode"], hms_meta.get("scales", ())) * per_expert
    if row.kind == "explicit":
        return train, int((explicit_meta or {}).get("finetune_images", 0))
    tuned = row.kind == "hms" or hms_meta.get("train_all", False)
    return train, int(hms_meta.get("finetune_images", 0)) if tuned else 0


def table_rows(res: dict[str, dict[str, Any]], rows: dict[str, Row], hms_meta: dict[str, Any],
               explicit_meta: dict[str, Any] | None = None, costs: dict[str, dict[str, float]] | None = None
               ) -> list[dict[str, Any]]:
    """Rows laid out like seed 000's Table 2: trunk, head, scale or method, the training images
    behind the row (:func:`row_budget`), mIoU, accuracy (then the costs, when measured, and the
    IoU of each class)."""
    out = []
    for name, r in res.items():
        cost = (costs or {}).get(name)
        train, finetune = row_budget(rows[name], hms_meta, explicit_meta)
        out.append({
            "trunk": hms_meta["trunk"], "head": hms_meta["head"], "method": method_label(name), "row": name,
            "expert epochs": round(hms_meta["epochs"], 2) if "epochs" in hms_meta else None,
            "train images": train, "finetune images": finetune,
            "mIoU": round(100 * r["mIoU"], 2), "accuracy": round(100 * r["pixel_acc"], 2),
            "mean_class_acc": round(100 * r["mean_class_acc"], 2),
            **({} if cost is None else {"params (M)": round(cost["params"] / 1e6, 2),
                                        "ms/image": round(cost["ms_per_image"], 1),
                                        "peak MB": round(cost["peak_mem_mb"], 1)}),
            **{f"IoU {c}": round(100 * v, 2) for c, v in r["iou"].items()},
        })
    return out


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str], mark_best: Sequence[str] = ()) -> str:
    """A markdown table; in each column of ``mark_best`` the highest value is bold."""
    best = {c: max((r[c] for r in rows if not _missing(r[c])), default=None) for c in mark_best}

    def cell(r: dict[str, Any], c: str) -> str:
        v = r[c]
        if _missing(v):
            return "-"
        return f"**{v}**" if c in best and v == best[c] else str(v)

    return "\n".join(table_lines(columns, ([cell(r, c) for c in columns] for r in rows))) + "\n"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))
