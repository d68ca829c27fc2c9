"""PNG decoding for the training loader: PIL (what ``hms_core.data.dataset`` uses) against
``torchvision.io.decode_png`` on the file's bytes, on a 1024x2048 image.

    python bench/png_decode.py                        # a synthetic 1024x2048 street scene
    python bench/png_decode.py --image path/to.png    # e.g. a Cityscapes leftImg8bit image

Prints the time per image (minimum and median over ``--repeats`` interleaved
runs, one thread, as in a DataLoader worker) of decoding alone and of decoding
plus the normalisation of ``hms_core.data.dataset.load_sample``, and checks that both
decoders give the same pixels.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.io import ImageReadMode, decode_png  # noqa: E402

from hms_core.data.dataset import _read_png, normalise  # noqa: E402
from hms_core.data.synthetic import render_scene  # noqa: E402


def pil_rgb(path: Path) -> torch.Tensor:
    """``[3, H, W]`` uint8, decoded by PIL as ``hms_core.data.dataset.load_sample`` does."""
    return torch.from_numpy(_read_png(path, "RGB").copy()).permute(2, 0, 1)


def torchvision_rgb(path: Path) -> torch.Tensor:
    """``[3, H, W]`` uint8, decoded by libpng through torchvision from the file's bytes."""
    return decode_png(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB)


def normalised(decode: Callable[[Path], torch.Tensor]) -> Callable[[Path], torch.Tensor]:
    return lambda path: normalise(decode(path))


def timings(fns: dict[str, Callable[[Path], torch.Tensor]], path: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds per call, the functions interleaved so that a busy machine slows all alike."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn(path)  # warm caches
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(path)
            out[name].append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, help="an RGB PNG (default: a synthetic 1024x2048 scene)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.image
        if path is None:
            image, _ = render_scene(np.random.default_rng(0), 1024, 2048)
            path = Path(tmp) / "scene.png"
            Image.fromarray(image).save(path)
        same = torch.equal(pil_rgb(path), torchvision_rgb(path))
        fns = {"PIL": pil_rgb, "torchvision.io.decode_png": torchvision_rgb,
               "PIL + normalise": normalised(pil_rgb),
               "torchvision.io.decode_png + normalise": normalised(torchvision_rgb)}
        results = timings(fns, path, args.repeats)
        h, w = pil_rgb(path).shape[-2:]
    print(f"{path.name if args.image else 'synthetic scene'}: {w}x{h}, identical pixels: {same}")
    print("| decoder | min (ms) | median (ms) |\n|---|---|---|")
    for name, times in results.items():
        print(f"| {name} | {1000 * min(times):.1f} | {1000 * statistics.median(times):.1f} |")


if __name__ == "__main__":
    main()
