"""The offline default recogniser: PocketSphinx with its bundled US English model.

A prompt is a short noun phrase, so recognition is first constrained to a grammar of
noun phrases over the active vocabulary:

    [the] [size] [colour] NAME [position]      e.g. "the small red circle on the left"

with NAME any vocabulary name whose words the pronouncing dictionary knows. When the
grammar finds nothing, free dictation with the bundled language model is the fallback
(a phrase outside the grammar still gets a transcript). Measured on espeak-ng speech of
all 96 colour + shape phrases at 16 and 22.05 kHz: free dictation names almost none, the
grammar 190 of 192 (docs/benchmarks.md).

The samples are conditioned before recognition: peak-normalised, then a faint fixed
noise floor is added. The acoustic model was trained on recorded speech, which is never
digitally silent; synthetic or gated audio with exact zeros between words otherwise
derails the search (measured: 57 -> 92 of 96 phrases).
"""
from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np

from .audio import UnsupportedLanguage

__all__ = ["SphinxRecognizer", "phrase_grammar"]

COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "black", "white", "brown", "pink", "gray")
SIZES = ("small", "large", "big")
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom")
EXTREMES = ("leftmost", "rightmost", "topmost", "bottommost")
# Name parts that mark a class's kind in panoptic vocabularies ("tree-merged", "wall-other").
_NOT_SPOKEN = frozenset({"merged", "other", "stuff"})
_NOISE_FLOOR = 0.008   # of full scale, after peak normalisation to 0.9
_GRAMMARS_KEPT = 8     # vocabularies whose grammar stays compiled


def _spoken_words(name: str) -> list[str]:
    return [w for w in re.findall(r"[a-z']+", name.lower()) if w not in _NOT_SPOKEN]


def _sayable(names: Iterable[str], known: set[str]) -> list[str]:
    return sorted({" ".join(ws) for ws in (_spoken_words(n) for n in names) if ws and all(w in known for w in ws)})


def phrase_grammar(names: Iterable[str], known: set[str], stuff: Iterable[str] = ()) -> str | None:
    """A JSGF grammar of noun phrases over `names` (only names whose words are all in
    `known`); None when no name is usable. `stuff` names (sky, grass: regions, not
    objects) are said plainly, "[the] sky": no size, colour or position, which also keeps
    them from competing with "the blue star"."""
    stuff = set(stuff)
    things = _sayable([n for n in names if n not in stuff], known)
    plain = _sayable([n for n in names if n in stuff], known)
    if not things and not plain:
        return None
    if not things:
        return ("#JSGF V1.0;\ngrammar prompt;\n"
                f"public <phrase> = [the] ({' | '.join(plain)});\n")
    rules = [f"<name> = {' | '.join(things)};"]
    parts = ["[the]"]
    for rule, items in (("extreme", EXTREMES), ("size", SIZES), ("colour", COLOURS)):
        usable = [i for i in items if all(w in known for w in i.split())]
        if usable:
            rules.append(f"<{rule}> = {' | '.join(usable)};")
            parts.append(f"[<{rule}>]")
    parts.append("<name>")
    positions = [p for p in POSITIONS if all(w in known for w in p.split())]
    if positions:
        rules.append(f"<position> = {' | '.join(positions)};")
        parts.append("[<position>]")
    phrase = " ".join(parts)
    if plain:
        rules.append(f"<stuff> = {' | '.join(plain)};")
        phrase = f"({phrase}) | ([the] <stuff>)"
    return "#JSGF V1.0;\ngrammar prompt;\n" + "\n".join(rules) + f"\npublic <phrase> = {phrase};\n"


def condition(samples: np.ndarray) -> bytes:
    """float32 mono 16 kHz -> 16-bit PCM bytes, peak-normalised with a fixed noise floor."""
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    y = samples * (0.9 / peak) if peak > 0 else samples
    noise = np.random.default_rng(0).standard_normal(len(y)).astype(np.float32) * _NOISE_FLOOR
    return (np.clip(y + noise, -1.0, 1.0) * 32767).astype(np.int16).tobytes()


class SphinxRecognizer:
    """PocketSphinx, grammar-constrained by the vocabulary, with free dictation as fallback.

    Thread-safe (one utterance at a time: a decoder holds one search state).
    """

    name = "pocketsphinx"
    rate = 16_000

    def __init__(self) -> None:
        import pocketsphinx

        model = os.path.join(pocketsphinx.get_model_path(), "en-us")
        dictionary = os.path.join(model, "cmudict-en-us.dict")
        # A stronger word-insertion penalty than the default 0.65: with it a plosive start
        # ("purple square") was heard as "the purple square" (184 -> 190 of 192 exact).
        self._decoder = pocketsphinx.Decoder(samprate=self.rate, loglevel="ERROR", wip=0.2)
        with open(dictionary, encoding="utf-8") as f:
            self._known = {line.split(" ", 1)[0] for line in f if line and not line.startswith("(")}
        self._lock = threading.Lock()
        self._grammars: OrderedDict[tuple[tuple[str, ...], tuple[str, ...]], str | None] = OrderedDict()

    def _search_for(self, names: Sequence[str] | None, stuff: Sequence[str]) -> str | None:
        """Name of the decoder's grammar search for `names` (compiled once), or None."""
        if not names:
            return None
        key = (tuple(names), tuple(sorted(set(stuff) & set(names))))
        if key in self._grammars:
            self._grammars.move_to_end(key)
            return self._grammars[key]
        grammar = phrase_grammar(key[0], self._known, key[1])
        search = None
        if grammar is not None:
            search = f"vocab{abs(hash(key)) % 10**12}"
            self._decoder.add_jsgf_string(search, grammar.encode())
        self._grammars[key] = search
        while len(self._grammars) > _GRAMMARS_KEPT:
            self._grammars.popitem(last=False)  # its search stays in the decoder, unused
        return search

    def _decode(self, pcm: bytes, search: str) -> str:
        self._decoder.activate_search(search)
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def transcribe(self, samples: np.ndarray, *, words: Sequence[str] | None = None,
                   stuff: Sequence[str] = (), language: str | None = None) -> str:
        """What was said in `samples` (mono float32 at `rate`); "" when nothing was recognised."""
        if language is not None and not language.lower().startswith("en"):
            raise UnsupportedLanguage(f"pocketsphinx has an English model only; language {language!r} is not supported")
        pcm = condition(samples)
        with self._lock:
            search = self._search_for(words, stuff)
            if search is not None:
                text = _complete_phrase(self._decode(pcm, search), words or ())
                if text:
                    return text
            return self._decode(pcm, "_default")


def _complete_phrase(text: str, names: Sequence[str]) -> str:
    """The grammar result cut back to its last vocabulary name: when the audio ends inside
    an optional trailing position ("... square at"), the search reports the partial path."""
    last_words = {_spoken_words(n)[-1] for n in names if _spoken_words(n)}
    words = text.split()
    while words and words[-1] not in last_words:
        words.pop()
    return " ".join(words)
