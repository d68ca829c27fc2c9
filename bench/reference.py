"""The reference a user would pick instead: torchvision's ``deeplabv3_mobilenet_v3_large`` from
scratch, trained in a plain loop with the same crops and optimiser as one expert, scored by our
evaluator on the val split.

    python bench/reference.py [--params params.yaml] [--prepared data/prepared] [--seconds S | --steps N]
                              [--lr LR] [--json FILE]

Plain cross-entropy (ignore 255), AdamW with the train params' learning rate and
weight decay, constant learning rate (the run may stop on time, so no schedule
knows its length), the scale-1.0 training crops of ``train`` params (crop, jitter,
flip, batch). With ``--seconds`` it trains for that wall time (e.g. the time one
expert took: the ``train: done in ... s`` line of ``dvc repro``); otherwise for
``--steps`` (default ``train.steps``). Prints steps, wall time and the val scores at
full resolution, the same confusion-matrix metrics as ``metrics/eval.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

from hms_core.config import load_params
from hms_core.data.dataset import IGNORE, EvalSet, StreamSampler, TrainSet, read_index, training_inputs
from hms_core.data.labels import build_grouping
from hms_core.evaluate.metrics import confusion_counts
from hms_core.evaluate.rows import results
from hms_core.io import write_json
from hms_core.train.engine import resolve_device, seed_everything


def train(model: torch.nn.Module, dataset: TrainSet, cfg: dict, device: torch.device, steps: int,
          seconds: float | None) -> tuple[int, float]:
    """Plain loop: ``CE(model(x)["out"], y)``; stops after ``steps`` or ``seconds``. Returns (steps, wall s)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sampler = StreamSampler(len(dataset), dataset.seed, 0, steps * cfg["batch_size"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg["batch_size"], sampler=sampler)
    model.train().to(device)
    start, done = time.perf_counter(), 0
    for image, label in loader:
        image, label = training_inputs(image.to(device), label.to(device))  # uint8 crops -> normalised
        loss = F.cross_entropy(model(image)["out"], label, ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
        if done % 50 == 0:
            print(f"reference: step {done}, loss {loss.item():.4f}, {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
        if seconds is not None and time.perf_counter() - start >= seconds:
            break
    return done, time.perf_counter() - start


@torch.no_grad()
def score(model: torch.nn.Module, prepared: str, num_classes: int, device: torch.device) -> np.ndarray:
    """Confusion matrix of the val split at full label resolution."""
    model.eval()
    cm = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for image, label in EvalSet(read_index(prepared, "val")):
        pred = model(image[None].to(device))["out"].argmax(1)
        cm += confusion_counts(pred, label[None].to(device), num_classes)
    return cm.view(num_classes, num_classes).cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--seconds", type=float, default=None, help="train for this wall time")
    parser.add_argument("--steps", type=int, default=None, help="train for this many steps (default train.steps)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default train.lr)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the scores here")
    args = parser.parse_args()
    params = load_params(args.params)
    cfg = {**params["train"], **({"lr": args.lr} if args.lr else {})}
    seed_everything(params["seed"])
    grouping = build_grouping(params["data"]["grouping"])
    device = resolve_device(args.device)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=grouping.num_classes,
                                         aux_loss=False)
    dataset = TrainSet(read_index(args.prepared, "train"), 1.0, cfg["crop"], cfg["scale_jitter"], cfg["hflip"],
                       params["seed"])
    # With a time limit the step count is only an upper bound.
    steps = args.steps or (10**9 if args.seconds else cfg["steps"])
    done, wall = train(model, dataset, cfg, device, steps, args.seconds)
    res = results({"reference": score(model, args.prepared, grouping.num_classes, device)},
                  grouping.class_names)["reference"]
    summary = {"model": "torchvision deeplabv3_mobilenet_v3_large, from scratch, plain CE, AdamW",
               "steps": done, "batch_size": cfg["batch_size"], "crop": cfg["crop"], "lr": cfg["lr"],
               "wall_s": round(wall, 1), "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
               **res}
    print(f"reference: {done} steps in {wall:.0f} s; val mIoU {100 * res['mIoU']:.2f}, "
          f"accuracy {100 * res['pixel_acc']:.2f}; IoU " +
          ", ".join(f"{c} {100 * v:.1f}" for c, v in res["iou"].items()))
    if args.json:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
