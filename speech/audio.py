"""Audio bytes -> mono float32 samples at the recogniser's rate, with size and length limits.

soundfile (libsndfile) reads WAV, FLAC and OGG/Vorbis/Opus; anything else (WebM/Opus from
a browser's MediaRecorder, MP4/AAC, MP3) goes through PyAV (FFmpeg). Every failure a
client can cause is an `AudioError` with a stable `code`: `invalid_audio` for bytes that
are not (whole) audio, `limit_exceeded` for audio over the limits.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from math import gcd

import numpy as np

__all__ = ["AudioError", "UnsupportedLanguage", "AudioLimits", "decode_audio", "resample"]


class AudioError(ValueError):
    """Audio a client sent that cannot be used; `code` is `invalid_audio` or `limit_exceeded`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnsupportedLanguage(AudioError):
    """The recogniser has no model for the requested language."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_audio", message)


@dataclass(frozen=True)
class AudioLimits:
    """Bounds on one audio prompt: encoded bytes and decoded seconds."""

    max_bytes: int = 4 << 20
    max_seconds: float = 30.0


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from `rate` to `target` Hz."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(samples, target // g, rate // g).astype(np.float32)


def _check_wav_whole(data: bytes) -> None:
    """A WAV file whose `data` chunk declares more bytes than the file holds was cut short;
    libsndfile would quietly read what is there."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return
    order = "<" if data[:4] == b"RIFF" else ">"
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4:pos + 8], "little" if order == "<" else "big")
        if data[pos:pos + 4] == b"data":
            # 0 and 0xFFFFFFFF mark a stream written without knowing its length.
            if size not in (0, 0xFFFFFFFF) and pos + 8 + size > len(data):
                raise AudioError("invalid_audio", f"the WAV file is truncated: its data chunk declares {size} bytes, "
                                                  f"{len(data) - pos - 8} are present")
            return
        pos += 8 + size + (size & 1)


def _read_soundfile(data: bytes) -> tuple[np.ndarray, int] | None:
    """(frames x channels float32, rate), or None when libsndfile does not know the format."""
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as e:
        text = str(e).lower()
        if "format not recognised" in text or "unknown format" in text or "not recognised" in text:
            return None
        raise AudioError("invalid_audio", f"cannot decode the audio: {e}") from None
    except (RuntimeError, ValueError, TypeError) as e:
        raise AudioError("invalid_audio", f"cannot decode the audio: {e}") from None
    return samples, int(rate)


def _read_av(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with PyAV; stops reading past the length limit."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioError("invalid_audio", "the file has no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.rate or stream.codec_context.sample_rate or 0)
            chunks: list[np.ndarray] = []
            total = 0
            for frame in container.decode(stream):
                array = frame.to_ndarray()  # channels x n (planar) or 1 x n*channels (packed)
                if frame.format.is_planar:
                    chunk = array.T
                else:
                    chunk = array.reshape(-1, len(frame.layout.channels))
                chunks.append(_to_float(chunk))
                rate = int(frame.sample_rate or rate)
                total += len(chunk)
                if rate and total > max_seconds * rate:
                    break
    except AudioError:
        raise
    except (av.FFmpegError, ValueError, IndexError, OSError) as e:
        raise AudioError("invalid_audio", f"cannot decode the audio: {e}") from None
    if not chunks or not rate:
        raise AudioError("invalid_audio", "the audio stream holds no samples")
    return np.concatenate(chunks, axis=0), rate


def _to_float(chunk: np.ndarray) -> np.ndarray:
    if np.issubdtype(chunk.dtype, np.integer):
        scale = float(np.iinfo(chunk.dtype).max) + 1.0
        return (chunk.astype(np.float32) / scale).astype(np.float32)
    return chunk.astype(np.float32, copy=False)


def decode_audio(data: bytes, *, rate: int = 16_000, limits: AudioLimits = AudioLimits()) -> np.ndarray:
    """Any audio file's bytes -> mono float32 samples in [-1, 1] at `rate` Hz.

    Channels are averaged; any input rate is resampled. Raises `AudioError`.
    """
    if not data:
        raise AudioError("invalid_audio", "the audio is empty")
    if len(data) > limits.max_bytes:
        raise AudioError("limit_exceeded", f"the audio is {len(data)} bytes; the limit is {limits.max_bytes}")
    _check_wav_whole(data)
    read = _read_soundfile(data)
    samples, source_rate = read if read is not None else _read_av(data, limits.max_seconds)
    if samples.size == 0 or source_rate <= 0:
        raise AudioError("invalid_audio", "the audio holds no samples")
    seconds = len(samples) / source_rate
    if seconds > limits.max_seconds:
        raise AudioError("limit_exceeded", f"the audio is over {limits.max_seconds:g} s long (the limit)")
    if not np.isfinite(samples).all():
        raise AudioError("invalid_audio", "the audio holds samples that are not finite numbers")
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    return np.clip(resample(mono, source_rate, rate), -1.0, 1.0)
