"""Tests for the synthetic Cityscapes-layout street-scene generator."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from hms_core.data.synthetic import (
    ALLOWED_LABEL_IDS,
    BUILDING,
    BUS,
    POLE,
    TRUCK,
    _render_scene,
    generate_dataset,
    render_scene,
)

H, W = 64, 128


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summary = generate_dataset(root, {"train": 4, "val": 2}, H, W, seed=7, progress=False)
    return root, summary


def test_cityscapes_layout_and_file_names(dataset):
    root, summary = dataset
    stems = {"train": ["aachen_000000_000019", "bochum_000000_000019", "bremen_000000_000019",
                       "aachen_000001_000019"],
             "val": ["frankfurt_000000_000019", "lindau_000000_000019"]}
    expected = set()
    for split, names in stems.items():
        for stem in names:
            city = stem.split("_")[0]
            expected.add(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")
            expected.add(f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png")
    assert set(_files(root)) == expected  # nothing else, e.g. no leftover temp files
    for name in expected:
        with Image.open(root / name) as im:
            assert im.size == (W, H)
            assert im.mode == ("RGB" if name.startswith("leftImg8bit") else "L")
    assert {s: v["images"] for s, v in summary.items()} == {"train": 4, "val": 2}
    for v in summary.values():
        assert sum(v["label_pixel_fraction"].values()) == pytest.approx(1.0)
        assert v["label_pixel_fraction"]["sky"] > 0 and v["label_pixel_fraction"]["pole"] > 0


def test_same_seed_is_byte_identical_and_other_seed_differs(dataset, tmp_path):
    root, _ = dataset
    generate_dataset(tmp_path / "same", {"train": 4, "val": 2}, H, W, seed=7, progress=False)
    generate_dataset(tmp_path / "other", {"train": 4, "val": 2}, H, W, seed=8, progress=False)
    reference, same, other = _files(root), _files(tmp_path / "same"), _files(tmp_path / "other")
    assert same == reference
    assert other.keys() == reference.keys()
    assert all(other[k] != reference[k] for k in reference)


def test_image_does_not_depend_on_split_sizes(dataset, tmp_path):
    root, _ = dataset
    generate_dataset(tmp_path, {"train": 2}, H, W, seed=7, cities={"train": ["aachen", "bochum", "bremen"]},
                     progress=False)
    small = _files(tmp_path)
    assert small and all(small[k] == _files(root)[k] for k in small)


def test_label_ids_are_official_and_allowed(dataset):
    root, _ = dataset
    assert set(ALLOWED_LABEL_IDS) == {1, 4, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 33}
    seen = set()
    for path in root.glob("gtFine/*/*/*_gtFine_labelIds.png"):
        seen |= set(np.unique(np.array(Image.open(path))).tolist())
    assert seen <= set(ALLOWED_LABEL_IDS)
    assert all(i in id2label for i in seen)
    assert {23, 7, 17, 24} <= seen


def _longest_runs(mask: np.ndarray) -> np.ndarray:
    """Length of the horizontal run of True that each pixel belongs to (0 where False)."""
    out = np.zeros(mask.shape, int)
    for r, row in enumerate(mask):
        edges = np.diff(np.r_[0, row.astype(int), 0])
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            out[r, a:b] = b - a
    return out


def test_thin_objects_exist_in_every_scene():
    found_thin_pole = False
    for seed in range(5):
        _, labels = render_scene(np.random.default_rng(seed), 128, 256)
        assert (labels == POLE).any() and (labels == 24).any()  # poles and persons everywhere
        assert (labels == 24).sum() < 0.01 * labels.size  # persons are tiny
        thin = (_longest_runs(labels == POLE) > 0) & (_longest_runs(labels == POLE) <= 2)
        found_thin_pole |= _longest_runs(thin.T).max() >= 10  # a 1-2 px wide column, 10+ px tall
    assert found_thin_pole


def test_building_and_vehicle_interiors_share_texture_statistics():
    pixels = {"building": [], "vehicle": []}
    for seed in range(60):
        image, labels, region, classes = _render_scene(np.random.default_rng(seed), 128, 256)
        assert set(classes) <= {BUILDING, BUS, TRUCK}
        for k, cls in enumerate(classes):
            interior = (region == k) & (labels == cls)
            pixels["building" if cls == BUILDING else "vehicle"].append(image[interior].astype(float))
    building, vehicle = (np.concatenate(v) for v in pixels.values())
    assert len(pixels["building"]) >= 10 and len(pixels["vehicle"]) >= 10
    assert np.abs(building.mean(0) - vehicle.mean(0)).max() < 4.0, (building.mean(0), vehicle.mean(0))
    assert np.abs(building.std(0) - vehicle.std(0)).max() < 3.0, (building.std(0), vehicle.std(0))


def test_render_scene_shapes_and_dtypes():
    image, labels = render_scene(np.random.default_rng(0), 40, 72)
    assert image.shape == (40, 72, 3) and image.dtype == np.uint8
    assert labels.shape == (40, 72) and labels.dtype == np.uint8


@pytest.mark.parametrize("kwargs, name", [
    (dict(height=16), "height"),
    (dict(width=31), "width"),
    (dict(seed=-1), "seed"),
    (dict(split_sizes={"train": 0}), "split_sizes"),
    (dict(split_sizes={"test": 1}), "cities"),
    (dict(split_sizes={"train": 1}, cities={"train": []}), "cities"),
])
def test_bad_arguments_raise_value_error_naming_them(tmp_path, kwargs, name):
    args = dict(root=tmp_path, split_sizes={"train": 1}, height=H, width=W, seed=0, progress=False)
    with pytest.raises(ValueError, match=name):
        generate_dataset(**{**args, **kwargs})
    assert not any(tmp_path.iterdir())  # validation happens before anything is written


def test_render_scene_rejects_small_size():
    with pytest.raises(ValueError, match="width"):
        render_scene(np.random.default_rng(0), 64, 20)
