"""How the first phrase on an image scales from one torch thread to two, against the calibration.

Issue 17's unit is the reference machine's milliseconds at 2 threads (bench/decode_vs_full.py):
a decode divided by the calibration ratio, which is the pixel decoder's 3 x 3 convolution at 2
threads here over 252 ms. The convolution is one large product and scales almost perfectly
with the second thread; a decode is ~1,000 smaller operations and scales less, so its number in
that unit is larger at 2 threads than at 1. This script measures both ratios on one machine, in
one run, with interleaved repeats:

- the calibration convolution at 1 and 2 threads;
- the first phrase on a Focal-T image (seeded random weights, 512 x 683, features as `encode`
  writes them, a new features object per call so that no per-image cache helps) at 1 and 2
  threads;
- the same phrase at 2 threads with the key and value projections made on a second Python
  thread (one torch thread each) while the decoder's layers run, each layer waiting for its own
  projections: an experiment, not a model code path. It tests whether overlapping the largest
  products with the many small ones buys back the second thread's poor use.

    .venv/bin/python bench/decode_threads.py [--repeats 7] [--rounds 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.decode_vs_full import REFERENCE_MS, _calibration_ms  # noqa: E402
from model import Prompts, build_predictor  # noqa: E402
from model.decoder import SeemDecoder  # noqa: E402


class _ProjectionsAhead:
    """While on, a decode that finds no kept projections for its image starts a thread that
    makes every layer's key and value projections in layer order (one torch thread), and the
    decoder's layers (the other torch thread) each wait for their own."""

    def __init__(self) -> None:
        self.on = False
        self._forward, self._layer = SeemDecoder.forward, SeemDecoder._layer
        self._ready: list[threading.Event] | None = None
        ahead = self

        def forward(decoder, multi_scale, mask_features, **kw):
            cache = kw.get("image_cache")
            if not ahead.on or cache is None or cache.projections:
                return ahead._forward(decoder, multi_scale, mask_features, **kw)
            return ahead._overlapped(decoder, multi_scale, mask_features, cache, kw)

        def layer(decoder, run, i, attn_mask):
            if ahead._ready is not None:
                ahead._ready[i].wait()
            return ahead._layer(decoder, run, i, attn_mask)

        SeemDecoder.forward, SeemDecoder._layer = forward, layer

    def _overlapped(self, decoder, multi_scale, mask_features, cache, kw):
        threads = torch.get_num_threads()
        self._ready = [threading.Event() for _ in range(decoder.cfg.num_layers)]
        worker = threading.Thread(target=self._project, args=(decoder, multi_scale, cache, self._ready))
        worker.start()
        torch.set_num_threads(max(1, threads - 1))  # this thread's setting only (OpenMP)
        try:
            return self._forward(decoder, multi_scale, mask_features, **kw)
        finally:
            torch.set_num_threads(threads)
            worker.join()
            self._ready = None

    @staticmethod
    def _project(decoder, multi_scale, cache, ready: list[threading.Event]) -> None:
        # What `SeemDecoder.fill_image_cache` computes, spelt out here because the layers need
        # their projections in layer order, each announced as soon as it is made, while that
        # method goes level by level.
        torch.set_num_threads(1)
        levels, memory = decoder.cfg.num_feature_levels, {}
        with torch.inference_mode():
            for i, event in enumerate(ready):
                level = i % levels
                if level not in memory:
                    memory[level] = decoder._level_memory(multi_scale, level)
                value, key = memory[level]
                attn = decoder.transformer_cross_attention_layers[i].multihead_attn
                attn.project_memory(key, value, cache.projections.setdefault(i, {}))
                event.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per row and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians over all calls)")
    args = parser.parse_args()
    predictor = build_predictor("seem-focalt-v1", weights=None, device="cpu")
    image = (np.random.default_rng(0).random((512, 683, 3)) * 255).astype(np.uint8)
    vocab = ["red circle", "blue square", "green triangle", "sky", "grass"]
    predictor.vocabulary_embeddings(vocab)
    features = predictor.encode([image])[0]
    phrase = Prompts(text="the red circle")
    ahead = _ProjectionsAhead()

    def first_phrase() -> None:
        predictor.decode(replace(features), phrase, vocabulary=vocab)

    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for threads, overlapped in ((1, False), (2, False), (2, True)):
            torch.set_num_threads(threads)
            ahead.on = overlapped
            if not overlapped:
                times.setdefault(f"conv_{threads}", []).append(_calibration_ms(3))
            first_phrase()  # warm-up
            key = f"phrase_{threads}" + ("_overlapped" if overlapped else "")
            times.setdefault(key, []).extend(_wall_ms(first_phrase) for _ in range(args.repeats))
    _report({k: statistics.median(v) for k, v in times.items()}, args)


def _wall_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def _report(ms: dict[str, float], args: argparse.Namespace) -> None:
    conv = REFERENCE_MS["conv3x3_512_stride4"]
    print(f"torch {torch.__version__}; {args.rounds} interleaved rounds, medians (conv: of 3 per round; "
          f"phrase: of {args.repeats} per round)")
    print(f"{'what':<44}{'1 thread ms':>13}{'2 threads ms':>14}{'1 -> 2 speed-up':>17}")
    for label, one, two in (("calibration conv (3x3, 512 -> 512, stride 4)", ms["conv_1"], ms["conv_2"]),
                            ("first phrase on an image", ms["phrase_1"], ms["phrase_2"])):
        print(f"{label:<44}{one:>13.1f}{two:>14.1f}{one / two:>16.2f}x")
    print(f"{'first phrase, projections on a second thread':<44}{'':>13}{ms['phrase_2_overlapped']:>14.1f}"
          f"{ms['phrase_1'] / ms['phrase_2_overlapped']:>16.2f}x")
    print("in reference-machine ms (phrase / (conv / 252 ms)) at the same thread count:")
    for threads in (1, 2):
        print(f"  {threads} thread(s): {ms[f'phrase_{threads}'] / (ms[f'conv_{threads}'] / conv):.1f}")
    print(f"  2 threads, projections on a second thread: {ms['phrase_2_overlapped'] / (ms['conv_2'] / conv):.1f}")


if __name__ == "__main__":
    main()
