"""Time of one expert training step (forward, loss, backward, AdamW) with and without the
dilated convolutions' live-tap path (:mod:`hms_core.models.dilated`) and the fused AdamW.

    python bench/step_time.py [--trunk mobilenet_v3_large] [--crops 64 128 256] [--batch 8] [--device auto]

Prints the median seconds per step of each variant at each crop and the speed-up over the plain
one (every tap computed, AdamW one call per tensor op). Inputs are random tensors on the device,
so data loading is not measured.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from hms_core.evaluate.costs import time_call
from hms_core.models.dilated import LiveTapConv2d
from hms_core.models.segmodel import SegModel
from hms_core.train.engine import resolve_device

VARIANTS = {"plain": (False, False), "live taps": (True, False), "fused AdamW": (False, True),
            "both (the pipeline's)": (True, True)}


def step_time(trunk: str, crop: int, batch: int, live_taps: bool, fused: bool, device: torch.device,
              repeats: int) -> float:
    torch.manual_seed(0)
    model = SegModel(trunk, "deeplabv3plus", 7, 16, 64).to(device).train()
    if not live_taps:
        for module in model.modules():
            if type(module) is LiveTapConv2d:
                module.__class__ = nn.Conv2d
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    image = torch.randn(batch, 3, crop, crop, device=device)
    target = torch.randint(0, 7, (batch, crop, crop), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(image), target).backward()
        optimizer.step()

    return time_call(step, device, repeats=repeats, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunk", default="mobilenet_v3_large")
    parser.add_argument("--crops", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"expert training step: {args.trunk} + DeepLabV3+ (64 ch), batch {args.batch}, {name}, "
          f"median of {args.repeats}")
    print("| crop | " + " | ".join(f"{v} (s)" for v in VARIANTS) + " | plain / both |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for crop in args.crops:
        times = [step_time(args.trunk, crop, args.batch, *flags, device, args.repeats) for flags in VARIANTS.values()]
        print(f"| {crop} | " + " | ".join(f"{t:.4f}" for t in times) + f" | {times[0] / times[-1]:.2f} |")


if __name__ == "__main__":
    main()
