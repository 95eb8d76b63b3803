"""Moving Shapes World: short videos of Shapes World things in motion, with per-frame truth.

A sequence is a pure function of its seed (and kind). One thing is the *target* (object 1,
fully visible on frame 0, where it is prompted); the others move too. Every sequence has
motion; its `kind` adds one difficulty:

- "motion":    the target and one or two distractors glide at a few px per frame;
- "scale":     the target grows or shrinks by up to 1.7x over the sequence;
- "occlusion": a thing of another colour passes in front of the target (about half hidden at most);
- "crossing":  a look-alike (same shape and colour, another instance) enters the frame after
               the prompted frame 0 and crosses the target's path, in front of or behind
               it: the tracker must keep the instance;
- "exit":      the target leaves the frame for the last frames (truth: empty masks).

"crossing_in_view" (not in the default mix; the crossing set of the first identity table)
is a crossing whose look-alike is already in view on frame 0, off to one side. A prompt
on frame 0 that names the target by class (a phrase) then names both things, and which
one is meant rests on a position word ("the star on the left"), which seem-tiny's
grounding resolves no better than a coin toss; referring-video benchmarks give an
expression that identifies the target on the annotated frame, and so does "crossing".

Rendering reuses Shapes World's exact rasteriser and textures (a static background, the
things composited with their coverage in drawing order); the truth is what is visible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import numpy as np
from numpy.random import Generator

from model.types import Box, Point

from .shapes_world import (COLOR_RGB, COLORS, SIZE_RANGES, THING_CLASSES, Segment, ThingAttributes, _ROTATION_RANGE,
                           _SS, _background_layout, _rasterize_local, _rng, _texture, _to_uint8, make_phrases)

Kind = Literal["motion", "scale", "occlusion", "crossing", "exit", "crossing_in_view"]
KINDS: tuple[str, ...] = ("motion", "scale", "occlusion", "crossing", "exit")  # the default mix, in turn
ALL_KINDS: tuple[str, ...] = (*KINDS, "crossing_in_view")
CROSSING_KINDS: tuple[str, ...] = ("crossing", "crossing_in_view")
DEFAULT_SIZE = (160, 224)
DEFAULT_FRAMES = 16
# Held-out video seeds live in their own range, apart from every image split.
_VIDEO_BASE = {"test": 3 << 40, "val": 5 << 40}
_STREAM_MOTION = 7


def video_seeds(split: Literal["test", "val"], n: int, start: int = 0) -> list[int]:
    return [_VIDEO_BASE[split] + start + i for i in range(n)]


@dataclass
class _Mover:
    shape: str
    color: str
    rgb: tuple[int, int, int]
    radius: float
    rotation: float
    start: tuple[float, float]  # centre (x, y) on frame 0
    velocity: tuple[float, float]  # px per frame
    scale_end: float = 1.0  # radius multiplier on the last frame

    def at(self, t: int, frames: int) -> tuple[float, float, float]:
        """(cx, cy, radius) on frame t."""
        f = t / max(frames - 1, 1)
        return (self.start[0] + self.velocity[0] * t, self.start[1] + self.velocity[1] * t,
                self.radius * (1.0 + (self.scale_end - 1.0) * f))


@dataclass(eq=False)
class Sequence:
    """Frames (T x H x W x 3 uint8), `visible` truth (T x N x H x W bool, object i+1 = index i),
    the target's look-alike index (crossing sequences) and frame-0 prompts for the target."""

    seed: int
    kind: str
    frames: np.ndarray
    visible: np.ndarray
    lookalike: int | None
    phrase: str | None
    attributes: list[ThingAttributes]

    @property
    def target(self) -> np.ndarray:
        return self.visible[:, 0]

    def box(self, t: int = 0) -> Box:
        ys, xs = np.nonzero(self.target[t])
        return Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))

    def click(self, t: int = 0) -> Point:
        """The target pixel farthest from its border (where a person would click)."""
        from scipy import ndimage

        dist = ndimage.distance_transform_edt(np.pad(self.target[t], 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return Point(float(x), float(y))


def _random_mover(rng: Generator, side: int, *, shape: str | None = None, color: str | None = None,
                  size: str | None = None) -> _Mover:
    shape = shape or THING_CLASSES[int(rng.integers(len(THING_CLASSES)))]
    color = color or COLORS[int(rng.integers(len(COLORS)))]
    size = size or ("large" if rng.random() < 0.6 else "small")
    lo, hi = SIZE_RANGES[size]
    rlo, rhi = _ROTATION_RANGE[shape]
    jitter = rng.integers(-8, 9, size=3)
    rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOR_RGB[color], jitter))
    return _Mover(shape, color, rgb, (lo + (hi - lo) * rng.random()) * side,  # type: ignore[arg-type]
                  rlo + (rhi - rlo) * rng.random(), (0.0, 0.0), (0.0, 0.0))


def _speed(rng: Generator, lo: float = 1.5, hi: float = 4.0) -> tuple[float, float]:
    angle = rng.random() * 2 * np.pi
    speed = lo + (hi - lo) * rng.random()
    return (speed * float(np.cos(angle)), speed * float(np.sin(angle)))


def _plan(kind: str, rng: Generator, h: int, w: int, frames: int) -> tuple[list[_Mover], int | None]:
    """Movers in drawing order (the target is index 0 of the returned list's *objects*;
    drawing order is handled by `_draw_order`) and the look-alike's index."""
    side = min(h, w)
    target = _random_mover(rng, side, size="large")
    r = target.radius
    others = [c for c in COLORS if c != target.color]
    pick = lambda: others[int(rng.integers(len(others)))]  # noqa: E731
    movers = [target]
    lookalike = None
    if kind == "exit":
        target.start = (w / 2 + (rng.random() - 0.5) * w * 0.2, h / 2 + (rng.random() - 0.5) * h * 0.2)
        direction = rng.integers(4)
        far = (w / 2 + 2 * r, h / 2 + 2 * r)  # from the middle to wholly outside by the 3/4 mark
        steps = 0.75 * frames
        velocity = [(far[0] / steps, 0.0), (-far[0] / steps, 0.0), (0.0, far[1] / steps), (0.0, -far[1] / steps)]
        target.velocity = velocity[int(direction)]
    else:
        target.start = (r + 4 + rng.random() * (w - 2 * r - 8), r + 4 + rng.random() * (h - 2 * r - 8))
        end = (target.start[0] + rng.uniform(-0.3, 0.3) * w, target.start[1] + rng.uniform(-0.3, 0.3) * h)
        end = (float(np.clip(end[0], r, w - r)), float(np.clip(end[1], r, h - r)))
        target.velocity = ((end[0] - target.start[0]) / (frames - 1), (end[1] - target.start[1]) / (frames - 1))
    if kind == "scale":
        target.scale_end = float(rng.choice([rng.uniform(0.6, 0.8), rng.uniform(1.3, 1.7)]))
    if kind == "crossing":
        movers.append(_entering_twin(rng, target, side, w, h, frames))
        lookalike = 1
    if kind in ("occlusion", "crossing_in_view"):
        twin = kind == "crossing_in_view"
        movers.append(_passing_mover(rng, target, twin, side, frames, pick))
        lookalike = 1 if twin else None
    for _ in range(int(rng.integers(1, 3))):  # distractors of other colours, slow
        d = _random_mover(rng, side, color=pick())
        d.start = (d.radius + rng.random() * (w - 2 * d.radius), d.radius + rng.random() * (h - 2 * d.radius))
        d.velocity = _speed(rng, 0.5, 2.0)
        movers.append(d)
    return movers, lookalike


def _passing_mover(rng: Generator, target: _Mover, twin: bool, side: int, frames: int,
                   pick: Callable[[], str]) -> _Mover:
    """A mover that passes the target's centre at the middle frame, off to one side: a
    look-alike (`twin`) close enough to merge with it, else an occluder of another colour
    (`pick`) placed so as to hide about half of it at most."""
    r, mid = target.radius, frames // 2
    other = _random_mover(rng, side, shape=target.shape if twin else None,
                          color=target.color if twin else pick(), size="large" if twin else None)
    if twin:
        other.radius = target.radius * rng.uniform(0.85, 1.15)
    v = _speed(rng, 3.0, 5.0)
    norm = max(np.hypot(*v), 1e-6)
    if norm * mid < 2.2 * (r + other.radius):  # start clear of the target on frame 0
        v = (v[0] / norm * 2.2 * (r + other.radius) / mid, v[1] / norm * 2.2 * (r + other.radius) / mid)
        norm = np.hypot(*v)
    side_off = (0.3 if twin else 0.4) * (r + other.radius) * (1 if rng.random() < 0.5 else -1)
    centre = target.at(mid, frames)[:2]
    meet = (centre[0] - v[1] / norm * side_off, centre[1] + v[0] / norm * side_off)
    other.velocity = v
    other.start = (meet[0] - v[0] * mid, meet[1] - v[1] * mid)
    return other


def _entering_twin(rng: Generator, target: _Mover, side: int, w: int, h: int, frames: int) -> _Mover:
    """A look-alike wholly outside the frame on frame 0 that enters through the frame edge
    nearest to the target's position at 60% of the sequence and passes it there, off to one
    side (close enough to merge with it), at >= 3 px per frame."""
    twin = _random_mover(rng, side, shape=target.shape, color=target.color, size="large")
    twin.radius = target.radius * rng.uniform(0.85, 1.15)
    meet_t = max(1, round(0.6 * (frames - 1)))
    cx, cy = target.at(meet_t, frames)[:2]
    # Inward direction of the nearest edge (left, right, top, bottom), turned by up to 30 degrees.
    inward = [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)][int(np.argmin([cx, w - cx, cy, h - cy]))]
    turn = rng.uniform(-np.pi / 6, np.pi / 6)
    dx = inward[0] * np.cos(turn) - inward[1] * np.sin(turn)
    dy = inward[0] * np.sin(turn) + inward[1] * np.cos(turn)
    side_off = 0.3 * (target.radius + twin.radius) * (1 if rng.random() < 0.5 else -1)
    meet = (cx - dy * side_off, cy + dx * side_off)
    # Back from the meeting point until the twin (its rasterised extent is within 1.5 radii)
    # is wholly beyond the edge it comes through.
    margin = 1.5 * twin.radius + 2
    back = min(_distance_out(meet[0], dx, w, margin), _distance_out(meet[1], dy, h, margin))
    speed = max(back / meet_t, 3.0)
    twin.velocity = (dx * speed, dy * speed)
    twin.start = (meet[0] - dx * speed * meet_t, meet[1] - dy * speed * meet_t)
    return twin


def _distance_out(x: float, d: float, size: float, margin: float) -> float:
    """How far to go back from coordinate x against direction component d until `margin`
    beyond the frame's edge on that axis (inf when d is 0)."""
    if d > 0:
        return (x + margin) / d
    if d < 0:
        return (size - x + margin) / -d
    return float("inf")


def _draw_order(kind: str, n: int, rng: Generator) -> list[int]:
    """Indices of movers back to front: an occluder in front of the target; a look-alike in
    front or behind at random; slow distractors at the back."""
    if kind == "occlusion":
        return list(range(2, n)) + [0, 1]
    if kind in CROSSING_KINDS:
        pair = [0, 1] if rng.random() < 0.5 else [1, 0]
        return list(range(2, n)) + pair
    return list(range(1, n)) + [0]


def _render_frame(background: np.ndarray, movers: list[_Mover], order: list[int], t: int,
                  frames: int) -> tuple[np.ndarray, np.ndarray]:
    """One frame and its owner map (mover index or -1)."""
    h, w = background.shape[:2]
    image = background.copy()
    owner = np.full((h, w), -1, np.int32)
    full = _SS * _SS
    for i in order:
        m = movers[i]
        cx, cy, radius = m.at(t, frames)
        coverage, b = _rasterize_local(m.shape, radius, m.rotation)
        x0, y0 = int(round(cx)) - b, int(round(cy)) - b
        n = coverage.shape[0]
        wy0, wx0, wy1, wx1 = max(y0, 0), max(x0, 0), min(y0 + n, h), min(x0 + n, w)
        if wy1 <= wy0 or wx1 <= wx0:
            continue
        cov = coverage[wy0 - y0:wy1 - y0, wx0 - x0:wx1 - x0].astype(np.int32)
        win = image[wy0:wy1, wx0:wx1]
        win[...] = ((win.astype(np.int32) * (full - cov[..., None]) + np.array(m.rgb, np.int32) * cov[..., None]
                     + full // 2) // full).astype(np.uint8)
        owner[wy0:wy1, wx0:wx1][cov >= full // 2] = i
    return image, owner


def _background(seed: int, h: int, w: int, rng: Generator) -> np.ndarray:
    _, region, names = _background_layout(h, w, rng)
    tex_rng = _rng(seed, 1)
    image = np.zeros((h, w, 3), np.uint8)
    for k, name in enumerate(names):
        rows = np.nonzero((region == k).any(axis=1))[0]
        if len(rows):
            r0, r1 = int(rows[0]), int(rows[-1]) + 1
            np.copyto(image[r0:r1], _to_uint8(_texture(name, h, w, r0, r1, tex_rng)), where=(region[r0:r1] == k)[..., None])
    return image


def _phrase(movers: list[_Mover], visible0: np.ndarray, h: int, w: int, rng: Generator) -> str | None:
    """A Shapes World referring phrase naming the target on frame 0 (None when no phrase can)."""
    segments = []
    for i, m in enumerate(movers):
        area = int(visible0[i].sum())
        if area == 0:
            continue
        size = "large" if m.radius >= SIZE_RANGES["large"][0] * min(h, w) else "small"
        attrs = ThingAttributes(m.shape, m.color, size, m.at(0, 2)[:2], m.radius, m.rotation, m.rgb, area)
        segments.append(Segment(i + 1, m.shape, THING_CLASSES.index(m.shape), True, area, (0, 0, 0, 0), attrs))
    phrases = [text for text, sid in make_phrases(segments, w, h, rng) if sid == 1]
    return min(phrases, key=len) if phrases else None


def generate_sequence(seed: int, kind: str | None = None, *, frames: int = DEFAULT_FRAMES,
                      size: tuple[int, int] = DEFAULT_SIZE) -> Sequence:
    """The sequence of `seed` (kind drawn from the seed unless given). Same arguments, same bytes."""
    rng = _rng(seed, _STREAM_MOTION)
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown sequence kind {kind!r} (one of {', '.join(ALL_KINDS)})")
    h, w = size
    for _ in range(50):  # redraw until the target is whole and unhidden on frame 0
        movers, lookalike = _plan(kind, rng, h, w, frames)
        order = _draw_order(kind, len(movers), rng)
        background = _background(seed, h, w, rng)
        image0, owner0 = _render_frame(background, movers, order, 0, frames)
        alone = _render_frame(background, movers, [0], 0, frames)[1] == 0
        if alone.sum() > 0 and (owner0 == 0).sum() == alone.sum() and not _touches_edge(alone):
            break
    images, visible = [], []
    for t in range(frames):
        image, owner = (image0, owner0) if t == 0 else _render_frame(background, movers, order, t, frames)
        images.append(image)
        visible.append(np.stack([owner == i for i in range(len(movers))]))
    vis = np.stack(visible)
    phrase = _phrase(movers, vis[0], h, w, _rng(seed, 2))
    attributes = [ThingAttributes(m.shape, m.color, "large", m.start, m.radius, m.rotation, m.rgb, 0) for m in movers]
    return Sequence(seed, kind, np.stack(images), vis, lookalike, phrase, attributes)


def _touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def generate_sequences(seeds: list[int], kinds: tuple[str, ...] | None = None, **kwargs) -> Iterator[Sequence]:
    """Lazily the sequences of `seeds`; with `kinds`, seed i gets kinds[i % len(kinds)]."""
    for i, seed in enumerate(seeds):
        yield generate_sequence(seed, kinds[i % len(kinds)] if kinds else None, **kwargs)
