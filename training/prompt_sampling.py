"""Spatial prompts sampled from ground-truth masks, and the interactive click simulator.

Every sampler takes an ``H x W`` bool mask (True = the object) and an explicit
``numpy.random.Generator`` and returns a prompt from :mod:`model.types` in original image
pixels: ``x`` is the column index, ``y`` the row index, an integer coordinate is the
centre of that pixel. Vertices are whole pixels, so a rasteriser that rounds and one that
truncates draw the same thing.

Positive prompts are made so that their rasterisation (a point as its 3x3 square, a
scribble/stroke as a 1-px polyline, a polygon filled) lies inside the mask; where the
object is thick enough they keep a pixel of slack from its border, because the
predictor rasterises in resized model-input pixels.

The click simulator follows the reference's interactive evaluation (see
:func:`next_click`).
"""
from __future__ import annotations

import math

import numpy as np
from numpy.random import Generator
from PIL import Image, ImageDraw
from scipy.ndimage import distance_transform_edt

from model.types import Box, Point, Polygon, Scribble

# The reference stops refining an object once its IoU reaches this; NoC evaluation
# clicks until the target IoU (0.85 / 0.90) or MAX_CLICKS.
REFERENCE_STOP_IOU = 0.925
MAX_CLICKS = 20


# --------------------------------------------------------------------------- helpers
def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks of one shape; 1.0 when both are empty."""
    a, b = a.astype(bool), b.astype(bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def inner_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each mask pixel to the nearest non-mask pixel (0 outside).

    The image border counts as boundary: the mask is padded by one pixel of background
    before the transform and cropped after, so a pixel on the border has distance 1.
    """
    mask = np.asarray(mask).astype(bool)
    out = np.zeros(mask.shape, dtype=np.float64)
    rows = np.nonzero(mask.any(axis=1))[0]
    if len(rows) == 0:
        return out
    cols = np.nonzero(mask.any(axis=0))[0]
    # Only the object's bounding box matters (everything around it is background), which
    # makes small objects in large images cheap.
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    padded = np.pad(mask[y0:y1, x0:x1], 1, constant_values=False)
    out[y0:y1, x0:x1] = distance_transform_edt(padded)[1:-1, 1:-1]
    return out


def click_square(point: Point, shape: tuple[int, int]) -> np.ndarray:
    """H x W bool: the 3x3 square a click covers (clipped to the image)."""
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    x, y = int(round(point.x)), int(round(point.y))
    out[max(y - 1, 0) : max(y + 2, 0), max(x - 1, 0) : max(x + 2, 0)] = True
    return out


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("mask is empty: nothing to prompt")
    return mask


def _safe_region(mask: np.ndarray, dist: np.ndarray | None = None) -> np.ndarray:
    """Pixels at least 2 px deep (the 8-neighbourhood is inside) when there are any, else
    the mask itself: drawing there leaves slack for resampling to model-input pixels."""
    dist = inner_distance(mask) if dist is None else dist
    deep = dist >= 2.0
    return deep if deep.any() else mask


def _pick(candidates: np.ndarray, rng: Generator) -> tuple[int, int]:
    """A uniformly random True pixel of `candidates`, as (x, y)."""
    ys, xs = np.nonzero(candidates)
    k = int(rng.integers(len(xs)))
    return int(xs[k]), int(ys[k])


def _polyline_raster(path: list[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    img = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if len(path) == 1:
        draw.point(path[0], fill=1)
    else:
        draw.line(path, fill=1, width=1)
    return np.array(img, dtype=bool)


def _polygon_raster(points: list[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    img = Image.new("1", (w, h), 0)
    ImageDraw.Draw(img).polygon(points, fill=1, outline=1)
    return np.array(img, dtype=bool)


def _segment_inside(region: np.ndarray, p: tuple[float, float], q: tuple[float, float]) -> bool:
    """Every pixel the segment p-q passes through (sampled every 1/4 px) is in `region`."""
    h, w = region.shape
    steps = max(1, int(math.ceil(4 * math.hypot(q[0] - p[0], q[1] - p[1]))))
    t = np.linspace(0.0, 1.0, steps + 1)
    xs = np.rint(p[0] + (q[0] - p[0]) * t).astype(np.int64)
    ys = np.rint(p[1] + (q[1] - p[1]) * t).astype(np.int64)
    if xs.min() < 0 or ys.min() < 0 or xs.max() >= w or ys.max() >= h:
        return False
    return bool(region[ys, xs].all())


def _ray_length(region: np.ndarray, x: float, y: float, dx: float, dy: float) -> float:
    """How far from (x, y) one can go along the unit direction (dx, dy) inside `region`."""
    h, w = region.shape
    limit = math.hypot(h, w)
    t = 0.0
    while t < limit:
        nt = t + 0.5
        xi, yi = int(round(x + dx * nt)), int(round(y + dy * nt))
        if not (0 <= xi < w and 0 <= yi < h) or not region[yi, xi]:
            break
        t = nt
    return t


# --------------------------------------------------------------------------- samplers
def sample_point(mask: np.ndarray, rng: Generator, positive: bool = True) -> Point:
    """One click inside the object, uniform over its pixels at least ~2 px from its border.

    Falls back to shallower pixels for thin objects (>= 1.4 px deep, so the 3x3 click stays
    inside when it can, then any mask pixel). Raises ValueError for an empty mask.
    """
    mask = _check_mask(mask)
    dist = inner_distance(mask)
    for depth in (3.0, 2.0, 1.0):
        candidates = dist >= depth
        if candidates.any():
            x, y = _pick(candidates, rng)
            return Point(float(x), float(y), positive)
    raise AssertionError("unreachable: a non-empty mask has pixels at depth >= 1")


def sample_negative_point(mask: np.ndarray, rng: Generator, avoid: np.ndarray | None = None) -> Point:
    """A negative click outside the object (and outside `avoid`, an optional H x W bool).

    Uniform over background pixels whose 3x3 click square stays off the object (and off
    `avoid`) when there are any, else over any background pixel. Raises ValueError when
    the object (plus `avoid`) covers the whole image.
    """
    mask = np.asarray(mask).astype(bool)
    blocked = mask if avoid is None else mask | np.asarray(avoid).astype(bool)
    outside = ~blocked
    if not outside.any():
        raise ValueError("no pixel outside the object to click")
    # Distance to the nearest blocked pixel; the image border is not an obstacle here.
    clear = distance_transform_edt(outside) >= 2.0 if blocked.any() else outside
    candidates = clear if clear.any() else outside
    x, y = _pick(candidates, rng)
    return Point(float(x), float(y), positive=False)


def sample_box(mask: np.ndarray, rng: Generator, jitter: float = 0.0, positive: bool = True) -> Box:
    """The mask's tight box (inclusive pixel corners), each side optionally moved by up to
    `jitter` x the box's width (x sides) / height (y sides), clipped to the image."""
    mask = _check_mask(mask)
    h, w = mask.shape
    ys = np.nonzero(mask.any(axis=1))[0]
    xs = np.nonzero(mask.any(axis=0))[0]
    x0, x1, y0, y1 = float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1])
    if jitter > 0:
        bw, bh = x1 - x0 + 1.0, y1 - y0 + 1.0
        d = rng.uniform(-jitter, jitter, size=4)
        x0, x1 = x0 + d[0] * bw, x1 + d[1] * bw
        y0, y1 = y0 + d[2] * bh, y1 + d[3] * bh
        x0, x1 = sorted((min(max(x0, 0.0), w - 1.0), min(max(x1, 0.0), w - 1.0)))
        y0, y1 = sorted((min(max(y0, 0.0), h - 1.0), min(max(y1, 0.0), h - 1.0)))
    return Box(x0, y0, x1, y1, positive)


def _verified_path(path: list[tuple[int, int]], mask: np.ndarray) -> bool:
    return bool(np.all(mask[_polyline_raster(path, mask.shape)]))


def _fallback_path(mask: np.ndarray, dist: np.ndarray) -> tuple[tuple[float, float], ...]:
    # The deepest pixel as a zero-length stroke: it is drawn as that one pixel.
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return ((float(x), float(y)), (float(x), float(y)))


def sample_stroke(mask: np.ndarray, rng: Generator, positive: bool = True) -> Scribble:
    """A short, nearly straight stroke inside the object (2-3 vertices).

    Picks a deep pixel, the longest of a few random chords through it, and a random
    30-90 % sub-segment of that chord, with its middle nudged sideways by up to a pixel or
    two when that stays inside.
    """
    mask = _check_mask(mask)
    dist = inner_distance(mask)
    safe = _safe_region(mask, dist)
    for _ in range(10):
        x, y = _pick(safe, rng)
        best = None
        for _ in range(6):
            a = rng.uniform(0.0, math.pi)
            dx, dy = math.cos(a), math.sin(a)
            fwd, back = _ray_length(safe, x, y, dx, dy), _ray_length(safe, x, y, -dx, -dy)
            if best is None or fwd + back > best[0]:
                best = (fwd + back, dx, dy, fwd, back)
        length, dx, dy, fwd, back = best
        if length < 2.0:
            continue
        frac = rng.uniform(0.3, 0.9)
        start = -back + rng.uniform(0.0, 1.0 - frac) * length
        end = start + frac * length
        p = (int(round(x + dx * start)), int(round(y + dy * start)))
        q = (int(round(x + dx * end)), int(round(y + dy * end)))
        mid = ((p[0] + q[0]) / 2 - dy * rng.uniform(-2, 2), (p[1] + q[1]) / 2 + dx * rng.uniform(-2, 2))
        m = (int(round(mid[0])), int(round(mid[1])))
        for path in ([p, m, q], [p, q]):
            if all(_segment_inside(safe, a_, b_) for a_, b_ in zip(path, path[1:])) and _verified_path(path, mask):
                return Scribble(tuple((float(u), float(v)) for u, v in path), positive)
    return Scribble(_fallback_path(mask, dist), positive)


def _chaikin(path: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """One round of corner cutting (keeps the end points): a smoother curve."""
    out = [path[0]]
    for (x0, y0), (x1, y1) in zip(path, path[1:]):
        out.append((0.75 * x0 + 0.25 * x1, 0.75 * y0 + 0.25 * y1))
        out.append((0.25 * x0 + 0.75 * x1, 0.25 * y0 + 0.75 * y1))
    out.append(path[-1])
    return out


def sample_scribble(mask: np.ndarray, rng: Generator, positive: bool = True) -> Scribble:
    """A smooth random curve inside the object (a random walk with momentum, smoothed).

    Steps of ~1/6 of the object's size, turning by up to ~35 degrees at each of 3-9 steps
    (more turning when the walk would leave the object); then one Chaikin smoothing round
    if the smooth curve still lies inside. Vertices are whole pixels.
    """
    mask = _check_mask(mask)
    dist = inner_distance(mask)
    safe = _safe_region(mask, dist)
    step = max(2.0, math.sqrt(np.count_nonzero(mask)) / 6.0)
    best: list[tuple[float, float]] = []
    for _ in range(5):
        x, y = _pick(safe, rng)
        heading = rng.uniform(0.0, 2 * math.pi)
        path = [(float(x), float(y))]
        for _ in range(int(rng.integers(3, 10))):
            moved = False
            for tries in range(8):
                # Widen the turn when straight-ish moves keep failing.
                turn = rng.uniform(-0.6, 0.6) * (1 + tries)
                h2 = heading + turn
                nx, ny = path[-1][0] + step * math.cos(h2), path[-1][1] + step * math.sin(h2)
                nxt = (float(round(nx)), float(round(ny)))
                if nxt != path[-1] and _segment_inside(safe, path[-1], nxt):
                    path.append(nxt)
                    heading = h2
                    moved = True
                    break
            if not moved:
                break
        if len(path) > len(best):
            best = path
        if len(best) >= 4:
            break
    if len(best) < 2:
        return Scribble(_fallback_path(mask, dist), positive)
    smooth = [(float(round(u)), float(round(v))) for u, v in _chaikin(best)]
    smooth = [p for i, p in enumerate(smooth) if i == 0 or p != smooth[i - 1]]
    for path in (smooth, best):
        ipath = [(int(u), int(v)) for u, v in path]
        if all(_segment_inside(safe, a, b) for a, b in zip(path, path[1:])) and _verified_path(ipath, mask):
            return Scribble(tuple(path), positive)
    return Scribble(_fallback_path(mask, dist), positive)


def sample_polygon(mask: np.ndarray, rng: Generator, positive: bool = True) -> Polygon:
    """A polygon of 3-9 vertices inside the object, covering a good part of it.

    Star-shaped around a deep pixel c: k directions spread around the circle (each gap
    under 180 degrees, so c stays inside), each vertex at 60-95 % of the way from c to the
    object's edge along its ray. While the filled polygon pokes out of the mask (a
    non-convex object), the vertices are pulled towards c.
    """
    mask = _check_mask(mask)
    dist = inner_distance(mask)
    safe = _safe_region(mask, dist)
    deep = dist >= 0.7 * dist.max()
    cx, cy = _pick(deep & safe if (deep & safe).any() else safe, rng)
    k = int(rng.integers(3, 10))
    base = rng.uniform(0.0, 2 * math.pi)
    spacing = 2 * math.pi / k
    angles = [base + spacing * (i + rng.uniform(-0.2, 0.2)) for i in range(k)]
    radii = []
    for a in angles:
        reach = _ray_length(safe, cx, cy, math.cos(a), math.sin(a))
        radii.append(reach * rng.uniform(0.6, 0.95))
    scale = 1.0
    for _ in range(12):
        pts: list[tuple[int, int]] = []
        for a, r in zip(angles, radii):
            p = (int(round(cx + scale * r * math.cos(a))), int(round(cy + scale * r * math.sin(a))))
            if not pts or p != pts[-1]:
                pts.append(p)
        if len(set(pts)) >= 3 and np.all(mask[_polygon_raster(pts, mask.shape)]):
            return Polygon(tuple((float(u), float(v)) for u, v in pts), positive)
        scale *= 0.8
    # Last resort: a tiny triangle around the deepest pixel (inside whenever depth >= 2).
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    tri = ((float(x - 1), float(y - 1)), (float(x + 1), float(y - 1)), (float(x), float(y + 1)))
    if dist[y, x] < 2.0:
        tri = ((float(x), float(y)),) * 3
    return Polygon(tri, positive)


# --------------------------------------------------------------------------- click simulator
def next_click(
    gt: np.ndarray,
    pred: np.ndarray,
    clicked: np.ndarray | None = None,
    rng: Generator | None = None,
) -> Point | None:
    """The reference's next simulated click on an interactive prediction.

    `gt`, `pred`: H x W bool; `clicked`: H x W bool union of the 3x3 squares of every click
    so far (see :func:`click_square`), so the same place is never clicked twice.

    Error regions: FN = gt & ~pred & ~clicked, FP = ~gt & pred & ~clicked. The click is
    positive if |FN| > |FP|, else negative, and goes on the pixel of the chosen region
    farthest from its boundary: the maximum of the Euclidean distance transform of the
    region padded by one pixel of background (so the image border counts as boundary),
    then cropped. Ties go to the first pixel in row-major order, as the reference's
    argmax does, or to a random one of them when `rng` is given. Returns None when the
    chosen region is empty (e.g. a perfect prediction).

    The reference stops refining once IoU >= REFERENCE_STOP_IOU (0.925); NoC evaluation
    calls this repeatedly, adding each click's square to `clicked`, until the target IoU
    (0.85 for NoC85, 0.90 for NoC90) or MAX_CLICKS (20) clicks.
    """
    gt = np.asarray(gt).astype(bool)
    pred = np.asarray(pred).astype(bool)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} differ in shape")
    free = np.ones_like(gt) if clicked is None else ~np.asarray(clicked).astype(bool)
    fn = gt & ~pred & free
    fp = ~gt & pred & free
    positive = np.count_nonzero(fn) > np.count_nonzero(fp)
    region = fn if positive else fp
    if not region.any():
        return None
    dist = inner_distance(region)
    best = dist.max()
    if rng is None:
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    else:
        ys, xs = np.nonzero(dist == best)
        k = int(rng.integers(len(xs)))
        y, x = ys[k], xs[k]
    return Point(float(x), float(y), positive=bool(positive))
