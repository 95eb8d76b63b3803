"""Spoken prompts made by the tests themselves with Debian's espeak-ng (and sox to resample).

A fixture (`speech_corpus`). Every colour + shape phrase of Shapes World that seem-tiny knows, with and without "the":
96 phrases, alternately at 16 kHz and 22.05 kHz. Made once per test session (~5 s).
"""
from __future__ import annotations

import itertools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from training.shapes_world import COLORS, THING_CLASSES

RATES = (16_000, 22_050)


@dataclass(frozen=True)
class Spoken:
    phrase: str   # what was said
    named: str    # the colour + shape a transcript must contain to name it
    rate: int
    path: Path


def phrases() -> list[tuple[str, str]]:
    """(phrase, colour + shape) for every colour, shape and article."""
    return [(f"{article}{colour} {shape}", f"{colour} {shape}")
            for colour, shape in itertools.product(COLORS, THING_CLASSES) for article in ("the ", "")]


def speak(text: str, path: Path, rate: int) -> Path:
    """espeak-ng's default voice saying `text`, as a WAV file at `rate` Hz."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True, timeout=30)
    subprocess.run(["sox", str(raw), "-r", str(rate), str(path)], check=True, capture_output=True, timeout=30)
    raw.unlink()
    return path


def make_corpus(folder: Path) -> list[Spoken]:
    """The whole corpus in `folder`, rates alternating phrase by phrase."""
    out = []
    for i, (phrase, named) in enumerate(phrases()):
        rate = RATES[i % len(RATES)]
        path = speak(phrase, folder / f"{i:03d}-{phrase.replace(' ', '_')}-{rate}.wav", rate)
        out.append(Spoken(phrase, named, rate, path))
    return out


def require_tools() -> None:
    """Skip with the install line when espeak-ng or sox is missing (`make test` installs them)."""
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: apt-get install -y espeak-ng sox (make test does)")


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Spoken]:
    """The corpus, made once per session (a plugin of tests/conftest.py)."""
    require_tools()
    return make_corpus(tmp_path_factory.mktemp("speech"))
