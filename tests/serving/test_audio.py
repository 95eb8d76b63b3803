"""Audio prompts over HTTP against the running app (espeak-ng speech, the default recogniser).

The ingress transcribes each audio prompt (PocketSphinx constrained by seem-tiny's
vocabulary) and the decoder segments the transcript as a text prompt.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile

from tests.serving.conftest import LIMITS, ServingEnv, needs_weights, png_bytes
from tests.serving.test_browser import ARTIFACTS, chromium, open_context, watched_page  # noqa: F401 (a fixture)

pytestmark = needs_weights
SCENE = 7


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _wav(samples: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt)
    return buf.getvalue()


def _segment(serving: ServingEnv, image_id: str, prompt: dict):  # noqa: ANN202
    return serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [prompt]})


def _mask(body: dict) -> np.ndarray:
    from model.rle import decode_mask

    return decode_mask(body["masks"][0]["rle"]).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_spoken_phrases_segment_like_their_text(serving: ServingEnv, speech_corpus) -> None:  # noqa: ANN001
    """Every colour + shape phrase, spoken at 16 or 22.05 kHz: the transcript names the
    phrase for >= 80% of them, and for those the mask equals the text prompt's (IoU >= 0.9)."""
    _, image_id = serving.scene(SCENE)
    named, misses, low = 0, [], []
    for spoken in speech_corpus:
        r = _segment(serving, image_id, {"type": "audio", "data": _b64(spoken.path.read_bytes()), "language": "en"})
        assert r.status_code in (200, 422), r.text
        transcript = (r.json().get("transcripts") or [""])[0]
        if r.status_code != 200 or spoken.named not in transcript:
            misses.append((spoken.phrase, spoken.rate, transcript))
            continue
        named += 1
        text = _segment(serving, image_id, {"type": "text", "text": spoken.phrase})
        assert text.status_code == 200, text.text
        iou = _iou(_mask(r.json()), _mask(text.json()))
        if iou < 0.9:
            low.append((spoken.phrase, transcript, round(iou, 3)))
    assert {s.rate for s in speech_corpus} == {16_000, 22_050}
    assert named >= 0.8 * len(speech_corpus), f"{named}/{len(speech_corpus)} named; missed: {misses}"
    assert not low, f"audio and text masks differ: {low}"


def test_audio_composes_with_a_click_and_reports_the_transcript(serving: ServingEnv, speech_corpus) -> None:  # noqa: ANN001
    scene, image_id = serving.scene(SCENE)
    spoken = speech_corpus[0]
    body = {"image_id": image_id, "prompts": [
        {"type": "audio", "data": _b64(spoken.path.read_bytes())},
        {"type": "point", "xy": [scene.image.shape[1] / 2, scene.image.shape[0] / 2]}]}
    r = serving.post_json("/v1/segment", body)
    assert r.status_code == 200, r.text
    assert r.json()["transcripts"] == [spoken.phrase] and r.json()["masks"]


def _error(r) -> str:  # noqa: ANN001
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    return r.json()["error"]["code"]


def test_broken_audio_is_a_4xx_that_says_what_is_wrong(serving: ServingEnv, speech_corpus) -> None:  # noqa: ANN001
    _, image_id = serving.scene(SCENE)
    wav = speech_corpus[0].path.read_bytes()
    cases = {
        "not audio": ({"type": "audio", "data": _b64(b"this is plain text, not a sound file" * 4)}, "invalid_audio"),
        "truncated": ({"type": "audio", "data": _b64(wav[: len(wav) // 2])}, "invalid_audio"),
        "truncated ogg": ({"type": "audio", "data": _b64(_wav(np.zeros(16000), 16000, "OGG")[:200])}, "invalid_audio"),
        "bad base64": ({"type": "audio", "data": "this is not base64!!"}, "invalid_audio"),
        "too long": ({"type": "audio", "data": _b64(_wav(np.zeros(int(16000 * (LIMITS["max_audio_seconds"] + 1)),
                                                                  np.int16), 16000))}, "limit_exceeded"),
        "too large": ({"type": "audio", "data": _b64(b"RIFF" + bytes(LIMITS["max_audio_bytes"] + 10))},
                      "limit_exceeded"),
        "language": ({"type": "audio", "data": _b64(wav), "language": "fr"}, "invalid_audio"),
    }
    for name, (prompt, code) in cases.items():
        assert _error(_segment(serving, image_id, prompt)) == code, name
    both = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [
        {"type": "text", "text": "the red circle"}, {"type": "audio", "data": _b64(wav)}]})
    assert _error(both) == "invalid_prompt" and "text or audio" in both.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["silence", "hiss"])
def test_silence_is_no_speech_with_the_empty_transcript(serving: ServingEnv, kind: str) -> None:
    _, image_id = serving.scene(SCENE)
    rng = np.random.default_rng(0)
    samples = np.zeros(16000 * 2) if kind == "silence" else rng.standard_normal(16000 * 2) * 0.001
    r = _segment(serving, image_id, {"type": "audio", "data": _b64(_wav(samples, 16000))})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_speech", r.text
    assert r.json()["transcripts"] == [""]


def test_web_page_microphone(serving: ServingEnv, chromium: str, tmp_path) -> None:  # noqa: ANN001
    """The page's microphone button in headless Chromium, whose fake capture device plays a
    WAV file: the recording is sent, the transcript appears and a mask is drawn."""
    import subprocess

    from playwright.sync_api import sync_playwright

    from tests.speech_corpus import require_tools, speak
    from training.shapes_world import generate_scene

    require_tools()
    image_path = tmp_path / "scene.png"
    image_path.write_bytes(png_bytes(generate_scene(SCENE).image))
    # The phrase, then silence: the fake device loops the file, and the page records 3 s.
    said = speak("the red circle", tmp_path / "said.wav", 48_000)
    capture = tmp_path / "capture.wav"
    subprocess.run(["sox", str(said), "-b", "16", str(capture), "pad", "0.3", "3"], check=True, timeout=30)
    flags = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
             f"--use-file-for-fake-audio-capture={capture}")
    sent: list[dict] = []
    errors: list[str] = []
    with sync_playwright() as p:
        context = open_context(p, chromium, tmp_path / "profile", flags)
        try:
            context.grant_permissions(["microphone"], origin=serving.base_url)
            page = watched_page(context, serving, sent, errors)
            page.set_input_files("#file", str(image_path))
            page.wait_for_function("document.getElementById('status').textContent.includes('ready')", timeout=60_000)
            page.click("#mic")
            page.wait_for_function("window.seem.round === 1 && !window.seem.busy", timeout=60_000)
            assert sent and sent[-1]["prompts"][0]["type"] == "audio"
            assert "red circle" in page.locator("#transcript").inner_text()
            assert int(page.locator("#overlay").get_attribute("data-mask-area")) > 0
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "webpage-microphone.png"), full_page=True)
        finally:
            context.close()
    assert not errors, errors
