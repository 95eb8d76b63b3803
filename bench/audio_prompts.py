"""Speech recognition cost of audio prompts in the serving path (the default recogniser).

Runs the ingress's own transcription code (`serving.audio.Transcriber.resolve`: base64,
decoding, resampling, PocketSphinx constrained by seem-tiny's vocabulary) on the
espeak-ng corpus of the tests (96 colour + shape phrases, 16 / 22.05 kHz) in one process,
one request at a time, and prints the milliseconds of recognition per second of speech,
and how many transcripts name their phrase. With `--url`, the same requests go to a
running `seem serve` instead and the ingress's `timings_ms.transcribe` is read back.

    .venv/bin/python bench/audio_prompts.py [--repeats 1] [--url http://127.0.0.1:8000 --image scene.png]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.speech_corpus import make_corpus  # noqa: E402


def _local(corpus: list, repeats: int) -> list[tuple[float, str]]:
    from serving.audio import Transcriber
    from serving.config import ServeConfig
    from serving.schemas import SegmentRequest

    transcriber = Transcriber(ServeConfig())
    transcriber._ready.wait()  # load time is not recognition time
    out = []
    for spoken in corpus * repeats:
        request = SegmentRequest.model_validate({"image_id": "0" * 64, "prompts": [
            {"type": "audio", "data": base64.b64encode(spoken.path.read_bytes()).decode()}]})
        started = time.perf_counter()
        _, transcripts = asyncio.run(transcriber.resolve(request))
        out.append(((time.perf_counter() - started) * 1000, transcripts[0]))
    return out


def _remote(corpus: list, repeats: int, url: str, image: Path) -> list[tuple[float, str]]:
    import requests

    image_id = requests.post(f"{url}/v1/images", data=image.read_bytes(),
                             headers={"Content-Type": "image/png"}, timeout=60).json()["image_id"]
    out = []
    for spoken in corpus * repeats:
        body = {"image_id": image_id, "prompts": [
            {"type": "audio", "data": base64.b64encode(spoken.path.read_bytes()).decode()}]}
        answer = requests.post(f"{url}/v1/segment", json=body, timeout=60).json()
        out.append((answer["timings_ms"]["transcribe"], answer["transcripts"][0]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--url", help="a running seem serve (else in process)")
    parser.add_argument("--image", type=Path, help="with --url: the image to prompt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        corpus = make_corpus(Path(folder))
        seconds = sum(soundfile.info(str(s.path)).duration for s in corpus) * args.repeats
        results = _remote(corpus, args.repeats, args.url, args.image) if args.url else _local(corpus, args.repeats)
    total_ms = sum(ms for ms, _ in results)
    named = sum(s.named in text for s, (_, text) in zip(corpus * args.repeats, results))
    print(json.dumps({"requests": len(results), "speech_s": round(seconds, 1),
                      "ms_per_speech_s": round(total_ms / seconds, 1),
                      "median_request_ms": round(sorted(ms for ms, _ in results)[len(results) // 2], 1),
                      "named": f"{named}/{len(results)}", "where": args.url or "in process (serving.audio)"}))


if __name__ == "__main__":
    main()
