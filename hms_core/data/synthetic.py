"""Deterministic synthetic street scenes in the Cityscapes layout (official label ids).

The data set exists to show *why* hierarchical multi-scale attention helps, so every
scene deliberately contains two failure modes that pull in opposite directions:

A. Small, thin, distant objects that need HIGH resolution. Poles are 1 px wide (sometimes
   2), traffic signs are 3-5 px, traffic lights 2x4 px, distant persons and riders are
   2 px wide and 4-7 px tall, bicycles are 1 px strokes. Their sizes are fixed in pixels.
   At scale 0.5 they mostly alias away; at scale 2 they are clear.

B. Large regions whose LOCAL texture is ambiguous and only CONTEXT resolves them, which
   favours LOW resolution. Each scene has 1-3 big rectangles, each a building (11) or a
   bus/truck (28/27) with equal chance. Both classes draw their interior from exactly the
   same distribution (`_region_texture`). Only the border tells them apart: buildings have a
   6-10 px brown roof band and stand on a strip of sidewalk, vehicles have a 4 px dark
   outline and two large black wheels under the bottom corners; the cues are thick enough to
   survive halving. A 64x64 training crop at scale 2 usually lies inside such a region and
   sees no cue; at scale 0.5 the whole region fits in the crop.

Pure numpy + Pillow. Every image gets its own generator derived from (seed, split, index).
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from hms_core.io import atomic_write

EGO, STATIC, ROAD, SIDEWALK, BUILDING, WALL, FENCE = 1, 4, 7, 8, 11, 12, 13
POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, BICYCLE = 24, 25, 26, 27, 28, 33
ALLOWED_LABEL_IDS = (EGO, STATIC, ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN,
                     VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, BICYCLE)
DEFAULT_CITIES = {"train": ["aachen", "bochum", "bremen"], "val": ["frankfurt", "lindau"]}
MIN_SIDE = 32
_GROUND = (ROAD, SIDEWALK, TERRAIN)
_SIDEWALK_RGB = (165, 158, 150)
_BIKE = np.array([[0, 1, 0, 0, 1, 0], [1, 0, 1, 1, 0, 1], [0, 1, 0, 0, 1, 0]], bool)  # two wheels + frame
_WHOLE = (slice(None), slice(None))


class _Scene:
    """Float RGB canvas, label map, region-interior map, shared noise and road geometry."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.rng, self.h, self.w = rng, height, width
        self.img = np.zeros((height, width, 3), np.float32)
        self.lab = np.zeros((height, width), np.uint8)
        self.region = np.full((height, width), -1, np.int16)  # k = untouched interior of region k
        self.yy, self.xx = np.mgrid[0:height, 0:width]
        self.g = rng.standard_normal((height, width, 1), dtype=np.float32)  # shared fine noise
        self.horizon = int(rng.uniform(0.25, 0.40) * height)
        self.vx = rng.uniform(0.4, 0.6) * width  # vanishing point column
        self.road_k, self.side_k = rng.uniform(0.35, 0.5), rng.uniform(0.12, 0.2)

    def depth(self, y):
        """0 at the horizon, 1 at the bottom row (perspective scale)."""
        return np.clip((np.asarray(y, np.float32) - self.horizon) / (self.h - self.horizon), 0, 1)

    def road_half(self, y):
        return self.w * (0.03 + self.road_k * self.depth(y))

    def side_width(self, y):
        return self.w * (0.01 + self.side_k * self.depth(y))

    def blocky(self, std: float, cell: int) -> np.ndarray:
        """Low-frequency noise (H, W, 1) made of `cell` x `cell` blocks."""
        n = self.rng.normal(0, std, (-(-self.h // cell), -(-self.w // cell), 1)).astype(np.float32)
        return np.repeat(np.repeat(n, cell, 0), cell, 1)[: self.h, : self.w]

    @staticmethod
    def box(y0, y1, x0, x1) -> tuple[slice, slice]:
        """Window of rows [y0, y1) and columns [x0, x1), clipped at 0 (numpy clips the far end)."""
        y0, x0 = max(int(y0), 0), max(int(x0), 0)
        return slice(y0, max(int(y1), y0)), slice(x0, max(int(x1), x0))

    def paint(self, where, colour, label: int, noise: float = 0.0, mask=None) -> None:
        """Paint `colour` (+ `noise` x shared noise) and `label` into window `where` (optionally masked)."""
        img, lab, region = self.img[where], self.lab[where], self.region[where]
        rgb = np.broadcast_to(np.asarray(colour, np.float32) + noise * self.g[where], img.shape)
        if mask is None:
            img[...], lab[...], region[...] = rgb, label, -1
        else:
            img[mask], lab[mask], region[mask] = rgb[mask], label, -1


def _draw_background(s: _Scene) -> None:
    """Sky gradient, terrain, tiled sidewalks and asphalt road in one-point perspective."""
    y, x = np.arange(s.h, dtype=np.float32)[:, None], np.arange(s.w, dtype=np.float32)[None, :]
    off, road_half = np.abs(x - s.vx), s.road_half(y)
    # 0: sky, 1: terrain, 2: sidewalk, 3: road
    code = (y >= s.horizon) * (1 + (off < road_half + s.side_width(y)) + (off < road_half))
    t = np.minimum(y / max(s.horizon, 1), 1)[..., None]
    sky = (1 - t) * np.float32([80, 130, 205]) + t * np.float32([170, 200, 235])
    base = np.float32([[0, 0, 0], [125, 165, 85], _SIDEWALK_RGB, [88, 88, 92]])[code]
    tiles = ((x % 5 == 0) | (y % 4 == 0)) * np.float32(-18)
    dash = (off < 0.5 + 2 * s.depth(y)) & (y // 4 % 2 == 0)  # dashed centre line
    detail = np.select([code == 1, code == 2, code == 3],
                       [s.blocky(8, 3)[..., 0], tiles, s.blocky(4, 4)[..., 0] + 120 * dash], 0)
    noise = np.float32([4, 12, 6, 7])[code] * s.g[..., 0] + detail
    s.img[...] = np.where((code == 0)[..., None], sky, base) + noise[..., None]
    s.lab[...] = np.array([SKY, TERRAIN, SIDEWALK, ROAD], np.uint8)[code]


def _draw_side_structures(s: _Scene) -> None:
    """Trees (vegetation), low walls and striped fences around the horizon."""
    rng, hz = s.rng, s.horizon
    for _ in range(rng.integers(1, 5)):
        cx = (rng.uniform(0, 0.3) if rng.random() < 0.5 else rng.uniform(0.7, 1.0)) * s.w
        cy, rx, ry = hz - rng.uniform(0, 0.1) * s.h, rng.uniform(.05, .15) * s.w, rng.uniform(.08, .2) * s.h
        win = s.box(cy - ry, cy + ry + 1, cx - rx, cx + rx + 1)
        blob = ((s.xx[win] - cx) / rx) ** 2 + ((s.yy[win] - cy) / ry) ** 2 < 1
        speckle = (s.g[win] > 1.0) * np.array([-25, -45, -20])  # dark gaps between leaves
        s.paint(win, np.array([55, 100, 40]) + speckle, VEGETATION, 10, blob)
    for label in [WALL] * rng.integers(0, 3) + [FENCE] * rng.integers(0, 3):
        bw = int(rng.uniform(0.15, 0.35) * s.w)
        x0, top = rng.integers(0, s.w - bw), hz - int(rng.uniform(0.03, 0.08) * s.h)
        win = s.box(top, hz + int(rng.uniform(0, 0.05) * s.h) + 1, x0, x0 + bw)
        if label == WALL:
            s.paint(win, (112, 108, 120), WALL, 5)
        else:  # railing: vertical bars every 3 px under a 2 px top rail
            bars = ((s.xx[win] % 3 == 0) | (s.yy[win] <= top + 1))[..., None]
            s.paint(win, np.where(bars, [150, 125, 105], [95, 85, 80]), FENCE, 4)


def _draw_cars(s: _Scene) -> None:
    """1-4 medium cars on the road: saturated body, dark cabin windows, dark wheels."""
    rng, hz = s.rng, s.horizon
    for yb in np.sort(rng.integers(hz + int(0.15 * (s.h - hz)), s.h - 1, rng.integers(1, 5))):
        cw = max(6, int((0.05 + 0.25 * s.depth(yb)) * s.w))
        ch = max(4, int(0.55 * cw))
        x0 = int(s.vx + rng.uniform(-0.8, 0.8) * s.road_half(yb) - cw / 2)
        body = rng.choice([[200, 30, 30], [30, 60, 200], [230, 200, 30], [30, 160, 60], [220, 220, 220]])
        s.paint(s.box(yb - ch // 2, yb, x0, x0 + cw), body, CAR, 6)
        s.paint(s.box(yb - ch, yb - ch // 2, x0 + cw // 6, x0 + cw - cw // 6), (60, 70, 85), CAR, 4)
        wh, ww = max(2, ch // 4), max(2, cw // 6)
        for wx in (x0 + 1, x0 + cw - 1 - ww):
            s.paint(s.box(yb - wh // 2, yb + wh - wh // 2, wx, wx + ww), (20, 20, 22), CAR)


def _region_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Grey-blue noise with a random grid of rectangular panels (windows), shape (h, w, 3).

    Used for buildings AND buses/trucks alike, so their interiors are statistically identical.
    """
    base = np.array([100, 108, 122], np.float32) + rng.normal(0, 6)
    ch, cw = rng.integers(6, 12), rng.integers(5, 11)
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = yy + rng.integers(0, ch), xx + rng.integers(0, cw)  # random grid phase: stationary texture
    window = (yy % ch >= 1) & (yy % ch < ch - 1) & (xx % cw >= 1) & (xx % cw < cw - 1)
    lit = rng.random((h // ch + 2, w // cw + 2)) < 0.3
    offset = np.where(lit, rng.normal(20, 8, lit.shape), rng.normal(-25, 8, lit.shape))
    panels = np.where(window, offset[yy // ch, xx // cw], 0.0).astype(np.float32)[..., None]
    noise = 9 * rng.standard_normal((h, w, 1), np.float32) + 2 * rng.standard_normal((h, w, 3), np.float32)
    return base + panels + noise


OUTLINE = 4  # vehicle outline width (px at scale 1): the cue must survive downscaling to 0.5


def _draw_ambiguous_regions(s: _Scene) -> list[int]:
    """Failure mode B: 1-3 big building-or-vehicle rectangles told apart only by border cues."""
    rng, classes = s.rng, []
    for k in range(rng.integers(1, 4)):
        h = min(int(rng.uniform(0.55, 0.85) * s.h), s.h - 10)
        w = int(rng.uniform(0.30, 0.60) * s.w)
        y1 = int(rng.integers(min(max(h + 3, s.horizon + 2), s.h - 7), s.h - 6))  # bottom (excl.)
        y0, x0 = y1 - h, int(rng.integers(0, s.w - w + 1))
        x1 = x0 + w
        label = BUILDING if rng.random() < 0.5 else (BUS if rng.random() < 0.5 else TRUCK)
        texture = _region_texture(rng, h, w)
        if label == BUILDING:  # brown roof band on top, standing on a strip of sidewalk
            roof = int(rng.integers(6, 11))  # thick enough to survive downscaling to 0.5
            s.paint(s.box(y0, y1, x0, x1), texture, BUILDING)
            s.paint(s.box(y0, y0 + roof, x0, x1), (120, 70, 40), BUILDING, 6)
            s.paint(s.box(y1, y1 + int(rng.integers(3, 6)), x0 - 2, x1 + 2), _SIDEWALK_RGB, SIDEWALK, 6)
            s.region[y0 + roof:y1, x0:x1] = k
        else:  # 4 px dark outline and two black wheels under the bottom corners
            e = OUTLINE
            s.paint(s.box(y0, y1, x0, x1), (30, 30, 34), label)
            s.paint(s.box(y0 + e, y1 - e, x0 + e, x1 - e), texture[e:-e, e:-e], label)
            s.region[y0 + e:y1 - e, x0 + e:x1 - e] = k
            wh, ww = max(5, h // 6), max(5, w // 6)
            for wx in (x0 + e, x1 - e - ww):
                s.paint(s.box(y1 - wh // 2, y1 + wh - wh // 2, wx, wx + ww), (10, 10, 10), label)
        classes.append(label)
    return classes


def _ground_column(s: _Scene, y: int, margin: int) -> int:
    """A random column whose pixel at row `y` shows ground (so small objects stand on the street)."""
    cols = np.flatnonzero(np.isin(s.lab[y, : s.w - margin], _GROUND))
    return int(s.rng.choice(cols)) if cols.size else int(s.rng.integers(0, s.w - margin))


def _draw_thin_objects(s: _Scene) -> None:
    """Failure mode A: 1-2 px poles with signs/lights, tiny persons, riders and bicycles."""
    rng, hz = s.rng, s.horizon
    for _ in range(rng.integers(4, 11)):  # poles on the sidewalks, in front of the big regions
        yb, side = int(rng.integers(hz + 2, s.h)), (-1 if rng.random() < 0.5 else 1)
        pw = 2 if rng.random() < 0.15 else 1
        x = s.vx + side * (s.road_half(yb) + rng.uniform(0, 1) * s.side_width(yb))
        x = int(np.clip(x, 0, s.w - pw))
        top = max(0, yb - int((0.25 + 0.45 * s.depth(yb)) * s.h))
        s.paint(s.box(top, yb, x, x + pw), np.full(3, 72) + rng.normal(0, 15), POLE)
        if rng.random() < 0.5:  # yellow sign on the road side of the pole
            sz = int(rng.integers(3, 6))
            sx = x - sz if side > 0 else x + pw
            s.paint(s.box(top + 2, top + 2 + sz, sx, sx + sz), (235, 205, 25), SIGN)
        if rng.random() < 0.35:  # dark 2x4 housing with one orange lamp
            lx, ly = (x + pw if side > 0 else x - 2), top + int(rng.integers(0, 4))
            s.paint(s.box(top, top + 4, lx, lx + 2), (25, 25, 25), LIGHT)
            s.paint(s.box(ly, ly + 1, lx, lx + 2), (255, 150, 20), LIGHT)
    small = [PERSON] * rng.integers(3, 9) + [RIDER] * rng.integers(0, 3) + [BICYCLE] * rng.integers(0, 3)
    for label in small:
        yb = int(rng.integers(hz + 1, hz + 2 + int(0.2 * (s.h - hz))))  # distant: near the horizon
        x = _ground_column(s, yb, margin=6)
        if label != PERSON:  # riders sit on a bicycle; a bicycle alone is just the frame
            s.paint(s.box(yb - 3, yb, x, x + 6), (40, 30, 35), BICYCLE, mask=_BIKE)
            yb -= 2
        if label != BICYCLE:
            ph, colour = int(rng.integers(4, 8)), ((215, 45, 60) if label == PERSON else (150, 40, 20))
            s.paint(s.box(yb - ph, yb, x + 2, x + 4), colour, label, 10)
            s.paint(s.box(yb - ph, yb - ph + 1, x + 2, x + 4), (225, 180, 150), label)  # head


def _draw_clutter_and_hood(s: _Scene) -> None:
    """Small static clutter (void id 4) on the ground and, in ~1/3 of images, the ego hood."""
    rng = s.rng
    for _ in range(rng.integers(1, 5)):
        yb = int(rng.integers(s.horizon + 3, s.h))
        x, bh, bw = _ground_column(s, yb - 1, margin=4), int(rng.integers(3, 6)), int(rng.integers(2, 5))
        s.paint(s.box(yb - bh, yb, x, x + bw), (95, 75, 55), STATIC, 12)
    if rng.random() < 1 / 3:
        k0 = max(3.0, rng.uniform(0.04, 0.08) * s.h)
        rows = k0 * (0.6 + 0.4 * (1 - ((s.xx - s.w / 2) / (s.w / 2)) ** 2))
        s.paint(_WHOLE, (28, 28, 34), EGO, 3, s.yy >= s.h - rows)


def _render_scene(rng: np.random.Generator, height: int, width: int):
    """Render one scene; return (image, labels, region map, region classes).

    `region[y, x] == k` marks visible pixels of the interior texture of ambiguous region k
    (class `classes[k]`), -1 elsewhere; the tests use it to check the ambiguity is real.
    """
    s = _Scene(rng, height, width)
    for draw in (_draw_background, _draw_side_structures, _draw_cars):
        draw(s)
    classes = _draw_ambiguous_regions(s)
    _draw_thin_objects(s)
    _draw_clutter_and_hood(s)
    return np.clip(np.rint(s.img), 0, 255).astype(np.uint8), s.lab, s.region, classes


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic street scene: (image uint8 HxWx3, official Cityscapes label ids uint8 HxW)."""
    _check_int("height", height, MIN_SIDE)
    _check_int("width", width, MIN_SIDE)
    image, labels, _, _ = _render_scene(rng, height, width)
    return image, labels


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def generate_dataset(root: str | Path, split_sizes: dict[str, int], height: int, width: int, seed: int,
                     cities: dict[str, list[str]] | None = None, progress: bool = True) -> dict:
    """Write a synthetic data set in the Cityscapes layout and return a summary.

    Writes root/leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png (RGB) and
    root/gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png (mode 'L', official
    label ids). Images go round-robin over the split's cities; seq is the index within the city,
    frame is 19. Image i of a split depends only on (seed, split, i): same seed, same bytes.
    Returns {split: {"images": n, "label_pixel_fraction": {label_name: fraction}}}.
    """
    from cityscapesscripts.helpers.labels import id2label
    from tqdm import tqdm

    _check_int("height", height, MIN_SIDE)
    _check_int("width", width, MIN_SIDE)
    _check_int("seed", seed, 0)
    if not isinstance(split_sizes, dict) or not split_sizes:
        raise ValueError(f"split_sizes must be a non-empty dict, got {split_sizes!r}")
    cities = DEFAULT_CITIES if cities is None else cities
    for split, n in split_sizes.items():
        _check_int(f"split_sizes[{split!r}]", n, 1)
        names = cities.get(split)
        if not names or not all(isinstance(c, str) and c and not set(c) & set("_/\\") for c in names):
            raise ValueError(f"cities[{split!r}] must be a non-empty list of names without '_' or '/', "
                             f"got {names!r}")
    bar = tqdm(total=sum(map(int, split_sizes.values())), desc="synthetic", file=sys.stderr, disable=not progress)
    summary = {}
    for split, n in split_sizes.items():
        counts, names = np.zeros(256, np.int64), cities[split]
        for i in range(int(n)):
            city = names[i % len(names)]
            stem = f"{city}_{i // len(names):06d}_{19:06d}"  # seq = index within the city, frame 19
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), i]))
            image, labels, _, _ = _render_scene(rng, height, width)
            for folder, suffix, array in (("leftImg8bit", "leftImg8bit", image),
                                          ("gtFine", "gtFine_labelIds", labels)):
                # HxWx3 uint8 -> RGB, HxW uint8 -> L; level 1: the noisy images barely compress further
                atomic_write(Path(root) / folder / split / city / f"{stem}_{suffix}.png",
                             lambda f: Image.fromarray(array).save(f, format="PNG", compress_level=1))
            counts += np.bincount(labels.ravel(), minlength=256)
            bar.update(1)
        fractions = {id2label[i].name: float(counts[i] / counts.sum()) for i in ALLOWED_LABEL_IDS}
        summary[split] = {"images": int(n), "label_pixel_fraction": fractions}
    bar.close()
    return summary
