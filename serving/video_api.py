"""Video over HTTP: `POST /v1/video/segment` (docs/api.md, "Video").

One request carries a short video (base64, within `limits.max_body_bytes`) and the prompts
of one or more objects, each on the frame where it is defined; the answer has, for every
frame, every object's mask, as `model.video.VideoSession` propagates them (docs/video.md).
The web page plays them over the video.

The work runs in the `Video` deployment: it encodes every frame, so it takes the encoder's
resources (a GPU when the encoder has one), and it scales to zero when unused, so a service
that never sees a video holds no extra model. The ingress only checks the request.
"""
from __future__ import annotations

import base64
import binascii
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator
from ray import serve

from model.prompt_schema import AudioPrompt, Prompt, ReferringPrompt, StrictModel

from .config import Limits, ServeConfig
from .errors import ApiError, as_api_error
from .limits import check_limits, check_vocabulary
from .schemas import SegmentRequest

__all__ = ["VideoObject", "VideoSegmentRequest", "VideoSegmentResponse", "VideoWorker", "video_deployment",
           "video_routes", "MAX_VIDEO_FRAMES"]

log = logging.getLogger("seem.serving")

#: Frames one request may hold: every frame is encoded (seem-tiny ~0.1 s each on 2 CPU cores),
#: so this bounds the work of one request as max_body_bytes bounds its bytes.
MAX_VIDEO_FRAMES = 300
#: A whole video is one request: far longer than an image round.
VIDEO_TIMEOUT_S = 600.0


# --------------------------------------------------------------------------- schema
class VideoObject(StrictModel):
    """One object: its id and the prompts that define it on `frame` (or the frame shown at
    `time_s` seconds, as a browser's video.currentTime says; default frame 0)."""

    object_id: Annotated[int, Field(strict=True, ge=1)]
    frame: Annotated[int, Field(strict=True, ge=0)] | None = None
    time_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    prompts: Annotated[list[Prompt], Field(min_length=1)]

    @model_validator(mode="after")
    def _one_position(self) -> "VideoObject":
        if self.frame is not None and self.time_s is not None:
            raise ValueError("give at most one of frame and time_s")
        return self

    def frame_index(self, fps: float) -> int:
        """The prompted frame: frame k is shown from k / fps seconds on."""
        if self.time_s is None:
            return self.frame or 0
        return int(math.floor(self.time_s * fps + 1e-6))


class VideoSegmentRequest(StrictModel):
    """POST /v1/video/segment: a video and its objects' prompts."""

    video: Annotated[str, Field(min_length=1, description="base64 of a video file (.mp4, .webm, .mov, .avi, .mkv)")]
    objects: Annotated[list[VideoObject], Field(min_length=1)]
    vocabulary: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None


class VideoMask(BaseModel):
    """One object on one frame; `present` False (empty mask, score 0) when it is gone."""

    object_id: int
    present: bool
    rle: dict[str, Any]
    bbox: list[int]
    area: int
    score: float
    label: str | None


class VideoFrameOut(BaseModel):
    index: int
    objects: list[VideoMask]


class VideoSegmentResponse(BaseModel):
    """Every frame's masks, in frame order; frames before an object's prompt lack it."""

    fps: float
    width: int
    height: int
    frames: list[VideoFrameOut]
    timings_ms: dict[str, float]


# --------------------------------------------------------------------------- checks
def check_video_limits(request: VideoSegmentRequest, limits: Limits) -> None:
    """Counts and lengths, as for a segment request per object (ApiError 422)."""
    check_vocabulary(request.vocabulary, limits)
    if len(request.objects) > limits.max_prompts:
        raise ApiError("limit_exceeded", f"{len(request.objects)} objects; the limit is {limits.max_prompts}")
    for i, obj in enumerate(request.objects):
        for prompt in obj.prompts:
            if isinstance(prompt, (AudioPrompt, ReferringPrompt)):
                raise ApiError("invalid_prompt", f"objects[{i}]: {prompt.type} prompts are not supported on video "
                                                 "(send the phrase as text, or a region of the frame)")
        try:
            check_limits(SegmentRequest.model_construct(prompts=obj.prompts, previous_mask=None, vocabulary=None,
                                                        max_masks=1), limits)
        except ApiError as e:
            raise ApiError(e.code, f"objects[{i}]: {e.message}") from None
    ids = [o.object_id for o in request.objects]
    if len(set(ids)) != len(ids):
        raise ApiError("validation_error", "objects: each object_id once (put all of an object's prompts together)")


def video_bytes(request: VideoSegmentRequest) -> bytes:
    try:
        data = base64.b64decode(request.video, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("invalid_video", "video: not base64") from None
    if not data:
        raise ApiError("invalid_video", "video: empty")
    return data


# --------------------------------------------------------------------------- the work
def _open(data: bytes, limits: Limits) -> Any:
    """The video's frame source, its size and length checked against the limits."""
    from model.video_io import VideoDecodeError, open_frames

    try:
        source = open_frames(data, name="video")
    except VideoDecodeError as e:
        raise ApiError("invalid_video", str(e)) from None
    h, w = source.size
    if h * w > limits.max_pixels:
        raise ApiError("too_many_pixels", f"video frames of {w} x {h} = {w * h} pixels; the limit is {limits.max_pixels}")
    if source.num_frames is not None and source.num_frames > MAX_VIDEO_FRAMES:
        raise ApiError("limit_exceeded", f"the video has {source.num_frames} frames; the limit is {MAX_VIDEO_FRAMES}")
    return source


def _bounded(frames: Any) -> Any:
    """The frames, refusing a video whose container did not say how long it is and is too long."""
    for i, frame in enumerate(frames):
        if i >= MAX_VIDEO_FRAMES:
            raise ApiError("limit_exceeded", f"the video has more than {MAX_VIDEO_FRAMES} frames (the limit)")
        yield frame


def _session(predictor: Any, source: Any, request: VideoSegmentRequest) -> Any:
    from model.prompt_json import PromptJsonError, to_prompts
    from model.transforms import PromptError
    from model.video import VideoPredictor

    session = VideoPredictor(predictor).init_session(_bounded(source), vocabulary=request.vocabulary)
    for i, obj in enumerate(request.objects):
        frame = obj.frame_index(source.fps)
        if source.num_frames is not None and frame >= source.num_frames:
            raise ApiError("invalid_prompt", f"objects[{i}] is on frame {frame}; the video has {source.num_frames} frames")
        try:
            prompts, _ = to_prompts(obj.prompts, source.size, {}, None)
            session.add_prompts(frame, obj.object_id, prompts)
        except (PromptJsonError, PromptError) as e:
            raise ApiError("invalid_prompt", f"objects[{i}]: {e}") from None
    return session


def answer_video(predictor: Any, data: bytes, request: VideoSegmentRequest, limits: Limits) -> dict[str, Any]:
    """A VideoSegmentResponse body: every frame's masks as the session propagates them."""
    from model.transforms import PromptError
    from model.video_io import VideoDecodeError

    from .inference import mask_json

    source = _open(data, limits)
    session = _session(predictor, source, request)
    frames: list[dict[str, Any]] = []
    timings = {"encode": 0.0, "decode": 0.0}
    try:
        for frame in session.propagate():
            frames.append({"index": frame.index, "objects": [
                {"object_id": o.object_id, "present": bool(o.present), **mask_json(o)} for o in frame.objects]})
            for key in timings:
                timings[key] += frame.timings_ms.get(key, 0.0)
    except VideoDecodeError as e:
        raise ApiError("invalid_video", str(e)) from None
    except PromptError as e:  # e.g. a prompted frame after the last one, in a video of unknown length
        raise ApiError("invalid_prompt", str(e)) from None
    h, w = source.size
    return {"fps": float(source.fps), "width": int(w), "height": int(h), "frames": frames, "timings_ms": timings}


class VideoWorker:
    """The `Video` deployment: one predictor, one video at a time per replica (a worker thread)."""

    def __init__(self, config: dict[str, Any]) -> None:
        from model.loading import load_predictor

        from .app import _device

        self.config = ServeConfig.model_validate(config)
        self.predictor = load_predictor(self.config.model_spec(_device()))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="video")

    async def segment(self, data: bytes, request: VideoSegmentRequest) -> dict[str, Any] | ApiError:
        import asyncio

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, answer_video, self.predictor, data, request,
                                              self.config.limits)
        except ApiError as e:  # returned, not raised: it reaches the ingress as it is
            return e


def video_deployment(config: ServeConfig, gpus: float) -> Any:
    """The `Video` deployment with the encoder's resources (it encodes every frame), scaled
    to zero when idle."""
    return serve.deployment(VideoWorker, name="Video").options(
        autoscaling_config={"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1,
                            "target_ongoing_requests": 1, "downscale_delay_s": 300},
        max_ongoing_requests=2,
        ray_actor_options={"num_cpus": config.encoder.num_cpus, "num_gpus": gpus},
    )


async def call_video(handle: Any, data: bytes, request: VideoSegmentRequest) -> dict[str, Any]:
    """The ingress side: the Video deployment's answer, or its error as an ApiError."""
    from .api import with_timeout
    from .app import _internal

    try:
        result = await with_timeout(handle.segment.remote(data, request), VIDEO_TIMEOUT_S)
    except ApiError:
        raise
    except Exception as e:
        raise _internal(e, "video") from None
    if isinstance(result, ApiError):
        raise result
    return result


# --------------------------------------------------------------------------- route
def video_routes(reader: Any, backend: Any) -> APIRouter:
    """POST /v1/video/segment on the ingress (`reader`: the app's request reader)."""
    from .api import _INFERENCE_ERRORS

    router = APIRouter(tags=["video"])

    @router.post("/v1/video/segment", response_model=VideoSegmentResponse, responses=_INFERENCE_ERRORS)
    async def post_video_segment(request: Request) -> JSONResponse:
        """Masks of every object on every frame of a short video (body: VideoSegmentRequest)."""
        started = time.perf_counter()
        req: VideoSegmentRequest = await reader.json_request(request, VideoSegmentRequest)
        check_video_limits(req, reader.limits)
        data = video_bytes(req)
        req.video = ""  # the bytes travel once
        body = await backend.video_segment(data, req)
        body["timings_ms"]["total"] = (time.perf_counter() - started) * 1000
        return JSONResponse(body)

    return router
