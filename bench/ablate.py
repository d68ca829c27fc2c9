"""Ablations of one expert: train the scale-``s`` expert with a few params changed and score it alone.

    python bench/ablate.py [--params params.yaml] [--scale 1.0] [--prepared data/prepared]
                           --variant NAME KEY=VALUE [KEY=VALUE ...] [--variant ...] [--json FILE]

Each variant is the params file with its ``KEY=VALUE`` changes (dotted keys, YAML
values: ``train.class_balance=0``, ``model.head_channels=128``); a variant with no
change is the baseline. Every variant trains through the pipeline's own
``train_expert`` (same loop, crops, schedule) in a temporary folder, then its
single-scale prediction at ``--scale`` is scored on the val split at full
resolution with the pipeline's confusion matrix. Prints one row per variant:
wall time, mIoU, accuracy and the IoU of each class.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml

from hms_core.config import validate
from hms_core.data.dataset import EvalSet, read_index
from hms_core.data.labels import build_grouping
from hms_core.data.resize import resize, resize_image, scaled_size
from hms_core.evaluate.metrics import confusion_counts
from hms_core.evaluate.rows import markdown_table, results
from hms_core.io import load_checkpoint, read_yaml, write_json
from hms_core.models.segmodel import build_seg_model
from hms_core.tools.preset import merged
from hms_core.train.jobs import train_expert


def variant_params(params: dict, changes: list[str]) -> dict:
    """``params`` with ``KEY=VALUE`` changes applied (values parsed as YAML), validated."""
    preset: dict = {}
    for change in changes:
        key, sep, value = change.partition("=")
        if not sep:
            raise SystemExit(f"ablate: error: {change!r}: expected KEY=VALUE")
        preset[key] = yaml.safe_load(value)  # merged() takes dotted keys as they are
    return validate(merged(params, preset))


@torch.no_grad()
def score_expert(path: Path, prepared: str, scale: float, num_classes: int) -> torch.Tensor:
    """Confusion matrix of the expert saved at ``path`` run at ``scale`` on the val split."""
    ckpt = load_checkpoint(path)
    model = build_seg_model(ckpt["meta"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    cm = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    for image, label in EvalSet(read_index(prepared, "val")):
        size = tuple(label.shape)
        logits = model(resize_image(image[None], scaled_size(size, scale)))
        cm += confusion_counts(resize(logits, size).argmax(1), label[None], num_classes)
    return cm.view(num_classes, num_classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    base = read_yaml(args.params)
    grouping = build_grouping(base["data"]["grouping"])
    rows, report = [], {}
    for name, *changes in args.variant:
        params = variant_params(base, changes)
        with tempfile.TemporaryDirectory(prefix="hms-ablate-") as tmp:
            start = time.perf_counter()
            train_expert(params, args.scale, args.prepared, Path(tmp) / "model.pt", Path(tmp) / "ckpt.pt")
            wall = time.perf_counter() - start
            cm = score_expert(Path(tmp) / "model.pt", args.prepared, args.scale, grouping.num_classes)
        res = results({name: cm.numpy()}, grouping.class_names)[name]
        report[name] = {"changes": changes, "train_s": round(wall, 1), **res}
        rows.append({"variant": name, "changes": " ".join(changes) or "-", "train s": round(wall),
                     "mIoU": round(100 * res["mIoU"], 2), "accuracy": round(100 * res["pixel_acc"], 2),
                     **{f"IoU {c}": round(100 * v, 1) for c, v in res["iou"].items()}})
        print(f"ablate: {name}: mIoU {100 * res['mIoU']:.2f} in {wall:.0f} s", file=sys.stderr)
        if args.json:  # after every variant: a long sweep stopped half way keeps what it measured
            write_json(args.json, report)
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
