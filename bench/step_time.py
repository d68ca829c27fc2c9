"""Time of one expert training step (forward, loss, backward, AdamW) with and without the
dilated convolutions' live-tap path (:mod:`hms_core.models.dilated`) and the fused AdamW.

    python bench/step_time.py [--trunk mobilenet_v3_large] [--crops 64 128 256] [--batch 8] [--device auto]

Prints the median seconds per step of each variant at each crop (the variants timed in turns, one
step each per round) and the speed-up over the plain one (every tap computed, AdamW one call per
tensor op). Inputs are random tensors on the device, so data loading is not measured.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

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


def step_fn(trunk: str, crop: int, batch: int, live_taps: bool, fused: bool, device: torch.device
            ) -> Callable[[], None]:
    """One training step of a fresh model, with or without the live-tap path and the fused AdamW."""
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

    return step


def interleaved_medians(steps: list[Callable[[], None]], device: torch.device, repeats: int) -> list[float]:
    """Median seconds of each step, timed in turns (one of each per round), so that a drift in the
    machine's speed weighs on every variant alike."""
    times: list[list[float]] = [[] for _ in steps]
    for round_ in range(repeats + 2):   # the first two rounds warm up
        for step, ts in zip(steps, times):
            seconds = time_call(step, device, repeats=1, warmup=0)
            if round_ >= 2:
                ts.append(seconds)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunk", default="mobilenet_v3_large")
    parser.add_argument("--crops", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"expert training step: {args.trunk} + DeepLabV3+ (64 ch), batch {args.batch}, {name}, "
          f"median of {args.repeats} steps, the variants in turns\n")
    print("| crop | " + " | ".join(f"{v} (s)" for v in VARIANTS) + " | plain / both |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for crop in args.crops:
        steps = [step_fn(args.trunk, crop, args.batch, *flags, device) for flags in VARIANTS.values()]
        times = interleaved_medians(steps, device, args.repeats)
        print(f"| {crop} | " + " | ".join(f"{t:.4f}" for t in times) + f" | {times[0] / times[-1]:.2f} |")


if __name__ == "__main__":
    main()
