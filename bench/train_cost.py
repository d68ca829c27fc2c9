"""Training cost of HMS pair training against explicit three-scale training.

The paper's claim (Tao et al. 2020, Sec. 3): an HMS training pair sees
0.5^2 + 1^2 = 1.25 image areas per crop, explicit attention over 0.5, 1, 2
sees 0.25 + 1 + 4 = 5.25, about 4x the memory and compute. This measures
both, end to end (every weight trained), at the same crop and batch.

    python bench/train_cost.py [--trunk resnet50] [--crop 256] [--batch 2] [--device auto]

Prints time per step and peak memory of each, and their ratios.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from hms_core.evaluate.costs import peak_memory, time_call
from hms_core.models.explicit import ExplicitAttention, explicit_loss
from hms_core.models.hms import HMS, hms_pair_loss
from hms_core.train.engine import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunk", default="mobilenet_v3_large")
    parser.add_argument("--head-channels", type=int, default=64)
    parser.add_argument("--crop", type=int, default=128, help="crop side at scale 1.0")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    meta = {"trunk": args.trunk, "head": "deeplabv3plus", "num_classes": 7, "output_stride": 16,
            "head_channels": args.head_channels, "atrous_rates": [6, 12, 18],
            "attention_channels": args.head_channels, "grouping": "category",
            "mode": "experts", "scales": [0.5, 1.0, 2.0]}
    image = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
    target = torch.randint(0, 7, (args.batch, args.crop, args.crop), device=device)

    hms = HMS(meta).to(device).train()
    hms_opt = torch.optim.SGD(hms.parameters(), lr=1e-3)

    def pair_step() -> None:
        joint, p_lo, p_hi, _ = hms.pair_forward(image, 0.5, 1.0)
        hms_opt.zero_grad(set_to_none=True)
        hms_pair_loss(joint, p_lo, p_hi, target, 0.05).backward()
        hms_opt.step()

    explicit = ExplicitAttention(meta).to(device).train()
    explicit_opt = torch.optim.SGD(explicit.parameters(), lr=1e-3)

    def explicit_step() -> None:
        fused, logits, _ = explicit.explicit_forward(image)
        explicit_opt.zero_grad(set_to_none=True)
        explicit_loss(fused, logits, target, 0.05).backward()
        explicit_opt.step()

    rows = {}
    for name, step, areas in (("HMS pair (0.5, 1.0)", pair_step, 0.25 + 1),
                              ("explicit (0.5, 1.0, 2.0)", explicit_step, 0.25 + 1 + 4)):
        seconds = time_call(step, device, repeats=args.repeats)
        rows[name] = (areas, seconds, peak_memory(step, device) / 2**20)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"training cost: {args.trunk} + DeepLabV3+ ({args.head_channels} ch), crop {args.crop}, "
          f"batch {args.batch}, {device_name}")
    print("| method | image areas / crop | s / step | peak memory (MB) |")
    print("|---|---|---|---|")
    for name, (areas, seconds, mb) in rows.items():
        print(f"| {name} | {areas:.2f} | {seconds:.3f} | {mb:.0f} |")
    (pa, ps, pm), (ea, es, em) = rows.values()
    print(f"| explicit / pair | {ea / pa:.2f} | {es / ps:.2f} | {em / pm:.2f} |")


if __name__ == "__main__":
    main()
