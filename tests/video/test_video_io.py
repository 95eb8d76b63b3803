"""Video decoding and encoding through PyAV: what `seem video` reads and writes."""
from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from model.video_io import (OverlayWriter, VideoDecodeError, davis_palette, frame_names, open_frames,
                            write_palette_png)


def _moving_square(n: int, size: tuple[int, int] = (64, 96)) -> list[np.ndarray]:
    frames = []
    for i in range(n):
        f = np.full((*size, 3), 40, np.uint8)
        f[20:40, 5 * i:5 * i + 20] = (220, 30, 30)
        frames.append(f)
    return frames


def _mp4(path: Path, frames: list[np.ndarray], fps: float = 12.0) -> Path:
    with OverlayWriter(str(path), fps, frames[0].shape[:2]) as w:
        for f in frames:
            w.write(f)
    return path


def test_overlay_is_browser_playable_h264_at_source_rate_and_size(tmp_path: Path) -> None:
    frames = _moving_square(9)
    path = _mp4(tmp_path / "o.mp4", frames, fps=12.5)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert float(s.average_rate) == pytest.approx(12.5)
    source = open_frames(str(path))
    decoded = list(source)
    assert source.size == (64, 96) and len(decoded) == 9 and source.num_frames == 9
    # Lossy, but the red square is where it was drawn.
    assert decoded[4][30, 30, 0] > 180 and decoded[4][30, 30, 1] < 80


def test_odd_sizes_are_padded_to_even_not_scaled(tmp_path: Path) -> None:
    frames = _moving_square(3, size=(63, 95))
    source = open_frames(str(_mp4(tmp_path / "odd.mp4", frames)))
    first = next(iter(source))
    assert source.size == (64, 96) and first.shape == (64, 96, 3)


def test_folder_of_frames_in_name_order_numbers_as_numbers(tmp_path: Path) -> None:
    for i in (0, 1, 2, 10):
        Image.fromarray(np.full((8, 10, 3), i * 20, np.uint8)).save(tmp_path / f"f{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    assert frame_names(str(tmp_path)) == ["f0.png", "f1.png", "f2.png", "f10.png"]
    source = open_frames(str(tmp_path), fps=5)
    values = [int(f[0, 0, 0]) for f in source]
    assert values == [0, 20, 40, 200] and source.fps == 5 and source.num_frames == 4


def test_broken_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="cannot decode video"):
        open_frames(b"this is not a video" * 50)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty"):
        open_frames(str(tmp_path / "empty.mp4"))
    with pytest.raises(VideoDecodeError, match="no frame images"):
        open_frames(str(tmp_path))  # a folder with no images
    data = _mp4(tmp_path / "whole.mp4", _moving_square(20)).read_bytes()
    with pytest.raises(VideoDecodeError, match="truncated|cannot decode"):
        list(open_frames(data[: len(data) // 2]))
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((9, 10, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(VideoDecodeError, match="earlier frames are 10x8"):
        list(open_frames(str(tmp_path)))


def test_palette_png_is_davis_style(tmp_path: Path) -> None:
    index = np.zeros((6, 7), np.uint8)
    index[1:3, 1:3] = 1
    index[4, 5] = 2
    buf = io.BytesIO()
    write_palette_png(buf, index)
    im = Image.open(io.BytesIO(buf.getvalue()))
    assert im.mode == "P" and np.array_equal(np.asarray(im), index)
    assert davis_palette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
