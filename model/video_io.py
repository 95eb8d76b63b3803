"""Video in and out, frame by frame: PyAV (FFmpeg's libraries, bundled in the `av` wheel).

Why PyAV: its wheel carries FFmpeg with H.264 (libx264) and VP8/VP9/AV1 decoders, so no
system ffmpeg is needed and the same code decodes and encodes on every platform the wheel
exists for. Ray Data's `read_videos` needs decord, which ships x86-only wheels and is no
longer maintained; OpenCV would also work but its wheels bring Qt/GUI baggage and cannot
write browser-playable H.264. Frames are decoded one at a time: a long video never sits
in memory.

Sources (`open_frames`): a video file (.mp4 .webm .mov .avi .mkv ...), or a folder of
frame images read in name order (digits compared as numbers, so frame_2 < frame_10).
Writers: `OverlayWriter` (H.264, yuv420p, the source's size and frame rate: what every
browser plays) and `write_palette_png` (DAVIS-style indexed PNG, 0 = background).
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image

from .image_io import IMAGE_EXTENSIONS, ImageDecodeError, decode_image

__all__ = ["VideoDecodeError", "VIDEO_EXTENSIONS", "FrameSource", "open_frames", "is_video_name",
           "OverlayWriter", "davis_palette", "write_palette_png", "frame_names"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".webm", ".mov", ".avi", ".mkv"})
DEFAULT_FPS = 24.0  # a folder of frames has no rate of its own


class VideoDecodeError(ValueError):
    """The video cannot be read: not a video, no video stream, corrupt or truncated data."""


def is_video_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_names(folder: str) -> list[str]:
    """Image files of a folder in frame order (name order, numbers compared as numbers)."""
    names = [n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(names, key=_natural_key)


@dataclass
class FrameSource:
    """Frames of one video as they are decoded. `num_frames` is the container's count
    (None when it does not say); `fps` the average frame rate; size is (height, width)."""

    name: str
    fps: float
    size: tuple[int, int]
    num_frames: int | None
    _frames: Iterator[np.ndarray]

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._frames


def _av_error(exc: Exception, name: str) -> VideoDecodeError:
    reason = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
    return VideoDecodeError(f"cannot decode video {name}: {reason}")


def _open_container(source: str | BinaryIO, name: str):  # noqa: ANN202 - an av container
    import av

    try:
        container = av.open(source, mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise _av_error(e, name) from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{name} has no video stream")
    return container


def _decoded(container, name: str, expected: int | None) -> Iterator[np.ndarray]:  # noqa: ANN001
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads: decoding is a small share of a frame's time
    count = 0
    try:
        for frame in container.decode(stream):
            count += 1
            yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as e:
        raise _av_error(e, f"{name} after {count} frames") from None
    finally:
        container.close()
    if count == 0:
        raise VideoDecodeError(f"{name}: the video stream has no decodable frame")
    if expected is not None and count < expected:  # FFmpeg stops quietly at a cut-off file
        raise VideoDecodeError(f"{name} is truncated: {count} of its {expected} frames could be decoded")


def _open_video(source: str | BinaryIO, name: str) -> FrameSource:
    container = _open_container(source, name)
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else DEFAULT_FPS
    size = (int(stream.codec_context.height), int(stream.codec_context.width))
    if size[0] <= 0 or size[1] <= 0:
        container.close()
        raise VideoDecodeError(f"{name}: the video stream has no frame size")
    expected = int(stream.frames) or None
    return FrameSource(name, fps, size, expected, _decoded(container, name, expected))


def _folder_frames(folder: str, names: list[str]) -> Iterator[np.ndarray]:
    size = None
    for n in names:
        path = os.path.join(folder, n)
        with open(path, "rb") as f:
            try:
                frame = decode_image(f.read())
            except ImageDecodeError as e:
                raise VideoDecodeError(f"frame {path}: {e}") from None
        if size is not None and frame.shape[:2] != size:
            raise VideoDecodeError(f"frame {path} is {frame.shape[1]}x{frame.shape[0]}, "
                                   f"earlier frames are {size[1]}x{size[0]}")
        size = frame.shape[:2]
        yield frame


def _open_folder(folder: str, fps: float | None) -> FrameSource:
    names = frame_names(folder)
    if not names:
        raise VideoDecodeError(f"folder {folder} has no frame images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    with open(os.path.join(folder, names[0]), "rb") as f:
        try:
            first = decode_image(f.read())
        except ImageDecodeError as e:
            raise VideoDecodeError(f"frame {os.path.join(folder, names[0])}: {e}") from None
    return FrameSource(folder, fps or DEFAULT_FPS, first.shape[:2], len(names), _folder_frames(folder, names))


def open_frames(source: str | bytes | BinaryIO, *, name: str | None = None, fps: float | None = None) -> FrameSource:
    """Frames of a video file, video bytes / a binary file object, or a folder of frames.

    `fps` sets a folder's frame rate (default 24). Raises `VideoDecodeError` with the
    reason for anything that is not a readable video; errors in the middle of a stream
    surface when that frame is reached."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    if isinstance(source, str):
        if os.path.isdir(source):
            return _open_folder(source, fps)
        if not os.path.exists(source):
            raise FileNotFoundError(f"no such video or folder: {source}")
        if os.path.getsize(source) == 0:
            raise VideoDecodeError(f"{source} is empty")
        return _open_video(source, name or source)
    return _open_video(source, name or "video")


# --------------------------------------------------------------------------- writing
class OverlayWriter:
    """Frames -> an H.264 (yuv420p, +faststart for paths) MP4 that browsers play, at the source's
    frame rate. yuv420p needs even sides: an odd side gets one edge row/column repeated
    (the picture is never scaled)."""

    def __init__(self, target: str | BinaryIO, fps: float, size: tuple[int, int], *, crf: int = 23) -> None:
        import av

        self.size = size
        # +faststart (index first: playback starts before the download ends) rewrites the file
        # by name at the end, so only a path gets it, not a file object.
        options = {"movflags": "+faststart"} if isinstance(target, str) else {}
        self._container = av.open(target, mode="w", format="mp4", options=options)
        rate = Fraction(fps).limit_denominator(1001)
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.height = size[0] + size[0] % 2
        self._stream.width = size[1] + size[1] % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        if frame.shape[:2] != self.size:
            raise ValueError(f"frame is {frame.shape[:2]}, the video is {self.size}")
        h, w = self.size
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> "OverlayWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def davis_palette() -> list[int]:
    """The 256-colour palette DAVIS annotations use (VOC's bit-interleaved colour map):
    0 black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), ..."""
    flat = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        flat += [r, g, b]
    return flat


def write_palette_png(target: str | BinaryIO, index_map: np.ndarray) -> None:
    """An H x W map of object indices (0 = background, 1..255) as an indexed PNG."""
    if index_map.max(initial=0) > 255:
        raise ValueError("a palette PNG holds at most 255 objects")
    im = Image.fromarray(index_map.astype(np.uint8), mode="P")
    im.putpalette(davis_palette())
    im.save(target, format="PNG")
