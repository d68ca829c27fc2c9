"""Training-loader throughput at Cityscapes size: samples/s per DataLoader worker, and the
workers a GPU needs.

    python bench/loader.py                                  # new and old path, 1024x2048 synthetic pairs
    python bench/loader.py --path new --gpu-images-per-s 60 # workers needed to feed 60 crops/s
    python bench/loader.py --prepared data/prepared         # the train split of a prepared dataset
    python bench/loader.py --height 64 --width 128 --crop 32 --samples 4   # a quick check

Writes ``--images`` synthetic scenes (``hms_core.data.synthetic``) in the Cityscapes layout and
prepares them (or reads ``--prepared``), then for every scale (default 0.5, 1, 2 with the
default jitter 0.75..1.25 and a 1024 crop) and every worker count (default 0, 1, 2) iterates
a DataLoader over ``--samples`` crops of the deterministic sample stream, as training does
(pinned on CUDA). Two paths:

* ``new``: :class:`hms_core.data.dataset.TrainSet`: crop in source coordinates, resize only the
  window under the crop, uint8 out (normalised on the device, not timed here).
* ``old``: :class:`OldTrainSet`, the reference of the path before (kept here only, for
  before/after): decode, normalise the whole image to float, resize the whole image, crop.

Workers run one thread each and the main process is set to one thread too, so workers=0
is one core's rate. The clock starts after each worker's first batch (process start and
first decode excluded). Prints a table and, per scale, the workers one training process
needs for ``--gpu-images-per-s`` crops/s: ``ceil(target / rate of one worker)``. With
``--deterministic`` the loader runs under ``torch.use_deterministic_algorithms`` as with
``runtime.deterministic: true`` (PyTorch then fills new tensors before use).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hms_core.data.dataset import IGNORE, StreamSampler, TrainSet, load_sample, prepare_dataset, read_index  # noqa: E402
from hms_core.data.labels import build_grouping  # noqa: E402
from hms_core.data.resize import resize_image  # noqa: E402
from hms_core.data.synthetic import generate_dataset  # noqa: E402
from hms_core.runtime.speed import deterministic_algorithms  # noqa: E402

PATHS = ("new", "old")


def old_random_scale_crop_flip(image: torch.Tensor, label: torch.Tensor, scale: float, crop: int,
                               jitter: Sequence[float], hflip: bool, g: torch.Generator
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """REFERENCE ONLY (the path before, for before/after): resize the whole normalised float
    image by ``scale * U(jitter)`` (``resize_image``) and the whole label (nearest), pad with 0
    and 255, crop, flip. The same draws from ``g`` as :func:`hms_core.data.dataset.draw_crop`."""
    f = scale * (jitter[0] + (jitter[1] - jitter[0]) * torch.rand((), generator=g).item())
    h, w = label.shape
    size = (max(1, round(h * f)), max(1, round(w * f)))
    image = resize_image(image[None], size)[0]
    label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    pad_h, pad_w = max(0, crop - size[0]), max(0, crop - size[1])
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE)
    top = int(torch.randint(0, label.shape[0] - crop + 1, (), generator=g))
    left = int(torch.randint(0, label.shape[1] - crop + 1, (), generator=g))
    image, label = image[:, top:top + crop, left:left + crop], label[top:top + crop, left:left + crop]
    if hflip and torch.rand((), generator=g).item() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image.contiguous(), label.contiguous()


class OldTrainSet(TrainSet):
    """REFERENCE ONLY: the training samples of the path before (normalised float images,
    int64 labels), with the seeding of :class:`hms_core.data.dataset.TrainSet`."""

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, key = item
        image, label = load_sample(self.index[i])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
        return old_random_scale_crop_flip(image, label, self.scale, self.crop, self.jitter, self.hflip, g)


def synthetic_index(folder: Path, images: int, height: int, width: int) -> list[dict[str, str]]:
    """``images`` synthetic ``height x width`` scenes in the Cityscapes layout, prepared."""
    generate_dataset(folder / "raw", {"train": images}, height, width, seed=0, progress=False)
    prepare_dataset(folder / "raw", folder / "prepared", build_grouping("category"), ["train"])
    return read_index(folder / "prepared", "train")


def samples_per_s(dataset: TrainSet, samples: int, workers: int, batch: int) -> float:
    """Crops/s of a DataLoader over ``samples`` crops after each worker's first batch."""
    warm = max(workers, 1) * batch
    sampler = StreamSampler(len(dataset), dataset.seed, 0, warm + samples)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                         pin_memory=torch.cuda.is_available())
    seen, start = 0, None
    for image, _ in loader:
        seen += len(image)
        if start is None and seen >= warm:
            seen, start = 0, time.perf_counter()
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=PATHS + ("both",), default="both")
    parser.add_argument("--prepared", type=Path, help="a prepared dataset (default: synthetic scenes)")
    parser.add_argument("--images", type=int, default=4, help="synthetic pairs to write")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--jitter", type=float, nargs=2, default=[0.75, 1.25])
    parser.add_argument("--crop", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=24, help="timed crops per measurement")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--gpu-images-per-s", type=float, default=40.0,
                        help="crops/s one GPU's training step consumes (per training process)")
    parser.add_argument("--deterministic", action="store_true", help="as runtime.deterministic: true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # workers=0 is one core, like one worker
    if args.deterministic:
        deterministic_algorithms()
    paths = PATHS if args.path == "both" else (args.path,)
    with tempfile.TemporaryDirectory() as tmp:
        index = read_index(args.prepared, "train") if args.prepared else \
            synthetic_index(Path(tmp), args.images, args.height, args.width)
        rates: dict[tuple[str, float, int], float] = {}
        for path in paths:
            cls = TrainSet if path == "new" else OldTrainSet
            for scale in args.scales:
                dataset = cls(index, scale, args.crop, args.jitter, True, seed=0)
                for workers in args.workers:
                    rates[path, scale, workers] = samples_per_s(dataset, args.samples, workers, args.batch)
                    print(f"{path} scale {scale} workers {workers}: {rates[path, scale, workers]:.2f} samples/s",
                          file=sys.stderr)
    source = args.prepared or f"{len(index)} synthetic {args.height}x{args.width} pairs"
    print(f"loader: {source}, crop {args.crop}, jitter {args.jitter}, batch {args.batch}, "
          f"{torch.get_num_threads()} thread per process")
    print("| path | scale | workers | samples/s | samples/s per worker |\n|---|---|---|---|---|")
    for (path, scale, workers), rate in rates.items():
        print(f"| {path} | {scale} | {workers} | {rate:.2f} | {rate / max(workers, 1):.2f} |")
    print(f"\nworkers per training process for {args.gpu_images_per_s:g} crops/s "
          f"(from the rate of one worker: workers=1, else workers=0)")
    print("| path | scale | samples/s of one worker | workers needed |\n|---|---|---|---|")
    one = 1 if 1 in args.workers else args.workers[0]
    for path in paths:
        for scale in args.scales:
            rate = rates[path, scale, one] / max(one, 1)
            print(f"| {path} | {scale} | {rate:.2f} | {math.ceil(args.gpu_images_per_s / rate)} |")


if __name__ == "__main__":
    main()
