"""Prompt samplers and the interactive click simulator."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model.types import Box, Point, Polygon, Scribble
from training import prompt_sampling as ps
from training.shapes_world import generate_scene


# --------------------------------------------------------------------------- a local rasteriser
def rasterize(prompt, shape: tuple[int, int]) -> np.ndarray:
    """H x W bool pixels of a prompt: point = 3x3 square, box = filled rectangle,
    scribble = 1-px polyline, polygon = filled polygon (PIL)."""
    h, w = shape
    if isinstance(prompt, Point):
        out = np.zeros(shape, bool)
        x, y = int(round(prompt.x)), int(round(prompt.y))
        out[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = True
        return out
    img = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if isinstance(prompt, Box):
        draw.rectangle([prompt.x0, prompt.y0, prompt.x1, prompt.y1], fill=1)
    elif isinstance(prompt, Scribble):
        pts = [(round(x), round(y)) for x, y in prompt.path]
        if len(pts) == 1:
            draw.point(pts[0], fill=1)
        else:
            draw.line(pts, fill=1, width=1)
    elif isinstance(prompt, Polygon):
        draw.polygon([(round(x), round(y)) for x, y in prompt.points], fill=1)
    else:
        raise TypeError(type(prompt))
    return np.array(img, dtype=bool)


def disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _masks() -> list[np.ndarray]:
    """Scene masks (all thing shapes, occluded ones, stuff) plus awkward synthetic ones."""
    out = []
    for seed in range(12):
        s = generate_scene(seed)
        out += [s.mask(g.id) for g in s.segments]
    h, w = 80, 100
    out.append(disc(h, w, 50, 40, 25))
    out.append(disc(h, w, 50, 40, 25) & ~disc(h, w, 50, 40, 15))  # ring
    bar = np.zeros((h, w), bool)
    bar[30:33, 10:90] = True  # 3 px thin bar
    out.append(bar)
    ell = np.zeros((h, w), bool)
    ell[10:70, 10:20] = True
    ell[60:70, 10:80] = True  # L shape
    out.append(ell)
    one = np.zeros((h, w), bool)
    one[5, 7] = True  # a single pixel
    out.append(one)
    edge = np.zeros((h, w), bool)
    edge[:, :6] = True  # touches the image border
    out.append(edge)
    return out


MASKS = _masks()


@pytest.mark.parametrize("sampler", [ps.sample_point, ps.sample_stroke, ps.sample_scribble, ps.sample_polygon])
def test_positive_prompts_lie_inside_the_mask(sampler) -> None:
    rng = np.random.Generator(np.random.PCG64(1))
    for m in MASKS:
        for _ in range(3):
            p = sampler(m, rng)
            assert p.positive
            r = rasterize(p, m.shape)
            assert r.any()
            if isinstance(p, Point) and ps.inner_distance(m).max() < 2:
                # Too thin for a 3x3 click: at least its centre is on the object.
                assert m[int(p.y), int(p.x)]
            else:
                assert m[r].all(), (sampler.__name__, p)


def test_point_keeps_off_the_border() -> None:
    m = disc(60, 60, 30, 30, 15)
    rng = np.random.Generator(np.random.PCG64(2))
    depth = ps.inner_distance(m)
    pts = [ps.sample_point(m, rng) for _ in range(200)]
    assert all(depth[int(p.y), int(p.x)] >= 3 for p in pts)
    # Roughly uniform: clicks spread over the disc, not stuck in one spot.
    assert len({(p.x, p.y) for p in pts}) > 100


def test_shapes_of_prompts() -> None:
    rng = np.random.Generator(np.random.PCG64(3))
    m = disc(100, 120, 60, 50, 35)
    for _ in range(30):
        poly = ps.sample_polygon(m, rng)
        assert 3 <= len(poly.points) <= 9
        stroke = ps.sample_stroke(m, rng)
        assert 2 <= len(stroke.path) <= 3
        (x0, y0), (x1, y1) = stroke.path[0], stroke.path[-1]
        assert np.hypot(x1 - x0, y1 - y0) >= 5  # a stroke, not a dot
        scribble = ps.sample_scribble(m, rng)
        assert len(scribble.path) >= 3
        for p in (poly.points, stroke.path, scribble.path):
            assert all(float(v).is_integer() for xy in p for v in xy)
    # Polygons cover a good part of a convex object on average.
    cover = np.mean([rasterize(ps.sample_polygon(m, rng), m.shape).sum() / m.sum() for _ in range(30)])
    assert cover > 0.3


def test_box() -> None:
    rng = np.random.Generator(np.random.PCG64(4))
    for m in MASKS:
        b = ps.sample_box(m, rng)
        ys, xs = np.nonzero(m)
        assert (b.x0, b.y0, b.x1, b.y1) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert rasterize(b, m.shape)[m].all()
        j = ps.sample_box(m, rng, jitter=0.2)
        h, w = m.shape
        assert 0 <= j.x0 <= j.x1 <= w - 1 and 0 <= j.y0 <= j.y1 <= h - 1
    m = disc(100, 100, 50, 50, 20)
    boxes = [ps.sample_box(m, rng, jitter=0.1) for _ in range(20)]
    assert len({(b.x0, b.y0, b.x1, b.y1) for b in boxes}) == 20
    assert all(abs(b.x0 - 30) <= 0.1 * 41 + 1e-9 for b in boxes)


def test_negative_points_lie_outside() -> None:
    rng = np.random.Generator(np.random.PCG64(5))
    for m in MASKS:
        if m.all():
            continue
        for _ in range(3):
            p = ps.sample_negative_point(m, rng)
            assert not p.positive
            assert not (rasterize(p, m.shape) & m).any()
    m = disc(50, 50, 25, 25, 10)
    avoid = np.zeros_like(m)
    avoid[:, :25] = True
    for _ in range(20):
        p = ps.sample_negative_point(m, rng, avoid=avoid)
        assert not m[int(p.y), int(p.x)] and not avoid[int(p.y), int(p.x)]
    with pytest.raises(ValueError):
        ps.sample_negative_point(np.ones((5, 5), bool), rng)
    with pytest.raises(ValueError):
        ps.sample_point(np.zeros((5, 5), bool), rng)


def test_samplers_are_deterministic_given_the_generator() -> None:
    m = MASKS[0]
    for f in (ps.sample_point, ps.sample_stroke, ps.sample_scribble, ps.sample_polygon):
        a = f(m, np.random.Generator(np.random.PCG64(9)))
        b = f(m, np.random.Generator(np.random.PCG64(9)))
        assert a == b


# --------------------------------------------------------------------------- click simulator
def test_iou() -> None:
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert ps.iou(a, b) == 1.0
    a[0, :2] = True
    b[0, 1:3] = True
    assert ps.iou(a, b) == pytest.approx(1 / 3)
    assert ps.iou(a, a) == 1.0


def test_click_on_perfect_prediction_is_none() -> None:
    gt = disc(40, 50, 20, 20, 8)
    assert ps.next_click(gt, gt.copy(), np.zeros_like(gt)) is None
    assert ps.next_click(gt, gt.copy(), None) is None


def test_first_click_is_positive_at_the_centre() -> None:
    gt = disc(61, 81, 40, 30, 12)
    p = ps.next_click(gt, np.zeros_like(gt), np.zeros_like(gt))
    assert p == Point(40.0, 30.0, True)
    # A square object: the click lands at its centre too.
    sq = np.zeros((30, 30), bool)
    sq[5:16, 10:21] = True
    assert ps.next_click(sq, np.zeros_like(sq)) == Point(15.0, 10.0, True)


def test_image_border_counts_as_boundary() -> None:
    # An object filling the left part of the image: the click is not on the border column.
    gt = np.zeros((21, 40), bool)
    gt[:, :11] = True
    p = ps.next_click(gt, np.zeros_like(gt))
    assert p is not None and p.x == 5  # not x == 0, as it would be with no padding
    assert ps.inner_distance(gt)[0, 0] == 1.0


def test_superset_prediction_gets_a_negative_click_in_the_false_positive() -> None:
    gt = disc(60, 60, 30, 30, 10)
    pred = disc(60, 60, 30, 30, 22)
    p = ps.next_click(gt, pred, np.zeros_like(gt))
    assert p is not None and not p.positive
    assert pred[int(p.y), int(p.x)] and not gt[int(p.y), int(p.x)]
    # The farthest point of the annulus from its edges: radius ~16.
    assert abs(np.hypot(p.x - 30, p.y - 30) - 16) <= 1.5


def test_clicked_pixels_are_not_clicked_again() -> None:
    gt = disc(61, 61, 30, 30, 12)
    pred = np.zeros_like(gt)
    first = ps.next_click(gt, pred)
    clicked = ps.click_square(first, gt.shape)
    assert clicked.sum() == 9 and clicked[int(first.y), int(first.x)]
    second = ps.next_click(gt, pred, clicked)
    assert second is not None and second.positive and not clicked[int(second.y), int(second.x)]
    # Everything wrong already clicked: nothing left to click.
    assert ps.next_click(gt, pred, gt.copy()) is None


def test_ties_with_a_generator_stay_among_the_maxima() -> None:
    gt = np.zeros((10, 30), bool)
    gt[2:7, 2:28] = True  # a bar: its middle row has many maximal pixels
    dist = ps.inner_distance(gt)
    seen = set()
    for seed in range(20):
        p = ps.next_click(gt, np.zeros_like(gt), rng=np.random.Generator(np.random.PCG64(seed)))
        assert dist[int(p.y), int(p.x)] == dist.max()
        seen.add((p.x, p.y))
    assert len(seen) > 1
    # Without a generator the first maximum in row-major order, like the reference.
    p = ps.next_click(gt, np.zeros_like(gt))
    ys, xs = np.nonzero(dist == dist.max())
    assert (p.x, p.y) == (xs[0], ys[0])


def test_simulated_session_converges() -> None:
    """A toy 'model' that fills a disc around positive clicks and erases around negative
    ones reaches the reference's stop IoU within MAX_CLICKS."""
    s = generate_scene(7)
    gt = s.mask(s.things[0].id)
    h, w = gt.shape
    pred = np.zeros_like(gt)
    clicked = np.zeros_like(gt)
    for n in range(1, ps.MAX_CLICKS + 1):
        p = ps.next_click(gt, pred, clicked)
        if p is None:
            break
        clicked |= ps.click_square(p, gt.shape)
        blob = disc(h, w, p.x, p.y, 6)
        pred = (pred | (blob & gt)) if p.positive else (pred & ~blob)
        if ps.iou(gt, pred) >= ps.REFERENCE_STOP_IOU:
            break
    assert ps.iou(gt, pred) >= ps.REFERENCE_STOP_IOU or n == ps.MAX_CLICKS
