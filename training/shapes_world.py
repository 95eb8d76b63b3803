"""Shapes World: the procedural panoptic + referring dataset seem-tiny is trained on.

A scene is a small RGB image (each side 128..320 px, drawn independently) with a stuff
background (one class, or two split by a horizon) and 2..6 flat-coloured shapes (things)
that may overlap; later shapes occlude earlier ones and the ground truth is what is
visible. Every scene is a pure function of its integer seed.

Conventions
-----------
- Images are ``H x W x 3`` uint8 RGB; ``segment_map`` is ``H x W`` int32, every pixel
  belongs to exactly one segment, ids start at 1 (things first in drawing order, then
  stuff). There is no void.
- Pixel coordinates are pixel indices: ``(x, y)`` is column ``x``, row ``y``; an integer
  coordinate is the centre of that pixel. Thing centres use this convention.
- ``category_id`` is the index into :data:`CATEGORIES` (things first, then stuff). The
  COCO export writes ``category_id + 1`` because COCO ids start at 1.

Determinism
-----------
Randomness comes only from ``numpy.random.Generator(PCG64(...))`` streams derived from the
seed (layout, texture and wording each get their own stream, so changing the wording
never moves a shape). Shapes are rasterised with exact integer arithmetic on a 1/64 px
grid (4x4 supersampling for the mild anti-aliasing of the image, majority of the 16
samples for the hard ground truth); textures use only IEEE add/mul/div (no sin/exp, no
float reductions whose order could depend on SIMD). The only transcendental functions
are ``math.cos``/``math.sin`` for shape vertices, whose results are snapped to the 1/64
grid, so a last-ulp difference between libms cannot change a pixel in practice.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
from numpy.random import PCG64, Generator, SeedSequence
from PIL import Image

from model.shapes_classes import SHAPES_CATEGORIES as CATEGORIES
from model.shapes_classes import SHAPES_STUFF_CLASSES as STUFF_CLASSES
from model.shapes_classes import SHAPES_THING_CLASSES as THING_CLASSES
from model.types import Vocabulary

# --------------------------------------------------------------------------- constants
# The category names (THING_CLASSES, STUFF_CLASSES, CATEGORIES) belong to the model
# (model/shapes_classes.py): seem-tiny's vocabulary must not need this package.

# Saturated flat colours; the stuff textures are muted, so no thing colour can be taken
# for background (and the green/blue things are far more saturated than grass/water/sky).
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "orange", "purple")
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (222, 30, 34),
    "green": (30, 184, 52),
    "blue": (32, 72, 226),
    "yellow": (246, 218, 22),
    "orange": (246, 132, 14),
    "purple": (142, 44, 196),
}
# Each channel of an instance's colour is jittered by at most this much.
COLOR_JITTER = 10

SIZES: tuple[str, ...] = ("small", "large")
# Characteristic radius as a fraction of min(H, W); the gap between the ranges keeps the
# two sizes separable at a glance (large is at least 1.6x small).
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.075, 0.10), "large": (0.16, 0.22)}

MIN_SIDE, MAX_SIDE = 128, 320
MIN_THINGS, MAX_THINGS = 2, 6
# A thing must keep at least this much of its own area visible, and this many pixels.
MIN_VISIBLE_FRACTION = 0.5
MIN_VISIBLE_PIXELS = 60
# ...and its largest connected piece must hold this much of what is visible, so an
# occluder never chops a shape into similar-sized fragments.
MIN_MAIN_PIECE = 0.85
# A position word ("on the left") is used only when the thing's centre beats every other
# candidate's along that axis by this fraction of the image side.
POSITION_MARGIN = 0.2
DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "bottom")

# Rotation ranges in degrees. Squares, diamonds and crosses stay near upright so that a
# square never turns into a "diamond" and a cross stays a plus sign.
_ROTATION_RANGE: dict[str, tuple[float, float]] = {
    "circle": (0.0, 0.0),
    "ring": (0.0, 0.0),
    "square": (-20.0, 20.0),
    "triangle": (0.0, 360.0),
    "star": (0.0, 360.0),
    "hexagon": (0.0, 60.0),
    "diamond": (-15.0, 15.0),
    "cross": (-20.0, 20.0),
}

_Q = 64  # sub-pixel grid: coordinates are exact integers in 1/64 px
_SS = 4  # supersamples per pixel side (anti-aliasing of the image only); _block_sum4 assumes 4
_SAMPLE_STEP = _Q // _SS  # 16 subunits between samples; samples sit at 8 + 16 k
_MAX_TRIES = 40  # placements tried per thing before giving up on it

# Derived-stream tags: one independent PCG64 stream per concern.
_STREAM_LAYOUT, _STREAM_TEXTURE, _STREAM_WORDING = 0, 1, 2


def default_vocabulary() -> Vocabulary:
    """All Shapes World category names, with the stuff classes marked as stuff."""
    return Vocabulary(names=CATEGORIES, stuff=frozenset(STUFF_CLASSES))


def split_seeds(split: Literal["train", "val", "test"], n: int, start: int = 0) -> list[int]:
    """Seeds of a split: disjoint ranges, so held-out scenes never appear in training."""
    base = {"train": 0, "val": 1 << 40, "test": 1 << 41}[split]
    return [base + start + i for i in range(n)]


def _rng(seed: int, stream: int) -> Generator:
    return Generator(PCG64(SeedSequence([int(seed), stream])))


# --------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class ThingAttributes:
    """What a thing is and where it was drawn.

    `center` is (x, y) in pixel indices, `radius` the characteristic radius in pixels
    (the size attribute's scale), `rotation` degrees clockwise on screen, `rgb` the
    actual fill colour, `full_area` the pixels the shape would have unoccluded.
    """

    shape: str
    color: str
    size: str
    center: tuple[float, float]
    radius: float
    rotation: float
    rgb: tuple[int, int, int]
    full_area: int


@dataclass(frozen=True)
class Segment:
    """One panoptic segment. `bbox` is COCO (x, y, width, height) of the visible mask."""

    id: int
    category: str
    category_id: int
    isthing: bool
    area: int
    bbox: tuple[int, int, int, int]
    attributes: ThingAttributes | None = None


@dataclass(eq=False)
class Scene:
    """A generated scene: image, panoptic ground truth and referring phrases.

    `image`: H x W x 3 uint8. `segment_map`: H x W int32, ids from 1, no void.
    `phrases`: (text, segment_id) pairs; each text names exactly one thing of the image
    (things with no unambiguous description get none). `layout` names the background
    layout ("flat:<stuff>" or "horizon:<top>/<bottom>").
    """

    seed: int
    image: np.ndarray
    segment_map: np.ndarray
    segments: list[Segment]
    phrases: list[tuple[str, int]]
    layout: str

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def things(self) -> list[Segment]:
        return [s for s in self.segments if s.isthing]

    @property
    def stuff(self) -> list[Segment]:
        return [s for s in self.segments if not s.isthing]

    def segment(self, segment_id: int) -> Segment:
        for s in self.segments:
            if s.id == segment_id:
                return s
        raise KeyError(f"scene {self.seed} has no segment {segment_id}")

    def mask(self, segment_id: int) -> np.ndarray:
        """H x W bool mask of one segment."""
        self.segment(segment_id)  # a clear error for unknown ids
        return self.segment_map == segment_id

    def phrases_for(self, segment_id: int) -> list[str]:
        return [text for text, sid in self.phrases if sid == segment_id]

    def panoptic_rgb(self) -> np.ndarray:
        """The COCO panoptic PNG encoding of `segment_map`: id = R + 256 G + 256^2 B."""
        ids = self.segment_map.astype(np.uint32)
        return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


# --------------------------------------------------------------------------- rasterising
def _shape_vertices(shape: str, r: float, rotation: float) -> list[tuple[float, float]]:
    """Outline of a polygonal shape around (0, 0), pixels, y down, before rotation upright."""
    if shape == "square":
        h = 0.82 * r
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        pts = _regular(3, 1.2 * r)
    elif shape == "hexagon":
        pts = _regular(6, 1.0 * r)
    elif shape == "star":
        outer, inner = 1.15 * r, 0.5 * 1.15 * r
        pts = []
        for k in range(10):
            a = math.radians(-90.0 + 36.0 * k)
            rad = outer if k % 2 == 0 else inner
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "diamond":
        # Taller than wide, so it is never a rotated square.
        hh, hw = 1.15 * r, 0.68 * r
        pts = [(0.0, -hh), (hw, 0.0), (0.0, hh), (-hw, 0.0)]
    elif shape == "cross":
        a, t = 1.0 * r, 0.34 * r
        pts = [(-t, -a), (t, -a), (t, -t), (a, -t), (a, t), (t, t), (t, a), (-t, a), (-t, t), (-a, t), (-a, -t), (-t, -t)]
    else:
        raise ValueError(f"{shape!r} is not a polygonal shape")
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return [(x * c - y * s, x * s + y * c) for x, y in pts]


def _regular(n: int, radius: float) -> list[tuple[float, float]]:
    # First vertex points up (y is down on screen).
    return [
        (radius * math.cos(math.radians(-90.0 + 360.0 * k / n)), radius * math.sin(math.radians(-90.0 + 360.0 * k / n)))
        for k in range(n)
    ]


def _ceil_div(a: np.ndarray | int, b: int) -> np.ndarray | int:
    return -((-a) // b)


def _parity_fill(toggle_rows: np.ndarray, toggle_cols: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Even-odd fill from boundary crossings: sample j is inside iff an odd number of
    crossings lie at indices <= j of its row (crossings at n_cols fall off the end).
    Returns n_rows x n_cols uint8 of 0/1."""
    counts = np.zeros((n_rows, n_cols + 1), dtype=np.uint8)
    # uint8 wrap-around keeps parity (256 is even), and parity is all that matters.
    np.add.at(counts, (toggle_rows, np.clip(toggle_cols, 0, n_cols)), 1)
    return np.bitwise_xor.accumulate(counts[:, :n_cols] & 1, axis=1)


def _block_sum4(inside: np.ndarray, n: int) -> np.ndarray:
    """Sum 4x4 blocks of a (4n x 4n) 0/1 uint8 array into n x n uint8 (0..16).

    Four adjacent bytes viewed as one uint32 times 0x01010101 leave their sum in the top
    byte (no carries: each byte is 0/1) whatever the byte order, which is much faster than
    a strided reduction.
    """
    quads = np.ascontiguousarray(inside).view(np.uint32)  # (4n, n): 4 samples of one pixel row
    sums = (quads * np.uint32(0x01010101)) >> np.uint32(24)
    return sums.reshape(n, _SS, n).sum(axis=1, dtype=np.uint8)


def _sample_coords(n: int) -> np.ndarray:
    """Subunit coordinates of the n * 4 supersamples along one axis of an n-pixel canvas."""
    return _SAMPLE_STEP // 2 + _SAMPLE_STEP * np.arange(n * _SS, dtype=np.int64)


def _rasterize_local(shape: str, r: float, rotation: float) -> tuple[np.ndarray, int]:
    """Coverage (0..16, uint8) of a shape centred on pixel (b, b) of a (2b+1)^2 canvas.

    Because the centre sits exactly on a pixel, moving the shape by whole pixels moves
    this raster unchanged, so one rasterisation serves every placement attempt.
    Returns (coverage, b).
    """
    if shape in ("circle", "ring"):
        extent = r
        verts: list[tuple[float, float]] = []
    else:
        verts = _shape_vertices(shape, r, rotation)
        extent = max(math.hypot(x, y) for x, y in verts)
    b = int(math.ceil(extent)) + 3  # +3: room for the 2 px dilation of the colour check
    n = 2 * b + 1
    centre = b * _Q + _Q // 2
    coords = _sample_coords(n)
    n_s = n * _SS
    if shape in ("circle", "ring"):
        radii = [round(r * _Q)] + ([round(0.5 * r * _Q)] if shape == "ring" else [])
        rows_l, cols_l = [], []
        dy2 = (coords - centre) ** 2
        for rad in radii:
            # Samples with (x-c)^2 + (y-c)^2 <= R^2: an exact integer span per sample row.
            for i in np.nonzero(dy2 <= rad * rad)[0]:
                s = math.isqrt(rad * rad - int(dy2[i]))
                lo = _ceil_div(centre - s - _SAMPLE_STEP // 2, _SAMPLE_STEP)
                hi = (centre + s - _SAMPLE_STEP // 2) // _SAMPLE_STEP + 1
                rows_l += [i, i]
                cols_l += [lo, hi]
        inside = _parity_fill(np.asarray(rows_l, np.int64), np.asarray(cols_l, np.int64), n_s, n_s)
    else:
        q = np.array([(centre + round(x * _Q), centre + round(y * _Q)) for x, y in verts], dtype=np.int64)
        x1, y1 = q[:, 0][None, :], q[:, 1][None, :]
        x2, y2 = np.roll(q[:, 0], -1)[None, :], np.roll(q[:, 1], -1)[None, :]
        py = coords[:, None]
        crosses = (y1 > py) != (y2 > py)  # half-open rule: vertices are never counted twice
        den = y2 - y1
        num = x1 * den + (py - y1) * (x2 - x1)  # x_cross = num / den exactly
        sign = np.where(den < 0, -1, 1)
        num, den = num * sign, np.where(den == 0, 1, den * sign)
        x_ceil = _ceil_div(num, den)  # sample px is left of the edge iff px < ceil(x_cross)
        col = _ceil_div(x_ceil - _SAMPLE_STEP // 2, _SAMPLE_STEP)
        rows, edges = np.nonzero(crosses)
        inside = _parity_fill(rows, col[rows, edges], n_s, n_s)
    coverage = _block_sum4(inside, n)
    return coverage, b


# --------------------------------------------------------------------------- textures
def _value_noise(h: int, w: int, cell_y: float, cell_x: float, rng: Generator, r0: int, r1: int) -> np.ndarray:
    """Smooth noise in [0, 1] on rows r0..r1-1 of an h x w image: random values on a coarse
    grid (sized for the whole image), smoothstep-bilinear upsampled."""
    gh, gw = int(h / cell_y) + 3, int(w / cell_x) + 3
    grid = rng.random((gh, gw))
    fy = np.arange(r0, r1, dtype=np.float64) / cell_y
    fx = np.arange(w, dtype=np.float64) / cell_x
    iy, ix = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    ty, tx = fy - iy, fx - ix
    ty, tx = (ty * ty * (3.0 - 2.0 * ty))[:, None], (tx * tx * (3.0 - 2.0 * tx))[None, :]
    g00, g01 = grid[iy][:, ix], grid[iy][:, ix + 1]
    g10, g11 = grid[iy + 1][:, ix], grid[iy + 1][:, ix + 1]
    top = g00 + (g01 - g00) * tx
    bottom = g10 + (g11 - g10) * tx
    return top + (bottom - top) * ty


def _tri(v: np.ndarray) -> np.ndarray:
    """Triangle wave with period 1 in [0, 1] (a sine stand-in with no libm call)."""
    return np.abs((v - np.floor(v)) - 0.5) * 2.0


def _rgb(*channels: np.ndarray | float) -> np.ndarray:
    return np.stack(np.broadcast_arrays(*channels), axis=-1)


def _texture(name: str, h: int, w: int, r0: int, r1: int, rng: Generator) -> np.ndarray:
    """Float (r1 - r0) x W x 3 texture of one stuff class (muted hue family + its own
    pattern) on rows r0..r1-1 of an h x w image; only the rows a region needs are made."""
    paint = _TEXTURES.get(name)
    if paint is None:
        raise ValueError(f"unknown stuff class {name!r}")
    y = np.arange(r0, r1, dtype=np.float64)[:, None]
    x = np.arange(w, dtype=np.float64)[None, :]
    grain = rng.random((r1 - r0, w)) - 0.5
    return paint(_Rows(h, w, r0, r1, y, x, grain), rng)


@dataclass(frozen=True)
class _Rows:
    """The rows r0..r1-1 of an h x w image a texture is made on: their y and x coordinates
    (column and row vectors) and per-pixel grain in [-0.5, 0.5)."""

    h: int
    w: int
    r0: int
    r1: int
    y: np.ndarray
    x: np.ndarray
    grain: np.ndarray

    def noise(self, scale_y: float, scale_x: float, rng: Generator) -> np.ndarray:
        return _value_noise(self.h, self.w, scale_y, scale_x, rng, self.r0, self.r1)


def _sky(r: _Rows, rng: Generator) -> np.ndarray:
    # Pale blue gradient, lighter towards the bottom, with soft clouds.
    t = r.y / max(r.h - 1, 1)
    base = _rgb(122 + 72 * t, 170 + 50 * t, 224 + 16 * t)
    clouds = r.noise(26.0, 44.0, rng) * 0.6 + r.noise(11.0, 19.0, rng) * 0.4
    c = np.clip((clouds - 0.55) * 2.5, 0.0, 0.85)[..., None]
    return base + (np.array([238.0, 241.0, 246.0]) - base) * c + r.grain[..., None] * 4.0


def _grass(r: _Rows, rng: Generator) -> np.ndarray:
    # Dull green; vertical streaks read as blades, large patches as uneven lawn.
    blades = r.noise(7.0, 1.6, rng) - 0.5
    patches = r.noise(40.0, 40.0, rng) - 0.5
    out = _rgb(78 + 28 * blades + 18 * patches, 126 + 40 * blades + 24 * patches, 58 + 18 * blades + 8 * patches)
    return out + r.grain[..., None] * 18.0


def _sand(r: _Rows, rng: Generator) -> np.ndarray:
    # Light beige with diagonal ripples and a coarse grain.
    period = 8.0 + 5.0 * rng.random()
    warp = r.noise(30.0, 30.0, rng)
    ripple = _tri((0.8 * r.x + r.y + 7.0 * warp) / period) - 0.5
    return _rgb(212 + 20 * ripple, 189 + 18 * ripple, 144 + 14 * ripple) + r.grain[..., None] * 26.0


def _water(r: _Rows, rng: Generator) -> np.ndarray:
    # Dark muted blue-teal with bright horizontal wave crests.
    period = 7.0 + 5.0 * rng.random()
    phase0 = rng.random()
    wave = (r.y + 3.0 * _tri(r.x / 29.0 + phase0)) / period
    crest = np.clip(1.0 - (wave - np.floor(wave)) / 0.2, 0.0, 1.0) * 0.6
    body = r.noise(24.0, 48.0, rng) - 0.5
    base = _rgb(42 + 10 * body, 92 + 14 * body, 138 + 18 * body)
    return base + (np.array([98.0, 152.0, 192.0]) - base) * crest[..., None] + r.grain[..., None] * 6.0


def _wall(r: _Rows, rng: Generator) -> np.ndarray:
    # Grey bricks in staggered courses with light mortar.
    bh = int(rng.integers(12, 21))
    bw = 2 * bh + int(rng.integers(0, 7))
    oy, ox = int(rng.integers(0, bh)), int(rng.integers(0, bw))
    yi = np.arange(r.r0, r.r1)[:, None] + oy
    row = yi // bh
    xi = np.arange(r.w)[None, :] + ox + (row % 2) * (bw // 2)
    col = xi // bw
    # One shade per brick of the whole image, whichever rows are drawn.
    shade = rng.integers(-14, 15, size=((r.h - 1 + oy) // bh + 1, (r.w - 1 + ox + bw // 2) // bw + 1)).astype(np.float64)
    brick = shade[row, col]
    mortar = ((yi % bh) < 2) | ((xi % bw) < 2)
    out = _rgb(128 + brick, 124 + brick, 132 + brick) + r.grain[..., None] * 12.0
    return np.where(mortar[..., None], np.array([186.0, 183.0, 176.0]) + r.grain[..., None] * 6.0, out)


def _floor(r: _Rows, rng: Generator) -> np.ndarray:
    # Two-tone brown-grey checks (tiles).
    tile = int(rng.integers(14, 31))
    oy, ox = int(rng.integers(0, tile)), int(rng.integers(0, tile))
    check = ((np.arange(r.r0, r.r1)[:, None] + oy) // tile + (np.arange(r.w)[None, :] + ox) // tile) % 2
    out = np.where(check[..., None] == 0, np.array([168.0, 150.0, 122.0]), np.array([110.0, 98.0, 82.0]))
    return out + r.grain[..., None] * 16.0


_TEXTURES = {"sky": _sky, "grass": _grass, "sand": _sand, "water": _water, "wall": _wall, "floor": _floor}


def _to_uint8(v: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(v + 0.5), 0, 255).astype(np.uint8)


def _background_layout(h: int, w: int, rng: Generator) -> tuple[str, np.ndarray, list[str]]:
    """Stuff layout: (name, H x W int index into `classes`, classes)."""
    if rng.random() < 0.35:
        name = STUFF_CLASSES[int(rng.integers(len(STUFF_CLASSES)))]
        return f"flat:{name}", np.zeros((h, w), np.int64), [name]
    if rng.random() < 0.7:
        top = "sky"
        bottom = ("grass", "sand", "water")[int(rng.integers(3))]
    else:
        top, bottom = "wall", "floor"
    # A slightly tilted horizon, exact in integers: pixel centre (xc, yc) is above iff
    # yc < y0 + dy * (xc - W/2) / W, everything scaled to the 1/64 grid.
    y0 = round((0.3 + 0.4 * rng.random()) * h * _Q)
    dy = round((rng.random() - 0.5) * 0.24 * h * _Q)
    yc = np.arange(h, dtype=np.int64)[:, None] * _Q + _Q // 2
    xc = np.arange(w, dtype=np.int64)[None, :] * _Q + _Q // 2
    above = yc * (w * _Q) < y0 * (w * _Q) + dy * (xc - w * _Q // 2)
    return f"horizon:{top}/{bottom}", np.where(above, 0, 1), [top, bottom]


# --------------------------------------------------------------------------- generation
@dataclass
class _Placed:
    shape: str
    color: str
    size: str
    radius: float
    rotation: float
    rgb: tuple[int, int, int]
    coverage: np.ndarray  # (2b+1)^2 uint8, 0..16
    hard: np.ndarray  # coverage >= 8: the ground-truth footprint
    y0: int
    x0: int
    full_area: int

    @property
    def center(self) -> tuple[float, float]:
        b = self.hard.shape[0] // 2
        return (float(self.x0 + b), float(self.y0 + b))


def _random_thing(rng: Generator, side: int) -> tuple[str, str, str, float, float, tuple[int, int, int]]:
    shape = THING_CLASSES[int(rng.integers(len(THING_CLASSES)))]
    color = COLORS[int(rng.integers(len(COLORS)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    lo, hi = SIZE_RANGES[size]
    radius = (lo + (hi - lo) * rng.random()) * side
    rlo, rhi = _ROTATION_RANGE[shape]
    rotation = rlo + (rhi - rlo) * rng.random()
    jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
    rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOR_RGB[color], jitter))
    return shape, color, size, radius, rotation, rgb  # type: ignore[return-value]


def _place_things(h: int, w: int, n_things: int, rng: Generator) -> tuple[list[_Placed], np.ndarray]:
    """Place things one by one, top-most last. Returns (things, owner map: index or -1).

    A placement is rejected when it would leave an earlier thing with less than
    MIN_VISIBLE_FRACTION of its area or MIN_VISIBLE_PIXELS, or split into pieces with the
    largest below MIN_MAIN_PIECE of the rest, or when it would touch (within 2 px) a
    visible thing of the same colour: two touching red shapes would look like one blob
    whose split the model could not possibly see.
    """
    from scipy.ndimage import binary_dilation

    side = min(h, w)
    owner = np.full((h, w), -1, dtype=np.int32)
    placed: list[_Placed] = []
    visible: list[int] = []
    attempts = 0
    need = min(MIN_THINGS, n_things)
    # One attempt per requested thing; more only while fewer than MIN_THINGS could be placed.
    while (len(placed) < n_things and attempts < n_things) or (len(placed) < need and attempts < 50):
        attempts += 1
        shape, color, size, radius, rotation, rgb = _random_thing(rng, side)
        coverage, b = _rasterize_local(shape, radius, rotation)
        hard = coverage >= (_SS * _SS) // 2
        near = binary_dilation(hard, iterations=2)
        full_area = int(np.count_nonzero(hard))
        corner = _draw_where_it_fits(owner, placed, visible, hard, near, b, color, rng)
        if corner is not None:
            visible.append(full_area)
            placed.append(_Placed(shape, color, size, radius, rotation, rgb, coverage, hard, *corner, full_area))
    return placed, owner


def _draw_where_it_fits(owner: np.ndarray, placed: list[_Placed], visible: list[int], hard: np.ndarray,
                        near: np.ndarray, b: int, color: str, rng: Generator) -> tuple[int, int] | None:
    """Tries up to _MAX_TRIES random positions for a thing (`hard`: its footprint on a canvas
    of half-size `b`; `near`: that grown by 2 px) and draws it into `owner` at the first one
    that `_place_things`'s rules accept, taking what it hides off `visible`. Returns the
    canvas's top-left corner (y0, x0), or None when no position was accepted."""
    h, w = owner.shape
    n = 2 * b + 1
    # The shape lies fully inside the image (its footprint lies within b-3 of the centre).
    lo_x, hi_x, lo_y, hi_y = b - 3, w - 1 - (b - 3), b - 3, h - 1 - (b - 3)
    if hi_x < lo_x or hi_y < lo_y:
        return None
    for _ in range(_MAX_TRIES):
        cx, cy = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
        y0, x0 = cy - b, cx - b
        # The canvas may stick out of the image by its 3 px margin: clip the window.
        wy0, wx0, wy1, wx1 = max(y0, 0), max(x0, 0), min(y0 + n, h), min(x0 + n, w)
        win = owner[wy0:wy1, wx0:wx1]
        sl = (slice(wy0 - y0, wy1 - y0), slice(wx0 - x0, wx1 - x0))
        hidden = win[hard[sl]]
        lost = np.bincount(hidden[hidden >= 0], minlength=len(placed))
        if not _stays_visible(placed, visible, lost) or _touches_same_colour(win[near[sl]], placed, color):
            continue
        # Draw it, then check that no occluded thing fell apart; undo if one did.
        footprint = hard[sl]
        before = win[footprint]
        win[footprint] = len(placed)
        if _splits_an_occluded_thing(owner, placed, visible, lost):
            win[footprint] = before
            continue
        for i in range(len(placed)):
            visible[i] -= int(lost[i])
        return y0, x0
    return None


def _stays_visible(placed: list[_Placed], visible: list[int], lost: np.ndarray) -> bool:
    """Every earlier thing keeps MIN_VISIBLE_PIXELS and MIN_VISIBLE_FRACTION of its area when
    it loses `lost[i]` more pixels."""
    return all(visible[i] - lost[i] >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * placed[i].full_area)
               for i in range(len(placed)))


def _touches_same_colour(touched: np.ndarray, placed: list[_Placed], color: str) -> bool:
    """Whether a visible thing among the owners `touched` (-1: none) has colour `color`."""
    touched = np.unique(touched[touched >= 0])
    return any(placed[i].color == color for i in touched)


def _splits_an_occluded_thing(owner: np.ndarray, placed: list[_Placed], visible: list[int], lost: np.ndarray) -> bool:
    """Whether a thing that lost pixels now falls into pieces whose largest is below
    MIN_MAIN_PIECE of what stays visible of it (`owner` already holds the new thing)."""
    from scipy.ndimage import label

    for i in np.nonzero(lost)[0]:
        p = placed[i]
        m = p.hard.shape[0]
        piece = owner[max(p.y0, 0) : p.y0 + m, max(p.x0, 0) : p.x0 + m] == i
        labels, count = label(piece)
        if count > 1 and np.bincount(labels.ravel())[1:].max() < MIN_MAIN_PIECE * (visible[i] - lost[i]):
            return True
    return False


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys = np.nonzero(mask.any(axis=1))[0]
    xs = np.nonzero(mask.any(axis=0))[0]
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1))


def _paint(seed: int, h: int, w: int, region: np.ndarray, stuff_names: list[str], things: list[_Placed]) -> np.ndarray:
    """The scene's pixels: background textures, then the things composited in drawing order
    with their 16-level coverage, in integers (exact, so identical everywhere)."""
    tex_rng = _rng(seed, _STREAM_TEXTURE)
    image = np.zeros((h, w, 3), dtype=np.uint8)
    for k, name in enumerate(stuff_names):
        rows = np.nonzero((region == k).any(axis=1))[0]
        if len(rows) == 0:
            continue
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        tex = _to_uint8(_texture(name, h, w, r0, r1, tex_rng))
        np.copyto(image[r0:r1], tex, where=(region[r0:r1] == k)[..., None])
    full = _SS * _SS
    for t in things:
        n = t.hard.shape[0]
        wy0, wx0, wy1, wx1 = max(t.y0, 0), max(t.x0, 0), min(t.y0 + n, h), min(t.x0 + n, w)
        cov = t.coverage[wy0 - t.y0 : wy1 - t.y0, wx0 - t.x0 : wx1 - t.x0].astype(np.int32)[..., None]
        win = image[wy0:wy1, wx0:wx1]
        blended = (win.astype(np.int32) * (full - cov) + np.array(t.rgb, np.int32) * cov + full // 2) // full
        win[...] = blended.astype(np.uint8)
    return image


def _panoptic_truth(owner: np.ndarray, region: np.ndarray, stuff_names: list[str],
                    things: list[_Placed]) -> tuple[np.ndarray, list[Segment]]:
    """Segment map and segments: things 1..k in drawing order, then each stuff class that
    stays visible."""
    n_t = len(things)
    provisional = np.where(owner >= 0, owner, n_t + region).astype(np.int32)  # 0-based
    areas = np.bincount(provisional.ravel(), minlength=n_t + len(stuff_names))
    segments: list[Segment] = []
    lut = np.zeros(len(areas), np.int32)
    for i, t in enumerate(things):
        sid = len(segments) + 1
        lut[i] = sid
        n = t.hard.shape[0]
        wy0, wx0 = max(t.y0, 0), max(t.x0, 0)
        x, y, bw, bh = _bbox(owner[wy0 : t.y0 + n, wx0 : t.x0 + n] == i)  # a thing never leaves its window
        attrs = ThingAttributes(t.shape, t.color, t.size, t.center, float(t.radius), float(t.rotation), t.rgb, t.full_area)
        segments.append(Segment(sid, t.shape, CATEGORIES.index(t.shape), True, int(areas[i]), (x + wx0, y + wy0, bw, bh), attrs))
    for k, name in enumerate(stuff_names):
        if areas[n_t + k] == 0:
            continue  # wholly covered by things: no segment
        sid = len(segments) + 1
        lut[n_t + k] = sid
        segments.append(Segment(sid, name, CATEGORIES.index(name), False, int(areas[n_t + k]), _bbox(provisional == n_t + k)))
    return lut[provisional], segments


def generate_scene(
    seed: int,
    *,
    size: tuple[int, int] | None = None,
    num_things: int | None = None,
) -> Scene:
    """Generate the scene of `seed`.

    `size` = (height, width) overrides the random size (each side otherwise uniform in
    [MIN_SIDE, MAX_SIDE]); `num_things` overrides the random count in
    [MIN_THINGS, MAX_THINGS] (fewer may fit on a crowded canvas, never fewer than
    MIN_THINGS in practice). Same arguments, same bytes.
    """
    rng = _rng(seed, _STREAM_LAYOUT)
    if size is None:
        h = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        w = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    else:
        h, w = int(size[0]), int(size[1])
        if h < 32 or w < 32:
            raise ValueError(f"scene size {size} is too small (min 32 x 32)")
    n_things = int(rng.integers(MIN_THINGS, MAX_THINGS + 1)) if num_things is None else int(num_things)
    layout, region, stuff_names = _background_layout(h, w, rng)
    things, owner = _place_things(h, w, n_things, rng)

    image = _paint(seed, h, w, region, stuff_names, things)
    segment_map, segments = _panoptic_truth(owner, region, stuff_names, things)
    phrases = make_phrases([s for s in segments if s.isthing], w, h, _rng(seed, _STREAM_WORDING))
    return Scene(seed=int(seed), image=image, segment_map=segment_map, segments=segments, phrases=phrases, layout=layout)


def generate_scenes(seeds: Iterable[int], **kwargs) -> Iterable[Scene]:
    """Lazily generate the scenes of `seeds` (kwargs as for :func:`generate_scene`)."""
    for seed in seeds:
        yield generate_scene(seed, **kwargs)


# --------------------------------------------------------------------------- phrases
# Attribute subsets tried in order of length; the shape noun is always said.
_ATTR_SETS: tuple[tuple[str, ...], ...] = ((), ("color",), ("size",), ("size", "color"))
_PLAIN_TEMPLATES = ("the {x}", "{x}")
_POSITION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the {x} on the left", "{x} on the left", "the leftmost {x}"),
    "right": ("the {x} on the right", "{x} on the right", "the rightmost {x}"),
    "top": ("the {x} at the top", "{x} at the top", "the topmost {x}"),
    "bottom": ("the {x} at the bottom", "{x} at the bottom", "the bottommost {x}"),
}


def _same(a: ThingAttributes, b: ThingAttributes, attrs: Sequence[str]) -> bool:
    return a.shape == b.shape and all(getattr(a, k) == getattr(b, k) for k in attrs)


def is_extreme(group: Sequence[ThingAttributes], target: ThingAttributes, direction: str, width: int, height: int) -> bool:
    """True iff `target` is the extreme of `group` (>= 2 things) along `direction` by a
    clear margin: its centre beats every other's by POSITION_MARGIN of the image side."""
    if len(group) < 2:
        return False  # "the red circle on the left" for a lone red circle on the right would mislead
    axis = 0 if direction in ("left", "right") else 1
    sign = 1.0 if direction in ("left", "top") else -1.0
    margin = POSITION_MARGIN * (width if axis == 0 else height)
    mine = sign * target.center[axis]
    others = [sign * g.center[axis] for g in group if g is not target]
    return len(others) == len(group) - 1 and all(o - mine >= margin for o in others)


def _noun_phrase(t: ThingAttributes, attrs: Sequence[str]) -> str:
    words = [getattr(t, k) for k in ("size", "color") if k in attrs]
    return " ".join(words + [t.shape])


def make_phrases(things: Sequence[Segment], width: int, height: int, rng: Generator) -> list[tuple[str, int]]:
    """Referring phrases that each name exactly one of `things`.

    For every thing: each attribute combination (shape; colour+shape; size+shape;
    size+colour+shape) that matches only that thing gives a phrase. If none does, the
    combinations are qualified by a position word (left/right/top/bottom) when the thing is
    the clear extreme (:func:`is_extreme`) among the things sharing those attributes,
    keeping for each direction only the fewest attributes needed. A thing with no
    unambiguous description gets no phrase. Wording ("the" or not, "on the left" or
    "leftmost") is drawn from `rng`.
    """
    attrs_list = [s.attributes for s in things]
    out: list[tuple[str, int]] = []
    for seg, t in zip(things, attrs_list):
        assert t is not None
        unique = [a for a in _ATTR_SETS if sum(_same(t, u, a) for u in attrs_list) == 1]
        chosen: list[tuple[tuple[str, ...], str | None]] = [(a, None) for a in unique]
        if not unique:
            valid = [
                (a, d)
                for a in _ATTR_SETS
                for d in DIRECTIONS
                if is_extreme([u for u in attrs_list if _same(t, u, a)], t, d, width, height)
            ]
            chosen = [(a, d) for a, d in valid if not any(d2 == d and set(a2) < set(a) for a2, d2 in valid)]
        for a, d in chosen:
            templates = _PLAIN_TEMPLATES if d is None else _POSITION_TEMPLATES[d]
            text = templates[int(rng.integers(len(templates)))].format(x=_noun_phrase(t, a))
            out.append((text, seg.id))
    return out


# --------------------------------------------------------------------------- viewing
def _palette(n: int) -> np.ndarray:
    # Golden-ratio hue walk: neighbouring ids get very different colours.
    out = np.zeros((n + 1, 3), np.uint8)
    for i in range(1, n + 1):
        hue = (i * 0.618033988749895) % 1.0
        rgb = Image.new("HSV", (1, 1), (int(hue * 255), 200, 255)).convert("RGB").getpixel((0, 0))
        out[i] = rgb
    return out


def render_overlay(image: np.ndarray, segment_map: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """H x W x 3 uint8: `image` tinted by a per-segment colour, segment borders in black.

    `segment_map` is H x W int, 0 = void (left untinted).
    """
    ids = segment_map.astype(np.int64)
    pal = _palette(int(ids.max()) if ids.size else 0).astype(np.float64)
    tint = pal[ids]
    out = image.astype(np.float64)
    m = (ids > 0)[..., None]
    out = np.where(m, out * (1 - alpha) + tint * alpha, out)
    edge = np.zeros(ids.shape, bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    out[edge] = 0
    return _to_uint8(out)


# --------------------------------------------------------------------------- COCO export
def coco_categories(kind: Literal["panoptic", "instances"] = "panoptic") -> list[dict]:
    """COCO category records: id = index in CATEGORIES + 1; instances lists only things."""
    names = CATEGORIES if kind == "panoptic" else THING_CLASSES
    return [
        {"id": i + 1, "name": name, "supercategory": "shape" if name in THING_CLASSES else "background",
         "isthing": int(name in THING_CLASSES)}
        for i, name in enumerate(names)
    ]


def _panoptic_annotation(scene: Scene, image_id: int, name: str) -> dict:
    """The scene's panoptic record: every segment (things carry their phrases)."""
    return {
        "image_id": image_id,
        "file_name": name,
        "segments_info": [
            {"id": s.id, "category_id": s.category_id + 1, "iscrowd": 0, "bbox": list(s.bbox), "area": s.area,
             **({"phrases": scene.phrases_for(s.id)} if s.isthing else {})}
            for s in scene.segments
        ],
    }


def _instance_annotations(scene: Scene, image_id: int, first_id: int) -> list[dict]:
    """One instance record per thing (its visible mask as compressed RLE), ids from `first_id`."""
    from pycocotools import mask as mask_utils

    out = []
    for s in scene.things:
        rle = mask_utils.encode(np.asfortranarray(scene.mask(s.id).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({
            "id": first_id + len(out), "image_id": image_id, "category_id": s.category_id + 1,
            "segmentation": rle, "area": s.area, "bbox": list(s.bbox), "iscrowd": 0,
            "phrases": scene.phrases_for(s.id),
        })
    return out


def write_coco(
    out_dir: str | Path,
    seeds: Iterable[int],
    kind: Literal["panoptic", "instances"] = "panoptic",
    **scene_kwargs,
) -> Path:
    """Write the scenes of `seeds` as a COCO dataset; returns the JSON path.

    Layout: ``images/<seed>.png`` (RGB) and either
    - kind="panoptic": ``panoptic/<seed>.png`` (id = R + 256 G + 256^2 B) and
      ``panoptic.json`` with ``segments_info`` (things and stuff, `isthing` in categories);
    - kind="instances": ``instances.json`` with one annotation per thing, the visible mask
      as compressed RLE (pycocotools), `bbox`, `area`, `iscrowd` 0.
    Image ids are 1..N in seed order (the seed is kept in each image record as "seed").
    Each thing annotation / segment also carries a non-standard "phrases" list (its
    referring phrases), which COCO readers ignore.
    """
    if kind not in ("panoptic", "instances"):
        raise ValueError(f"kind must be 'panoptic' or 'instances', not {kind!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if kind == "panoptic":
        (out / "panoptic").mkdir(exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, seed in enumerate(seeds, start=1):
        scene = generate_scene(seed, **scene_kwargs)
        name = f"{int(seed):012d}.png"
        Image.fromarray(scene.image).save(out / "images" / name)
        images.append({"id": image_id, "file_name": name, "height": scene.height, "width": scene.width, "seed": int(seed)})
        if kind == "panoptic":
            Image.fromarray(scene.panoptic_rgb()).save(out / "panoptic" / name)
            annotations.append(_panoptic_annotation(scene, image_id, name))
        else:
            annotations += _instance_annotations(scene, image_id, first_id=len(annotations) + 1)
    data = {
        "info": {"description": "Shapes World (seem-ray procedural dataset)", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(kind),
    }
    path = out / ("panoptic.json" if kind == "panoptic" else "instances.json")
    path.write_text(json.dumps(data))
    return path
