"""The speech package: audio decoding of real formats, the default recogniser on espeak-ng
speech, the Python Prompts(audio=...) path, and Whisper's plumbing."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from speech import AudioError, AudioLimits, decode_audio, load_recognizer, transcribe_bytes


def _encoded(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt)
    return buf.getvalue()


def _webm(samples: np.ndarray, rate: int) -> bytes:
    """Opus in WebM, as a browser's MediaRecorder sends it (written with PyAV)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=48_000)
        frame = av.AudioFrame.from_ndarray((samples[None, :] * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "WEBM"])
def test_formats_rates_and_channels_decode_to_16k_mono(fmt: str) -> None:
    rate = 22_050
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo = np.stack([tone, tone], axis=1)
    data = _webm(tone, rate) if fmt == "WEBM" else _encoded(stereo, rate, fmt)
    samples = decode_audio(data, rate=16_000)
    assert samples.ndim == 1 and samples.dtype == np.float32
    assert abs(len(samples) / 16_000 - 1.0) < 0.1
    spectrum = np.abs(np.fft.rfft(samples[:16_000]))
    assert abs(np.argmax(spectrum) * 16_000 / len(samples[:16_000]) - 440) < 5  # the same tone after resampling


def test_bad_audio_is_an_audio_error() -> None:
    wav = _encoded(np.zeros(16_000, np.float32), 16_000, "WAV")
    with pytest.raises(AudioError) as e:
        decode_audio(b"not audio at all, just some words" * 3)
    assert e.value.code == "invalid_audio"
    with pytest.raises(AudioError, match="truncated") as e:
        decode_audio(wav[: len(wav) // 2])
    with pytest.raises(AudioError) as e:
        decode_audio(wav, limits=AudioLimits(max_seconds=0.5))
    assert e.value.code == "limit_exceeded"
    with pytest.raises(AudioError) as e:
        decode_audio(wav, limits=AudioLimits(max_bytes=100))
    assert e.value.code == "limit_exceeded"


def test_pocketsphinx_names_spoken_phrases_and_hears_nothing_in_silence(speech_corpus) -> None:  # noqa: ANN001
    """The offline default on a sample of the espeak-ng corpus, constrained by seem-tiny's
    vocabulary (the whole corpus is checked over HTTP in tests/serving/test_audio.py)."""
    from model.build import get_config

    cfg = get_config("seem-tiny")
    recognizer = load_recognizer("pocketsphinx")
    sample = speech_corpus[::8]
    heard = [transcribe_bytes(recognizer, s.path.read_bytes(), words=cfg.default_vocabulary,
                              stuff=cfg.default_stuff) for s in sample]
    named = sum(s.named in h for s, h in zip(sample, heard))
    assert named >= 0.8 * len(sample), list(zip([s.phrase for s in sample], heard))
    silence = _encoded(np.zeros(16_000, np.float32), 16_000, "WAV")
    assert transcribe_bytes(recognizer, silence, words=cfg.default_vocabulary) == ""


def test_python_prompts_take_audio_bytes_or_a_path(speech_corpus) -> None:  # noqa: ANN001
    from model import Prompts, build_predictor
    from model.predictor import PromptError
    from training.shapes_world import generate_scene

    predictor = build_predictor("seem-tiny")
    features = predictor.encode([generate_scene(7).image])[0]
    spoken = speech_corpus[0]
    by_path = predictor.decode(features, Prompts(audio=str(spoken.path)))
    by_bytes = predictor.decode(features, Prompts(audio=spoken.path.read_bytes(), language="en"))
    text = predictor.decode(features, Prompts(text=by_path.transcript))
    assert spoken.named in by_path.transcript and by_bytes.transcript == by_path.transcript
    assert np.array_equal(by_path.masks[0].mask, text.masks[0].mask)
    with pytest.raises(PromptError, match="no speech"):
        predictor.decode(features, Prompts(audio=_encoded(np.zeros(8000, np.float32), 16_000, "WAV")))


def _tiny_whisper(folder: Path) -> None:
    """A randomly initialised Whisper of a few thousand weights, with a 34-token tokenizer."""
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)

    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>",
                "<|nocaptions|>", "<|notimestamps|>"]
    vocab = {t: i for i, t in enumerate([chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"] + specials)}
    end = vocab["<|endoftext|>"]
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], bos_token=specials[0], eos_token=specials[0],
                                 unk_token=specials[0], pad_token=specials[0])
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    config = WhisperConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, num_mel_bins=80, max_target_positions=128, pad_token_id=end,
                           bos_token_id=end, eos_token_id=end, decoder_start_token_id=vocab["<|startoftranscript|>"])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=vocab["<|startoftranscript|>"], eos_token_id=end, pad_token_id=end, bos_token_id=end,
        lang_to_id={"<|en|>": vocab["<|en|>"]}, is_multilingual=True, no_timestamps_token_id=vocab["<|notimestamps|>"],
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]},
        begin_suppress_tokens=[])
    model.save_pretrained(folder, safe_serialization=True)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(folder)


def test_whisper_backend_plumbing(tmp_path: Path, speech_corpus) -> None:  # noqa: ANN001
    """Checks plumbing, not accuracy: a tiny randomly initialised Whisper built here loads
    from safetensors through `whisper:PATH`, takes decoded audio, honours `language` and
    returns a string (of random letters)."""
    from speech import UnsupportedLanguage

    _tiny_whisper(tmp_path)
    assert not list(tmp_path.glob("*.bin"))  # weights only as safetensors
    recognizer = load_recognizer(f"whisper:{tmp_path}")
    data = speech_corpus[0].path.read_bytes()
    text = transcribe_bytes(recognizer, data, language="en")
    assert isinstance(text, str) and "<|" not in text
    assert transcribe_bytes(recognizer, data) == text  # deterministic (greedy)
    with pytest.raises(UnsupportedLanguage):
        transcribe_bytes(recognizer, data, language="fr")
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "whisper"


def test_seem_segment_audio_flag_becomes_a_text_prompt(speech_corpus, tmp_path: Path) -> None:  # noqa: ANN001
    """`seem segment --audio FILE` and `seem video --audio FILE` (argument parsing and
    transcription; the jobs take the transcript as --text, which tests/pipeline covers)."""
    import seem_cli
    from pipeline.cli import _heard

    spoken = speech_corpus[1]
    args = seem_cli.build_parser().parse_args(["segment", str(tmp_path), "--out", str(tmp_path / "out"),
                                               "--audio", str(spoken.path)])
    assert _heard(args) == (spoken.phrase,)
    from pipeline.video_cli import _flag_prompts

    video = seem_cli.build_parser().parse_args(["video", "clip.mp4", "--out", str(tmp_path), "--audio", str(spoken.path)])
    assert _flag_prompts(video) == [{"type": "text", "text": spoken.phrase}]
    silent = tmp_path / "silent.wav"
    silent.write_bytes(_encoded(np.zeros(8000, np.float32), 16_000, "WAV"))
    args.audio = [str(silent)]
    with pytest.raises(SystemExit, match="no speech"):
        _heard(args)
