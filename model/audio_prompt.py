"""Audio prompts: the spoken phrase becomes the text prompt.

The recogniser (package `speech`, imported only when audio is given) is constrained by
the vocabulary the masks are labelled from, so "the red circle" is heard as a phrase over
the model's own names.
"""
from __future__ import annotations

import dataclasses
import os

from .transforms import PromptError
from .types import Prompts, Vocabulary

__all__ = ["read_audio", "transcribe_prompts", "NoSpeech"]


class NoSpeech(PromptError):
    """The audio holds no speech the recogniser could make out."""


def read_audio(audio: bytes | str | os.PathLike[str]) -> bytes:
    """The audio file's bytes (`audio` is the bytes themselves or a path)."""
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return bytes(audio)
    try:
        with open(audio, "rb") as f:
            return f.read()
    except OSError as e:
        raise PromptError(f"cannot read the audio file {os.fspath(audio)!r}: {e.strerror}") from None


def transcribe_prompts(prompts: Prompts, vocabulary: Vocabulary, asr: str) -> tuple[Prompts, str]:
    """`prompts` with its audio replaced by the transcript as text, and the transcript.

    Raises `PromptError` for audio that cannot be used and `NoSpeech` for audio in which
    nothing was recognised."""
    from speech import AudioError, load_recognizer, transcribe_bytes

    try:
        text = transcribe_bytes(load_recognizer(asr), read_audio(prompts.audio), words=vocabulary.names,
                                stuff=sorted(vocabulary.stuff), language=prompts.language)
    except AudioError as e:
        raise PromptError(f"audio prompt: {e.message}") from None
    if not text:
        raise NoSpeech("audio prompt: no speech was recognised")
    return dataclasses.replace(prompts, text=text, audio=None, language=None), text
