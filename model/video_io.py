"""Video in and out, frame by frame: PyAV (FFmpeg's libraries, bundled in the `av` wheel).

Why PyAV: its wheel carries FFmpeg with H.264 (libx264) and VP8/VP9/AV1 decoders, so no
system ffmpeg is needed and the same code decodes and encodes on every platform the wheel
exists for. Ray Data's `read_videos` needs decord, which ships x86-only wheels and is no
longer maintained; OpenCV would also work but its wheels bring Qt/GUI baggage and cannot
write browser-playable H.264. Frames are decoded one at a time: a long video never sits
in memory.

Sources (`open_frames`): a video file (.mp4 .webm .mov .avi .mkv ...), or a folder of
frame images read in name order (digits compared as numbers, so frame_2 < frame_10): a local
folder or an `s3://bucket/prefix/`, both listed and read through the `storage` package.
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
           "OverlayWriter", "davis_palette", "write_palette_png", "frame_names", "frame_uris", "is_frame_folder"]

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


def _s3_children(prefix: str, endpoint_url: str | None) -> list[str]:
    """Names of the objects directly under an s3:// prefix (a "folder"; deeper keys are left out)."""
    import storage

    prefix = prefix if prefix.endswith("/") else prefix + "/"
    names = (info.key[len(prefix):] for info in storage.list_objects(prefix, endpoint_url=endpoint_url))
    return [n for n in names if n and "/" not in n]


def frame_uris(folder: str, endpoint_url: str | None = None) -> list[str]:
    """The frame images of a local folder or an s3:// prefix, in frame order, as paths / URIs."""
    import storage

    if not storage.is_s3(folder):
        return [os.path.join(folder, n) for n in frame_names(folder)]
    names = [n for n in _s3_children(folder, endpoint_url) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    base = folder.rstrip("/") + "/"
    return [base + n for n in sorted(names, key=_natural_key)]


def is_frame_folder(src: str, endpoint_url: str | None = None) -> bool:
    """A local folder or s3:// prefix holding frame images and no video: one video's frames."""
    import storage

    if storage.is_s3(src):
        if is_video_name(src):
            return False
        names = _s3_children(src, endpoint_url)
    elif os.path.isdir(src):
        names = os.listdir(src)
    else:
        return False
    exts = {os.path.splitext(n)[1].lower() for n in names}
    return bool(exts & IMAGE_EXTENSIONS) and not exts & VIDEO_EXTENSIONS


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


def _read_frame(uri: str, endpoint_url: str | None) -> np.ndarray:
    import storage

    try:
        return decode_image(storage.read_bytes(uri, endpoint_url=endpoint_url))
    except ImageDecodeError as e:
        raise VideoDecodeError(f"frame {uri}: {e}") from None
    except storage.StorageError as e:
        raise VideoDecodeError(f"frame {uri}: {e}") from None


def _folder_frames(uris: list[str], endpoint_url: str | None) -> Iterator[np.ndarray]:
    size = None
    for uri in uris:
        frame = _read_frame(uri, endpoint_url)
        if size is not None and frame.shape[:2] != size:
            raise VideoDecodeError(f"frame {uri} is {frame.shape[1]}x{frame.shape[0]}, "
                                   f"earlier frames are {size[1]}x{size[0]}")
        size = frame.shape[:2]
        yield frame


def _open_folder(folder: str, fps: float | None, endpoint_url: str | None = None) -> FrameSource:
    uris = frame_uris(folder, endpoint_url)
    if not uris:
        raise VideoDecodeError(f"folder {folder} has no frame images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    first = _read_frame(uris[0], endpoint_url)
    return FrameSource(folder, fps or DEFAULT_FPS, first.shape[:2], len(uris), _folder_frames(uris, endpoint_url))


def open_frames(source: str | bytes | BinaryIO, *, name: str | None = None, fps: float | None = None,
                endpoint_url: str | None = None) -> FrameSource:
    """Frames of a video file, video bytes / a binary file object, or a folder of frames (a
    local folder or an s3:// prefix; `endpoint_url` for the latter).

    `fps` sets a folder's frame rate (default 24). Raises `VideoDecodeError` with the
    reason for anything that is not a readable video; errors in the middle of a stream
    surface when that frame is reached."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    if isinstance(source, str):
        if source.startswith("s3://") and not is_video_name(source):
            return _open_folder(source, fps, endpoint_url)
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
