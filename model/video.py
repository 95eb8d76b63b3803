"""Video object segmentation with SEEM: a prompt on one frame, a mask on every frame.

    video = VideoPredictor(SeemPredictor.from_pretrained("seem-tiny"))
    session = video.init_session(frames)                 # any iterator of H x W x 3 uint8 frames
    session.add_prompts(0, object_id=1, prompts=Prompts(spatial=(Box(10, 20, 80, 90),)))
    for frame in session.propagate():                    # one `VideoFrame` per frame, as decoded
        for obj in frame.objects: obj.mask, obj.score, obj.label

Frames stream: each is encoded once, decoded for every object, then dropped; a session
holds only per-object state (the last mask, its motion), never the video.

How an object is followed (method "track", ours; docs/video.md has the measurements):
1. Motion prior: the object's last whole view, shifted by its smoothed velocity, is where
   it should be now (`_predicted`); partial or merged views move the old view along.
2. Appearance: a colour model learnt on the prompted frame (object vs surroundings) keeps
   the pixels of that region that look like the object (`expected`): an occluder in front
   is not part of it; the click goes to its most object-like deep point.
3. SEEM's interactive path segments from that click with the expected region as its memory
   prompt (the previous mask in, as in a second interactive round).
4. Instance, not class: the answer is cut to a thin neighbourhood of the predicted region and
   to its pieces that touch the expected region and look like the object, so a look-alike
   that merges with the object while they cross cannot carry the track away.
5. Gone: when nothing object-like is where the object should be, the frame reports it absent
   (empty mask, score 0); after a few such frames, or once it leaves the frame, it is gone.
Method "per_frame" is the SEEM authors' demo: every frame segmented independently with the
prompt of the prompted frame.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal

import numpy as np
from scipy import ndimage

from .predictor import SeemPredictor
from .transforms import PromptError
from .types import ImageFeatures, MaskResult, Point, Prompts, Vocabulary

__all__ = ["VideoPredictor", "VideoSession", "VideoFrame", "ObjectMask", "TrackerConfig"]


@dataclass(frozen=True)
class TrackerConfig:
    """method: "track" (motion + appearance + memory, ours) or "per_frame" (the authors').
    neighbourhood: how far (in object radii) the answer may reach beyond the predicted region
    (small: a look-alike merging with the object while they cross adds only a thin rim).
    min_overlap: share of the answer that must lie on the predicted region, else "gone".
    velocity_smoothing: weight of the newest displacement in the running velocity.
    appearance_margin: P(object | colour) above which a pixel looks like the object.
    max_missed: frames an object may stay unseen (hidden) before it is given up as gone.
    whole_view_ratio, whole_view_iou: an answer within this area ratio of the last whole view
    and overlapping the predicted region by this IoU is a whole view.
    ambiguity_candidates, ambiguity_ratio: a phrase is ambiguous on its prompted frame when,
    among its best `ambiguity_candidates` groundings, another instance gets at least
    `ambiguity_ratio` of the chosen instance's probability."""

    method: Literal["track", "per_frame"] = "track"
    neighbourhood: float = 0.2
    min_overlap: float = 0.25
    velocity_smoothing: float = 0.5
    candidates: int = 3
    appearance_margin: float = 0.5
    whole_view_ratio: float = 1.25
    whole_view_iou: float = 0.7
    max_missed: int = 6
    ambiguity_candidates: int = 5
    ambiguity_ratio: float = 0.15


@dataclass(eq=False)
class ObjectMask(MaskResult):
    """One object's mask on one frame (original pixels); `present` False when it is gone.
    `ambiguous`: on its prompted frame, the object's phrase named other instances about as
    well as the chosen one (the frame's `warnings` say which); a click or a box settles it."""

    object_id: int = 0
    present: bool = True
    ambiguous: bool = False


@dataclass(eq=False)
class VideoFrame:
    """Results of one frame: every object known so far, in id order. `image` is the frame
    (for overlays); `timings_ms` split encode and decode; `warnings` say what a user should
    know about this frame's answers (a phrase that named several instances)."""

    index: int
    image: np.ndarray
    objects: list[ObjectMask]
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Track:
    object_id: int
    prompts: Prompts  # the defining prompts (per_frame reuses them on every frame)
    prompt_frame: int
    mask: np.ndarray | None = None  # the last answer
    shape: np.ndarray | None = None  # the last whole view of the object, moved along while it is not seen whole
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    appearance: np.ndarray | None = None  # per colour bin: P(object | colour) on the prompted frame
    threshold: float = 0.0  # similarity to `appearance` above which a pixel looks like the object
    missed: int = 0  # frames in a row the object was not found
    label: str | None = None
    gone: bool = False


_BINS = 16  # colour histogram bins per channel


def _colour_bins(image: np.ndarray) -> np.ndarray:
    """H x W histogram bin of each pixel's RGB colour."""
    q = (image // (256 // _BINS)).astype(np.int64)
    return (q[..., 0] * _BINS + q[..., 1]) * _BINS + q[..., 2]


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _where(mask: np.ndarray) -> str:
    x, y = _centroid(mask)
    return f"({x:.0f}, {y:.0f})"


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """`mask` moved by (dx, dy) pixels; what leaves the frame is lost."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


class VideoPredictor:
    """Video sessions over one `SeemPredictor` (the predictor's weights and settings)."""

    def __init__(self, predictor: SeemPredictor, config: TrackerConfig | None = None) -> None:
        self.predictor = predictor
        self.config = config or TrackerConfig()

    def init_session(self, frames: Iterable[np.ndarray] | None = None, *,
                     vocabulary: Vocabulary | list[str] | None = None) -> "VideoSession":
        """A session over `frames` (consumed lazily by `propagate`), or, without frames, one
        that `track(image)` feeds frame by frame."""
        return VideoSession(self, frames, vocabulary)


class VideoSession:
    """Prompts in, per-frame masks out, over frames that arrive one at a time.

    Prompts may be added for any frame not yet propagated, also between two frames of a
    running `propagate()` (a correction, or a new object appearing). A prompt for a frame
    already passed is refused: the frames are not kept."""

    def __init__(self, video: VideoPredictor, frames: Iterable[np.ndarray] | None,
                 vocabulary: Vocabulary | list[str] | None = None) -> None:
        self.predictor = video.predictor
        self.config = video.config
        self._frames = iter(frames) if frames is not None else None
        self._vocabulary = vocabulary
        self._pending: dict[int, dict[int, Prompts]] = {}
        self._tracks: dict[int, _Track] = {}
        self.next_frame = 0

    # ------------------------------------------------------------------ prompts
    def add_prompts(self, frame_index: int, object_id: int, prompts: Prompts) -> None:
        """Define (or correct) object `object_id` on frame `frame_index` with any image prompt."""
        if not isinstance(prompts, Prompts) or prompts.is_empty:
            raise PromptError("add_prompts needs a non-empty Prompts")
        if frame_index < self.next_frame:
            raise PromptError(f"frame {frame_index} has already been propagated (next frame is {self.next_frame}); "
                              "a streamed video keeps no past frames")
        if isinstance(object_id, bool) or int(object_id) != object_id or object_id < 1:
            raise PromptError(f"object ids are positive integers, got {object_id!r}")
        self._pending.setdefault(frame_index, {})[int(object_id)] = prompts

    @property
    def object_ids(self) -> list[int]:
        return sorted(set(self._tracks) | {o for p in self._pending.values() for o in p})

    # ------------------------------------------------------------------ propagation
    def propagate(self, max_frames: int | None = None) -> Iterator[VideoFrame]:
        """Frame results in order, as frames are decoded. Frames before the first prompt
        come with no objects."""
        if self._frames is None:
            raise PromptError("this session was started without frames: push them with track(image)")
        if not self._pending and not self._tracks:
            raise PromptError("add a prompt before propagating")
        count = 0
        for image in self._frames:
            if max_frames is not None and count >= max_frames:
                break
            yield self.track(np.asarray(image))
            count += 1
        if self._pending and max(self._pending) >= self.next_frame:
            raise PromptError(f"the video ended at frame {self.next_frame - 1}, before the prompted frame "
                              f"{max(self._pending)}")

    def track(self, image: np.ndarray, features: ImageFeatures | None = None) -> VideoFrame:
        """Push the next frame (a live source), optionally with its features already encoded
        by this predictor; returns its results."""
        index = self.next_frame
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"frame {index}: expected H x W x 3 uint8 RGB, got {image.shape} {image.dtype}")
        started = time.perf_counter()
        if features is None:
            # A frame is decoded for its tracked objects' prompts only: the object queries' pass
            # is left to the first call that needs it (object-match labels), not paid per frame.
            features = self.predictor.encode([image], object_pass=False)[0]
        encoded = time.perf_counter()
        new = self._pending.pop(index, {})
        for object_id, prompts in new.items():
            self._tracks[object_id] = _Track(object_id, prompts, index)
        warnings: list[str] = []
        objects = [self._segment(track, image, features, object_id in new, warnings)
                   for object_id, track in sorted(self._tracks.items())]
        self.next_frame += 1
        timings = {"encode": (encoded - started) * 1000, "decode": (time.perf_counter() - encoded) * 1000}
        return VideoFrame(index, image, objects, timings, warnings)

    def _decode(self, features: ImageFeatures, prompts: Prompts, previous: np.ndarray | None = None,
                max_masks: int = 1) -> list[MaskResult]:
        return self.predictor.decode(features, prompts, previous_mask=previous, vocabulary=self._vocabulary,
                                     max_masks=max_masks).masks  # type: ignore[union-attr]

    def _segment(self, track: _Track, image: np.ndarray, features: ImageFeatures, prompted: bool,
                 warnings: list[str]) -> ObjectMask:
        if prompted or self.config.method == "per_frame":
            phrase_only = track.prompts.text is not None and not track.prompts.spatial
            count = self.config.ambiguity_candidates if prompted and phrase_only else 1
            results = self._decode(features, track.prompts, max_masks=count)
            best = results[0]
            if prompted:
                self._start(track, image, best.mask)
                warning = self._ambiguity(track, results)
                if warning:
                    warnings.append(warning)
                answer = self._answer(track, best.mask, best.score, best.label)
                answer.ambiguous = warning is not None
                return answer
            return self._answer(track, best.mask, best.score, best.label)
        if track.gone:
            return self._answer(track, None, 0.0, track.label)
        return self._follow(track, image, features)

    def _ambiguity(self, track: _Track, results: list[MaskResult]) -> str | None:
        """A warning when the phrase grounds to another instance nearly as well as to the chosen
        one (e.g. two look-alikes in view and a qualifier the model does not resolve): the
        track follows the chosen one, and the user is told rather than left to find out."""
        instances: list[list[MaskResult]] = []  # groundings of one thing (IoU > 0.5) together
        for r in results:
            if not r.mask.any():
                continue
            same = next((g for g in instances if _iou(g[0].mask, r.mask) > 0.5), None)
            if same is None:
                instances.append([r])
            else:
                same.append(r)
        if len(instances) < 2 or not results[0].mask.any():
            return None
        mass = [sum(r.score for r in group) for group in instances]
        rivals = [(m, g[0]) for m, g in zip(mass[1:], instances[1:]) if m >= self.config.ambiguity_ratio * mass[0]]
        if not rivals:
            return None
        others = "; ".join(f"the one centred at {_where(r.mask)} (p={m:.2f})" for m, r in rivals)
        return (f"object {track.object_id}, frame {track.prompt_frame}: the phrase {track.prompts.text!r} names "
                f"{len(rivals) + 1} instances about equally: following the one centred at {_where(results[0].mask)} "
                f"(p={mass[0]:.2f}), not {others}; a click or a box on the object says which")

    def _start(self, track: _Track, image: np.ndarray, mask: np.ndarray) -> None:
        track.velocity = np.zeros(2)
        track.gone = not mask.any()
        track.mask = mask
        track.shape = mask
        track.missed = 0
        if mask.any():
            self._learn_appearance(track, image, mask)

    def _answer(self, track: _Track, mask: np.ndarray | None, score: float, label: str | None) -> ObjectMask:
        if label is not None:
            track.label = label
        if mask is None or not mask.any():
            shape = track.mask.shape if track.mask is not None else (0, 0)
            return ObjectMask(np.zeros(shape, bool), 0.0, track.label, object_id=track.object_id, present=False)
        return ObjectMask(mask, float(score), track.label, object_id=track.object_id)

    # ------------------------------------------------------------------ tracking
    def _follow(self, track: _Track, image: np.ndarray, features: ImageFeatures) -> ObjectMask:
        predicted = self._predicted(track)
        if predicted.sum() < 4:
            track.gone = True  # moved out of the frame
            return self._answer(track, None, 0.0, track.label)
        similarity = self._similarity(image, track)
        # Where the object should be AND looks like it: an occluder in front is not the object.
        expected = predicted & (similarity > track.threshold)
        if expected.sum() < 4:
            return self._missed(track, predicted)
        click = self._click(expected, similarity)
        candidates = self._decode(features, Prompts(spatial=(click,)), expected, max_masks=self.config.candidates)
        mask, label = self._choose(candidates, predicted, expected, similarity, track.threshold)
        overlap = (mask & expected).sum() / max(mask.sum(), 1)
        if not mask.any() or overlap < self.config.min_overlap:
            return self._missed(track, predicted)
        self._update_shape(track, mask, predicted)
        track.mask = mask
        track.missed = 0
        # The candidates' own probabilities only rank them against each other; how well the
        # answer sits where the object was expected says how sure the track is.
        agreement = (mask & predicted).sum() / max((mask | predicted).sum(), 1)
        return self._answer(track, mask, float(agreement), label)

    def _update_shape(self, track: _Track, mask: np.ndarray, predicted: np.ndarray) -> None:
        """A mask about as large as the object's last whole view, and of the same outline,
        is a whole view: it becomes the shape, and its displacement updates the velocity.
        Another answer (partly hidden, or merged with a look-alike) moves the old shape along
        instead, so the object's extent and motion survive the occlusion or the crossing."""
        assert track.shape is not None
        ratio = mask.sum() / max(track.shape.sum(), 1)
        dx, dy = np.round(_centroid(mask) - _centroid(track.shape)).astype(int)
        aligned = _shift(track.shape, int(dx), int(dy))
        agreement = (mask & aligned).sum() / max((mask | aligned).sum(), 1)
        # Same size AND same outline: a merged or half-hidden view can match the area by
        # chance, not also the outline.
        same_size = 1 / self.config.whole_view_ratio < ratio < self.config.whole_view_ratio
        if same_size and agreement >= self.config.whole_view_iou:
            a = self.config.velocity_smoothing
            track.velocity = (1 - a) * track.velocity + a * (_centroid(mask) - _centroid(track.shape))
            track.shape = mask
        else:
            track.shape = predicted

    def _missed(self, track: _Track, predicted: np.ndarray) -> ObjectMask:
        """Not seen on this frame (hidden, or gone): report it absent and let the prediction
        coast with the last velocity for a few frames before giving up on it."""
        track.missed += 1
        track.shape = predicted
        if track.missed > self.config.max_missed:
            track.gone = True
        return self._answer(track, None, 0.0, track.label)

    def _predicted(self, track: _Track) -> np.ndarray:
        """The object's shape moved by its velocity: where it should be on this frame."""
        assert track.shape is not None
        dx, dy = np.round(track.velocity).astype(int)
        return _shift(track.shape, int(dx), int(dy))

    def _choose(self, candidates: list[MaskResult], predicted: np.ndarray, expected: np.ndarray,
                similarity: np.ndarray, threshold: float) -> tuple[np.ndarray, str | None]:
        """The candidate agreeing best with the expected region, cut to the prediction's
        neighbourhood, to the pieces that touch the expected region (a look-alike merged into
        the answer stays out) and that look like the object."""
        radius = max(2, int(round(self.config.neighbourhood * np.sqrt(predicted.sum() / np.pi))))
        near = ndimage.binary_dilation(predicted, iterations=radius)
        best, best_iou, best_mask = candidates[0], -1.0, np.zeros_like(predicted)
        for c in candidates:
            m = c.mask & near
            pieces, n = ndimage.label(m)
            keep = [k for k in np.unique(pieces[m & expected]) if k > 0
                    and similarity[pieces == k].mean() > threshold]
            m = np.isin(pieces, keep)
            iou = (m & expected).sum() / max((m | expected).sum(), 1)
            if iou > best_iou:
                best, best_iou, best_mask = c, iou, m
        return best_mask, best.label

    # ------------------------------------------------------------------ appearance
    def _similarity(self, image: np.ndarray, track: _Track) -> np.ndarray:
        """Per pixel, how much more its colour belongs to the object than to its surroundings
        on the prompted frame (0..1). Why colour and not the pixel decoder's features: those
        are trained to tell instances apart, so two look-alikes swap their embeddings as
        they move (measured: the prompted twin's similarity fell from 0.98 to 0.40 while the
        other's rose to 0.98), whereas the colours of a thing stay its own."""
        assert track.appearance is not None
        return track.appearance[_colour_bins(image)]

    def _learn_appearance(self, track: _Track, image: np.ndarray, mask: np.ndarray) -> None:
        """Colour histograms of the object and of a ring around it (as wide as its radius):
        their ratio is the object's colour likelihood, as in mean-shift trackers."""
        bins = _colour_bins(image)
        radius = max(2, int(np.sqrt(mask.sum() / np.pi)))
        ring = ndimage.binary_dilation(mask, iterations=radius) & ~mask
        inside = np.bincount(bins[mask], minlength=_BINS ** 3) / max(mask.sum(), 1)
        outside = np.bincount(bins[ring], minlength=_BINS ** 3) / max(ring.sum(), 1)
        track.appearance = (inside / (inside + outside + 1e-6)).astype(np.float32)
        track.threshold = self.config.appearance_margin

    def _click(self, expected: np.ndarray, similarity: np.ndarray) -> Point:
        """The pixel of the expected region deep inside it that looks most like the object."""
        depth = ndimage.distance_transform_edt(np.pad(expected, 1))[1:-1, 1:-1]
        score = np.where(expected, 0.5 * depth / max(depth.max(), 1.0) + similarity, -np.inf)
        y, x = np.unravel_index(int(np.argmax(score)), score.shape)
        return Point(float(x), float(y))
