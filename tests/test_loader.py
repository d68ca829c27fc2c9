"""Training crops cut in source coordinates: the same crops as resizing the whole image first,
uint8 through the loader, normalised on the device, independent of the worker count."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.loader import old_random_scale_crop_flip
from hms_core.data.dataset import (
    IGNORE,
    PAD_RGB,
    STD,
    CropPlan,
    DataError,
    StreamSampler,
    TrainSet,
    crop_image,
    crop_label,
    load_pair,
    nearest_index,
    normalise,
    prepare_dataset,
    random_scale_crop_flip,
    read_index,
    training_inputs,
)
from hms_core.data.labels import build_grouping
from hms_core.data.synthetic import generate_dataset
from hms_core.runtime import distributed
from hms_core.runtime.speed import Speed
from hms_core.train.streams import sample_stream

# PIL resamples in 8-bit fixed point and rounds after each of its two passes: within 1 of
# 255 of the float resize, which normalisation divides by 255 * std.
IMAGE_ATOL = 1 / 255 / STD.min().item() + 1e-4


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> list[dict[str, str]]:
    ws = tmp_path_factory.mktemp("loader")
    generate_dataset(ws / "raw", {"train": 3}, 64, 128, seed=0, progress=False)
    prepare_dataset(ws / "raw", ws / "prepared", build_grouping("category"), ["train"])
    return read_index(ws / "prepared", "train")


def _pair(h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random uint8 image [3, h, w] stored height x width x channels, as decoded, and labels."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).permute(2, 0, 1)
    return image, torch.randint(0, 20, (h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("scale, crop", [(0.5, 24), (1.0, 24), (2.0, 24), (1.0, 80), (0.37, 16)])
def test_crop_equals_resizing_the_whole_image_then_cropping(scale, crop):
    """Against the path before (whole float image resized, padded with 0 and 255, cropped,
    flipped; the same draws): labels bit-identical, images within PIL's rounding and
    without a shift (mean error about a quarter of one of 255)."""
    image, label = _pair(45, 70)
    errors = []
    for seed in range(12):
        got_image, got_label = random_scale_crop_flip(image, label, scale, crop, [0.75, 1.25], True,
                                                      torch.Generator().manual_seed(seed))
        want_image, want_label = old_random_scale_crop_flip(normalise(image), label.long(), scale, crop,
                                                            [0.75, 1.25], True, torch.Generator().manual_seed(seed))
        assert got_image.dtype == got_label.dtype == torch.uint8
        assert got_image.shape == (3, crop, crop) and got_label.shape == (crop, crop)
        assert torch.equal(got_label.long(), want_label)
        diff = (normalise(got_image) - want_image).abs()
        assert diff.max() <= IMAGE_ATOL, f"seed {seed}"
        errors.append((diff * 255 * STD).mean())
    assert torch.stack(errors).mean() < 0.4


@pytest.mark.parametrize("size, top, left", [((45, 70), 0, 0), ((45, 70), 21, 46), ((90, 140), 66, 3),
                                             ((23, 35), 0, 0), ((112, 175), 88, 151), ((44, 69), 10, 20)])
def test_windows_at_the_borders_and_past_them(size, top, left):
    """Crops at the image borders, and crops larger than the resized image (padding), of
    shrinking, growing and nearly-unit resizes."""
    image, label = _pair(45, 70, seed=1)
    plan = CropPlan(size, top, left, 24, False)
    resized = F.interpolate(normalise(image)[None], size=size, mode="bilinear", align_corners=False,
                            antialias=size[0] < 45 or size[1] < 70)[0]
    want_label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    rows, cols = min(24, size[0] - top), min(24, size[1] - left)
    got_image, got_label = normalise(crop_image(image, plan)), crop_label(label, plan).long()
    assert torch.equal(got_label[:rows, :cols], want_label[top:top + rows, left:left + cols])
    assert (got_label[rows:] == IGNORE).all() and (got_label[:, cols:] == IGNORE).all()
    assert (got_image[:, :rows, :cols] - resized[:, top:top + rows, left:left + cols]).abs().max() <= IMAGE_ATOL
    pad = normalise(torch.tensor(PAD_RGB, dtype=torch.uint8).view(3, 1, 1))
    assert (got_image[:, rows:] == pad).all() and (got_image[:, :, cols:] == pad).all()
    assert pad.abs().max() < 0.01  # the mean colour: the old path's padding of 0


def test_unit_scale_crop_is_the_old_crop_exactly():
    image, label = _pair(40, 64, seed=2)
    for seed in range(4):
        got = random_scale_crop_flip(image, label, 1.0, 32, [1.0, 1.0], True, torch.Generator().manual_seed(seed))
        want = old_random_scale_crop_flip(normalise(image), label.long(), 1.0, 32, [1.0, 1.0], True,
                                          torch.Generator().manual_seed(seed))
        assert torch.equal(normalise(got[0]), want[0]) and torch.equal(got[1].long(), want[1])


def test_nearest_index_is_pytorchs_nearest():
    for in_size in (1, 7, 64, 97, 1024):
        for out_size in {1, 5, in_size, 2 * in_size, round(in_size * 0.61) or 1, round(in_size * 1.37), 333}:
            want = F.interpolate(torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1),
                                 size=(out_size, 1), mode="nearest").flatten().long()
            assert torch.equal(nearest_index(in_size, out_size, 0, out_size), want), (in_size, out_size)
            start = out_size // 3
            assert torch.equal(nearest_index(in_size, out_size, start, out_size - start), want[start:])


def test_batches_are_uint8_and_normalised_on_the_device_as_before(index):
    """The loader collates uint8; ``training_inputs`` gives what the float path gave for the
    same pixels (``normalise`` per image), channels-last kept."""
    dataset = TrainSet(index, 1.0, 32, [0.75, 1.25], True, seed=3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=StreamSampler(len(dataset), 3, 0, 4))
    for image, label in loader:
        assert image.dtype == label.dtype == torch.uint8
        assert image.shape == (2, 3, 32, 32) and label.shape == (2, 32, 32)
        x, y = training_inputs(image.to(memory_format=torch.channels_last), label)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x, torch.stack([normalise(im) for im in image])) and torch.equal(y, label.long())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_normalise_on_cuda_gives_the_cpu_bits():
    image = _pair(32, 48)[0].contiguous()[None]
    assert torch.equal(normalise(image.cuda()).cpu(), normalise(image))


def test_the_stream_is_the_same_for_any_worker_count(index):
    """Every training stream's batches (``streams.sample_stream``): model inputs, the same crops with
    0 or 2 workers, other crops with another seed."""
    cfg = {"batch_size": 2, "steps": 3}
    speed, ctx = Speed(torch.device("cpu")), distributed.current()

    def stream(workers: int, seed: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(sample_stream(TrainSet(index, 2.0, 24, [0.75, 1.25], True, seed), cfg, 0, workers, speed, ctx))

    inline, forked = stream(0), stream(2)
    assert len(inline) == 3 and inline[0][0].dtype == torch.float32 and inline[0][1].dtype == torch.int64
    assert all(torch.equal(a, b) for (xa, ya), (xb, yb) in zip(inline, forked) for a, b in ((xa, xb), (ya, yb)))
    assert not torch.equal(inline[0][0], stream(0, seed=6)[0][0])
    resumed = list(sample_stream(TrainSet(index, 2.0, 24, [0.75, 1.25], True, 5), cfg, 1, 0, speed, ctx))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(inline[1:], resumed))


def test_mismatched_label_size_is_named(tmp_path):
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"b.png: label size \(10, 8\) differs from its image .*a.png size \(12, 8\)"):
        load_pair({"image": str(tmp_path / "a.png"), "label": str(tmp_path / "b.png")})
