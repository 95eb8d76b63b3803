"""Whisper through transformers, for users who have the weights (`whisper:PATH`).

PATH is a folder in transformers' format (config.json, model.safetensors, the tokenizer
and preprocessor files), local or `s3://bucket/prefix/` (copied to a temporary folder
first). Weights are read from safetensors only (`use_safetensors=True`): loading never
executes code from the files. Whisper is not constrained by the vocabulary: it
transcribes freely, in the requested language.
"""
from __future__ import annotations

import os
import tempfile
import threading
from typing import Sequence

import numpy as np

from .audio import UnsupportedLanguage

__all__ = ["WhisperRecognizer"]


def _local_folder(path: str) -> str:
    """`path` itself, or a temporary copy of the s3:// prefix (via the storage package)."""
    if not path.startswith("s3://"):
        return path
    from storage import list_objects, read_bytes

    prefix = path.rstrip("/") + "/"
    folder = tempfile.mkdtemp(prefix="seem-whisper-")
    for info in list_objects(prefix):
        name = info.uri[len(prefix):]
        if not name or "/" in name:  # the model's own files sit at the top of the folder
            continue
        with open(os.path.join(folder, name), "wb") as f:
            f.write(read_bytes(info.uri))
    return folder


class WhisperRecognizer:
    """A Whisper checkpoint (any size) on CPU, or on CUDA when this process has a GPU."""

    name = "whisper"
    rate = 16_000

    def __init__(self, path: str, device: str | None = None) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        folder = _local_folder(path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = WhisperProcessor.from_pretrained(folder)
        self.model = WhisperForConditionalGeneration.from_pretrained(folder, use_safetensors=True).to(self.device).eval()
        self.rate = int(self.processor.feature_extractor.sampling_rate)
        self._lock = threading.Lock()

    def transcribe(self, samples: np.ndarray, *, words: Sequence[str] | None = None,
                   stuff: Sequence[str] = (), language: str | None = None) -> str:
        """Free transcription of `samples` (mono float32 at `rate`); `words` are not used."""
        import torch

        inputs = self.processor(samples, sampling_rate=self.rate, return_tensors="pt")
        kwargs = {"task": "transcribe", "max_new_tokens": 64}
        if language is not None:
            if language.lower() not in self._languages():
                raise UnsupportedLanguage(f"whisper: unknown language {language!r}")
            kwargs["language"] = language.lower()
        with self._lock, torch.inference_mode():
            ids = self.model.generate(inputs.input_features.to(self.device), **kwargs)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    def _languages(self) -> set[str]:
        codes = getattr(self.model.generation_config, "lang_to_id", None) or {}
        return {c.strip("<|>") for c in codes}
