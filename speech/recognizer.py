"""The recogniser interface and the backend registry (`load_recognizer(spec)`)."""
from __future__ import annotations

import threading
from typing import Protocol, Sequence

import numpy as np

from .audio import AudioLimits, decode_audio

__all__ = ["Recognizer", "load_recognizer", "transcribe_bytes", "DEFAULT_ASR"]

DEFAULT_ASR = "pocketsphinx"
_CACHE: dict[str, "Recognizer"] = {}
_CACHE_LOCK = threading.Lock()


class Recognizer(Protocol):
    """Speech to text. `rate` is the sample rate `transcribe` expects (mono float32)."""

    name: str
    rate: int

    def transcribe(self, samples: np.ndarray, *, words: Sequence[str] | None = None,
                   stuff: Sequence[str] = (), language: str | None = None) -> str:
        """The words heard ("" when none). `words`: the active vocabulary, which a backend
        may use to constrain or re-score (`stuff`: those of its names that are regions, not
        objects); `language`: an ISO code such as "en" (None: the backend's default)."""
        ...


def load_recognizer(spec: str = DEFAULT_ASR) -> Recognizer:
    """The recogniser for `spec` ("pocketsphinx" or "whisper:PATH"), built once per process."""
    spec = spec.strip()
    with _CACHE_LOCK:
        if spec not in _CACHE:
            _CACHE[spec] = _build(spec)
        return _CACHE[spec]


def _build(spec: str) -> Recognizer:
    kind, _, arg = spec.partition(":")
    if kind == "pocketsphinx" and not arg:
        from .sphinx import SphinxRecognizer

        return SphinxRecognizer()
    if kind == "whisper" and arg:
        from .whisper import WhisperRecognizer

        return WhisperRecognizer(arg)
    raise ValueError(f"unknown speech recogniser {spec!r}: expected 'pocketsphinx' or 'whisper:PATH'")


def has_speech(samples: np.ndarray, rate: int, threshold_db: float = -45.0) -> bool:
    """Whether any 30 ms frame is louder than `threshold_db` dBFS (RMS): near-silent audio
    is reported as no speech rather than handed to a recogniser that may hallucinate."""
    frame = max(1, int(rate * 0.03))
    n = len(samples) // frame
    if n == 0:
        return False
    rms = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    return bool(rms.max() > 10 ** (threshold_db / 20))


def transcribe_bytes(recognizer: Recognizer, data: bytes, *, words: Sequence[str] | None = None,
                     stuff: Sequence[str] = (), language: str | None = None, limits: AudioLimits = AudioLimits()) -> str:
    """Decode an audio file and transcribe it; "" for silence. Raises `AudioError`
    (`invalid_audio`, `limit_exceeded`; `UnsupportedLanguage` for a language the backend lacks)."""
    samples = decode_audio(data, rate=recognizer.rate, limits=limits)
    if not has_speech(samples, recognizer.rate):
        return ""
    return recognizer.transcribe(samples, words=words, stuff=stuff, language=language).strip()
