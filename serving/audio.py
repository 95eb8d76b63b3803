"""Audio prompts, transcribed by the Speech deployment: each is sent on as the text prompt.

Transcription runs in the Speech deployment's replicas, on a worker thread (never on the
decoder replicas, which only ever see text). The recogniser is loaded in the background
when a Speech replica starts, so the first spoken request does not wait for it.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
from typing import Any, Sequence

from .config import ServeConfig
from .errors import ApiError
from .schemas import AudioPrompt, SegmentRequest, TextPrompt

__all__ = ["Transcriber", "has_audio"]

log = logging.getLogger("seem.serving")


def has_audio(request: SegmentRequest) -> bool:
    return any(isinstance(p, AudioPrompt) for p in request.prompts)


class Transcriber:
    """The ingress's speech recogniser (`config.asr`), constrained by the vocabulary."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._recognizer: Any = None
        self._vocabulary: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        threading.Thread(target=self._load, name="asr-load", daemon=True).start()

    def _load(self) -> None:
        try:
            from model.build import get_config
            from speech import load_recognizer

            cfg = get_config(self.config.model)
            self._vocabulary = (tuple(cfg.default_vocabulary), tuple(cfg.default_stuff))
            self._recognizer = load_recognizer(self.config.asr)
        except BaseException as e:  # reported on use: serving without audio must not fail
            log.error("speech recogniser %r failed to load: %s", self.config.asr, e)
            self._error = e
        finally:
            self._ready.set()

    def _transcribe(self, data: bytes, language: str | None, vocabulary: Sequence[str] | None) -> str:
        from speech import AudioError, AudioLimits, transcribe_bytes

        self._ready.wait()
        if self._recognizer is None:
            raise ApiError("unavailable", f"the speech recogniser is unavailable: {self._error}")
        names, stuff = self._vocabulary
        if vocabulary is not None:
            names, stuff = tuple(vocabulary), tuple(n for n in vocabulary if n in stuff)
        limits = AudioLimits(self.config.limits.max_audio_bytes, self.config.limits.max_audio_seconds)
        try:
            return transcribe_bytes(self._recognizer, data, words=names, stuff=stuff, language=language, limits=limits)
        except AudioError as e:
            raise ApiError(e.code, e.message) from None

    async def resolve(self, request: SegmentRequest) -> tuple[SegmentRequest, list[str]]:
        """The request with each audio prompt replaced by its transcript, and the transcripts.

        422 `invalid_audio` / `limit_exceeded` for unusable audio, `no_speech` (with the
        empty transcript in the body) when nothing was recognised."""
        phrases = [i for i, p in enumerate(request.prompts) if isinstance(p, (AudioPrompt, TextPrompt))]
        if len(phrases) > 1:  # before any transcription work
            raise ApiError("invalid_prompt", f"prompts[{phrases[1]}]: at most one text or audio prompt per request")
        prompts: list[Any] = []
        transcripts: list[str] = []
        for i, prompt in enumerate(request.prompts):
            if not isinstance(prompt, AudioPrompt):
                prompts.append(prompt)
                continue
            data = _audio_bytes(prompt.data, self.config.limits.max_audio_bytes, i)
            text = await asyncio.to_thread(self._transcribe, data, prompt.language, request.vocabulary)
            transcripts.append(text)
            if not text:
                raise ApiError("no_speech", f"prompts[{i}] (audio): no speech was recognised",
                               extra={"transcripts": transcripts})
            prompts.append(TextPrompt(type="text", text=text))
        return request.model_copy(update={"prompts": prompts}), transcripts


def _audio_bytes(data: str, limit: int, index: int) -> bytes:
    # base64 is 4/3 of the bytes: refuse an oversized payload before decoding it.
    if len(data) > (limit + 2) // 3 * 4 + 4:
        raise ApiError("limit_exceeded", f"prompts[{index}] (audio): the audio is over the limit of {limit} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("invalid_audio", f"prompts[{index}] (audio): data is not valid base64") from None
