"""Training and evaluation speed on one device: images/s, peak GPU memory and model FLOP
utilisation (MFU), side by side in one table.

    python bench/speed.py                        # GPU, Cityscapes sizes (1024 crops, 1024x2048 eval)
    python bench/speed.py --out bench/speed.md   # also write the table as markdown
    python bench/speed.py --cpu-small            # tiny sizes on the CPU (MFU n/a): exercises the code

Rows (19 classes, ResNet-50 trunk, DeepLabV3+ head of 256 channels):

* expert: per-scale training step (``stages/train.py``) on 1024x1024 crops;
* HMS pair (0.5, 1.0): two-scale training step on 1024x1024 crops, attention only
  (``stages/finetune.py``'s default) and all weights (``finetune.train_all``);
* torchvision deeplabv3_resnet50: the reference, a plain fp32 eager loop;
* HMS eval 3 scales (0.5, 1.0, 2.0): inference on 1024x2048 images, with the
  projected time for the 500 Cityscapes val images.

The project's rows run its own step (loss modules of ``hms_core.train.losses``, the
``runtime`` speed settings of ``hms_core.runtime.speed``: ``--amp``, ``--no-channels-last``,
``--compile``); training rows use the largest batch of 8, 4, 2 that fits. Inputs
are random tensors already on the device, so data loading is not measured.

``MFU = F * r / P``: ``F`` the FLOPs of one image's step (forward, and backward
for training) counted by ``torch.utils.flop_counter.FlopCounterMode`` (a
multiply-add is 2 FLOPs), ``r`` images/s, ``P`` the GPU's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from torchvision.models.segmentation import deeplabv3_resnet50  # noqa: E402

from hms_core.models.hms import HMS  # noqa: E402
from hms_core.models.segmodel import build_seg_model  # noqa: E402
from hms_core.runtime.speed import AMP_MODES, Speed, configure_backends  # noqa: E402
from hms_core.train.engine import optimizer_step  # noqa: E402
from hms_core.train.losses import ExpertLoss, PairLoss  # noqa: E402

NUM_CLASSES = 19
VAL_IMAGES = 500
# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, by a substring of the device name;
# the first match wins, so the specific names come first.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))

Step = Callable[[], None]


@dataclass
class Workload:
    """A row: ``build(batch)`` returns ``(step, eager_step)``, one step each (the eager one for counting)."""

    name: str
    size: tuple[int, int]
    batches: tuple[int, ...]
    build: Callable[[int], tuple[Step, Step]]
    evaluation: bool = False


@dataclass
class Row:
    name: str
    batch: int | None
    size: tuple[int, int]
    images_per_s: float | None = None
    peak_gib: float | None = None
    gflop_per_image: float | None = None
    mfu: float | None = None
    evaluation: bool = False
    note: str = ""


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """The dense bf16 peak of the GPU (``--peak-tflops`` wins); ``None`` on the CPU or when unknown."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def seg_meta(output_stride: int) -> dict:
    rates = [6, 12, 18] if output_stride == 16 else [12, 24, 36]
    return {"trunk": "resnet50", "head": "deeplabv3plus", "num_classes": NUM_CLASSES,
            "output_stride": output_stride, "head_channels": 256, "atrous_rates": rates,
            "attention_channels": 256, "grouping": "trainid"}


def _batch(batch: int, size: tuple[int, int], speed: Speed) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, *size, generator=g)
    label = torch.randint(0, NUM_CLASSES, (batch, *size), generator=g)
    return speed.to_device(image), speed.to_device(label)


def _train_steps(loss_module: torch.nn.Module, inputs: tuple, speed: Speed) -> tuple[Step, Step]:
    """One optimiser step as ``engine.fit`` runs it (autocast, loss scaling, ``loss.item()``)."""
    params = [p for p in loss_module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    scaler = speed.grad_scaler()

    def make(module: torch.nn.Module) -> Step:
        def step() -> None:
            with speed.autocast():
                out = module(*inputs)
                loss = sum(out) if isinstance(out, list) else out
            optimizer_step(loss, optimizer, scaler)
            loss.item()
        return step

    return make(speed.maybe_compile(loss_module)), make(loss_module)


def expert_workload(speed: Speed, crop: int, batches: tuple[int, ...], output_stride: int) -> Workload:
    def build(batch: int) -> tuple[Step, Step]:
        model = speed.prepare_model(build_seg_model(seg_meta(output_stride)))
        model.train()
        return _train_steps(ExpertLoss(model, None), _batch(batch, (crop, crop), speed), speed)
    return Workload(f"expert, train (crop {crop})", (crop, crop), batches, build)


def hms_pair_workload(speed: Speed, crop: int, batches: tuple[int, ...], output_stride: int,
                      train_all: bool) -> Workload:
    def build(batch: int) -> tuple[Step, Step]:
        model = HMS({**seg_meta(output_stride), "mode": "experts", "scales": [0.5, 1.0]})
        model.freeze_branches(not train_all)
        speed.prepare_model(model)
        model.train()
        loss = PairLoss(model, [(0.5, 1.0)], 0.05, None)
        return _train_steps(loss, ([_batch(batch, (crop, crop), speed)],), speed)
    what = "all weights" if train_all else "attention only"
    return Workload(f"HMS pair (0.5, 1.0), train {what} (crop {crop})", (crop, crop), batches, build)


def torchvision_workload(device: torch.device, crop: int, batches: tuple[int, ...]) -> Workload:
    plain = Speed(device)  # fp32, default layout, eager

    def build(batch: int) -> tuple[Step, Step]:
        model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).to(device)
        model.train()
        image, label = _batch(batch, (crop, crop), plain)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step() -> None:
            loss = F.cross_entropy(model(image)["out"], label, ignore_index=255)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
        return step, step
    return Workload(f"torchvision deeplabv3_resnet50 (output stride 8), fp32 eager (crop {crop})", (crop, crop), batches, build)


def hms_eval_workload(speed: Speed, size: tuple[int, int], output_stride: int) -> Workload:
    scales = (0.5, 1.0, 2.0)

    def build(batch: int) -> tuple[Step, Step]:
        model = speed.prepare_model(HMS({**seg_meta(output_stride), "mode": "experts", "scales": list(scales)}))
        model.eval()
        image, _ = _batch(batch, size, speed)
        compiled = speed.maybe_compile(model)

        def make(module: torch.nn.Module) -> Step:
            @torch.no_grad()
            def step() -> None:
                with speed.autocast():
                    module(image, scales).argmax(1).cpu()
            return step
        return make(compiled), make(model)
    return Workload(f"HMS eval, 3 scales (0.5, 1.0, 2.0) at {size[0]}x{size[1]}", size, (1,), build,
                    evaluation=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(work: Workload, device: torch.device, warmup: int, steps: int, peak: float | None) -> Row:
    """Largest batch that fits, then ``warmup`` untimed and ``steps`` timed steps, and one counted step."""
    oom = (torch.cuda.OutOfMemoryError,) if device.type == "cuda" else ()
    for batch in work.batches:
        _free(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            step, eager_step = work.build(batch)
            step()  # the first step allocates everything: it tells whether the batch fits
        except oom:
            step = eager_step = None
            continue
        for _ in range(warmup):
            step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        elapsed = time.perf_counter() - start
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        counter = FlopCounterMode(display=False)
        with counter:
            eager_step()
        flop_per_image = counter.get_total_flops() / batch
        rate = batch * steps / elapsed
        mfu = flop_per_image * rate / (peak * 1e12) if peak else None
        del step, eager_step
        _free(device)
        return Row(work.name, batch, work.size, rate, peak_gib, flop_per_image / 1e9, mfu, work.evaluation)
    return Row(work.name, None, work.size, evaluation=work.evaluation,
               note=f"batch {work.batches[-1]} does not fit")


def markdown(rows: list[Row], header: str) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    lines = [header, "",
             "| workload | batch | images/s | peak GPU memory (GiB) | GFLOP/image | MFU | 500 images |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        val = (f"{VAL_IMAGES / r.images_per_s:.1f} s" if r.evaluation and r.images_per_s else "-")
        lines.append(f"| {r.name} | {fmt(r.batch, 'd')} | {fmt(r.images_per_s, '.2f')} | {fmt(r.peak_gib, '.1f')} "
                     f"| {fmt(r.gflop_per_image, '.1f')} | {fmt(r.mfu and 100 * r.mfu, '.1f')}"
                     f"{'' if r.mfu is None else ' %'} | {val}{' (' + r.note + ')' if r.note else ''} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-small", action="store_true", help="tiny sizes on the CPU, 2 timed steps per row")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.add_argument("--amp", choices=AMP_MODES, default="bf16", help="runtime.amp of the project's rows")
    parser.add_argument("--no-channels-last", action="store_true", help="runtime.channels_last: false")
    parser.add_argument("--compile", action="store_true", help="runtime.compile: true")
    parser.add_argument("--output-stride", type=int, choices=(8, 16), default=16)
    parser.add_argument("--steps", type=int, help="timed steps per row (default 20, 2 with --cpu-small)")
    parser.add_argument("--warmup", type=int, help="untimed steps per row (default 5, 1 with --cpu-small)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU, if not in the built-in list")
    args = parser.parse_args()

    if args.cpu_small:
        device, crop, eval_size, batches = torch.device("cpu"), 64, (64, 128), (2,)
        steps, warmup = args.steps or 2, args.warmup or 1
    else:
        if not torch.cuda.is_available():
            sys.exit("bench/speed.py: no CUDA device; run with --cpu-small on a CPU")
        device, crop, eval_size, batches = torch.device("cuda"), 1024, (1024, 2048), (8, 4, 2)
        steps, warmup = args.steps or 20, args.warmup or 5
    torch.manual_seed(0)
    speed = Speed.from_runtime({"amp": args.amp, "channels_last": not args.no_channels_last,
                                "compile": args.compile}, device)
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (f"Device: {name} (bf16 dense peak {'n/a' if peak is None else f'{peak:g} TFLOP/s'}); "
              f"torch {torch.__version__}; project rows: amp {speed.amp}, channels_last {speed.channels_last}, "
              f"compile {speed.compile}, cudnn.benchmark {device.type == 'cuda'}, output stride "
              f"{args.output_stride}; {warmup} warm-up + {steps} timed steps per row.")

    rows = []
    configure_backends(device, deterministic=False)
    for work in (expert_workload(speed, crop, batches, args.output_stride),
                 hms_pair_workload(speed, crop, batches, args.output_stride, train_all=False),
                 hms_pair_workload(speed, crop, batches, args.output_stride, train_all=True)):
        rows.append(measure(work, device, warmup, steps, peak))
        print(f"  done: {rows[-1].name}", file=sys.stderr)
    torch.backends.cudnn.benchmark = False  # the reference runs with PyTorch's defaults
    rows.append(measure(torchvision_workload(device, crop, batches), device, warmup, steps, peak))
    print(f"  done: {rows[-1].name}", file=sys.stderr)
    configure_backends(device, deterministic=False)
    rows.append(measure(hms_eval_workload(speed, eval_size, args.output_stride), device, warmup, steps, peak))

    table = markdown(rows, header)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)


if __name__ == "__main__":
    main()
