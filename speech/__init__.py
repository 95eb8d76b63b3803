"""Speech to text for audio prompts: decode any audio file, transcribe it.

A bottom package: imports nothing of this project (model/ and serving/ use it), and its
heavy parts (PocketSphinx, transformers) only when a recogniser is built.

    from speech import decode_audio, load_recognizer
    recognizer = load_recognizer("pocketsphinx")          # or "whisper:/models/whisper-small"
    text = recognizer.transcribe(decode_audio(data, rate=recognizer.rate), words=["circle", "square"])

Backends (`load_recognizer(spec)`):
    pocketsphinx        the offline default; its model ships inside the PyPI package. The
                        active vocabulary constrains recognition (speech.sphinx).
    whisper:PATH        a Whisper checkpoint in transformers' format (config.json, safetensors
                        weights, tokenizer and feature-extractor files), a local folder or s3://.
"""
from __future__ import annotations

from .audio import AudioError, AudioLimits, UnsupportedLanguage, decode_audio, resample
from .recognizer import DEFAULT_ASR, Recognizer, load_recognizer, transcribe_bytes

__all__ = ["AudioError", "UnsupportedLanguage", "AudioLimits", "decode_audio", "resample", "Recognizer", "load_recognizer",
           "transcribe_bytes", "DEFAULT_ASR"]
