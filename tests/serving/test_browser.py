"""The web page in headless Chromium (Debian's chromium, driven by Playwright).

Upload an image, click, see a labelled mask; continue with a negative click (the page must
send previous_mask), a box, a scribble and a phrase; reset. Screenshots are kept under
artifacts/serving/. Playwright never downloads a browser here: it is pointed at the
system chromium, installed by this set-up when missing (as `make test` does).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from .conftest import API_KEY, ServingEnv, png_bytes
from .test_http_api import point_in

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "serving"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists() and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the web-page test: apt-get install chromium (make test does)")
    return CHROMIUM


def open_context(playwright, chromium: str, profile: Path, extra_flags: tuple[str, ...] = ()):  # noqa: ANN001, ANN201
    """A headless Chromium context on the page's server. Basic auth with the API key as
    password: how a person opens the page on a server with keys."""
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=chromium, headless=True, args=FLAGS + list(extra_flags),
        http_credentials={"username": "tester", "password": API_KEY}, viewport={"width": 1200, "height": 800})


def watched_page(context, serving: ServingEnv, sent: list[dict], errors: list[str]):  # noqa: ANN001, ANN201
    """A new page at the web page's URL; segment requests (image and video) go to `sent`,
    page errors to `errors`."""
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: sent.append(json.loads(r.post_data))
            if r.url.endswith("/segment") and r.post_data else None)
    page.goto(serving.url("/"))
    return page


@contextmanager
def page_session(serving: ServingEnv, chromium: str, tmp_path: Path) -> Iterator[tuple[Any, list[dict], list[str]]]:
    """(page, sent requests, errors) in a fresh headless Chromium; fails the test if the page
    logged an error or threw."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sent: list[dict] = []
    errors: list[str] = []
    with sync_playwright() as p:
        context = open_context(p, chromium, tmp_path / "profile")
        try:
            page = watched_page(context, serving, sent, errors)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            yield page, sent, errors
        finally:
            context.close()
    assert not errors, errors


def test_web_page_round_after_round(serving: ServingEnv, chromium: str, tmp_path: Path) -> None:
    from training.shapes_world import generate_scene

    scene = generate_scene(5)
    image_path = tmp_path / "scene5.png"
    image_path.write_bytes(png_bytes(scene.image))
    target = scene.things[0]
    inside = point_in(scene.mask(target.id))
    outside = point_in(~scene.mask(target.id))

    with page_session(serving, chromium, tmp_path) as (page, sent, _):
        page.set_input_files("#file", str(image_path))
        page.wait_for_function("document.getElementById('status').textContent.includes('ready')", timeout=60_000)
        d = Driver(page, scene, sent)

        # Round 1: a positive click -> a mask and its label appear.
        d.click(inside)
        d.wait_round(1)
        assert d.mask_area() > 0
        label = page.locator("#result").inner_text()
        assert label and "px" in label, label
        page.screenshot(path=str(ARTIFACTS / "webpage-click.png"), full_page=True)

        # Round 2: a negative click (shift) sends both clicks and the last mask back.
        d.click(outside, modifiers=("Shift",))
        d.wait_round(2)
        assert sent[-1]["image_id"] == page.evaluate("window.seem.imageId")
        assert [q["positive"] for q in sent[-1]["prompts"]] == [True, False]
        assert sent[-1]["previous_mask"]["size"] == [scene.height, scene.width]

        # Round 3: drag a box.
        page.check("input[name=tool][value=box]")
        x, y, w, h = target.bbox
        d.drag([[x, y], [x + w - 1, y + h - 1]])
        d.wait_round(3)
        assert sent[-1]["prompts"][-1]["type"] == "box"

        # Round 4: a scribble across the object.
        page.check("input[name=tool][value=scribble]")
        d.drag([[x + w * 0.3, y + h * 0.5], [x + w * 0.7, y + h * 0.5]])
        d.wait_round(4)
        assert sent[-1]["prompts"][-1]["type"] == "scribble"
        assert len(sent[-1]["prompts"][-1]["path"]) >= 2

        # Round 5: a phrase joins the prompts.
        page.fill("#text", target.category)
        page.click("#text-go")
        d.wait_round(5)
        assert sent[-1]["prompts"][0] == {"type": "text", "text": target.category}
        assert d.mask_area() > 0
        page.screenshot(path=str(ARTIFACTS / "webpage.png"), full_page=True)

        page.click("#reset")
        assert page.evaluate("window.seem.round") == 0
        assert page.locator("#overlay").get_attribute("data-mask-area") == "0"
        assert page.locator("#prompt-list li").count() == 0
    assert (ARTIFACTS / "webpage.png").stat().st_size > 10_000


# --------------------------------------------------------------------------- the page's tools
SAMPLES = Path(__file__).resolve().parents[2] / "serving" / "static" / "samples"


def sample_scene(i: int):  # noqa: ANN201
    """The Shapes World scene of the page's bundled sample-<i>.png (pipeline/samples/make_samples.py --web)."""
    from pipeline.samples.make_samples import WEB_SCENES, WEB_SIZE
    from training.shapes_world import generate_scene, split_seeds

    seed = split_seeds("test", WEB_SCENES.stop)[WEB_SCENES][i - 1]
    return generate_scene(seed, size=WEB_SIZE)


class Driver:
    """Drives the page in image pixels of `scene` and waits for its answers."""

    def __init__(self, page, scene, sent: list[dict]) -> None:  # noqa: ANN001
        self.page, self.scene, self.sent = page, scene, sent

    def at(self, xy: list[float], selector: str = "#overlay", size: tuple[int, int] | None = None) -> dict:
        box = self.page.locator(selector).bounding_box()
        h, w = size or (self.scene.height, self.scene.width)
        return {"x": box["x"] + (xy[0] + 0.5) * box["width"] / w, "y": box["y"] + (xy[1] + 0.5) * box["height"] / h}

    def click(self, xy: list[float], modifiers: tuple[str, ...] = ()) -> None:
        """A click at image pixel `xy`, with `modifiers` (e.g. "Shift") held."""
        p = self.at(xy)
        for key in modifiers:
            self.page.keyboard.down(key)
        self.page.mouse.click(p["x"], p["y"])
        for key in reversed(modifiers):
            self.page.keyboard.up(key)

    def drag(self, path: list[list[float]], selector: str = "#overlay", size: tuple[int, int] | None = None) -> None:
        points = [self.at(xy, selector, size) for xy in path]
        self.page.mouse.move(points[0]["x"], points[0]["y"])
        self.page.mouse.down()
        for p in points[1:]:
            self.page.mouse.move(p["x"], p["y"], steps=4)
        self.page.mouse.up()

    def wait_round(self, n: int) -> None:
        self.page.wait_for_function(f"window.seem.round === {n} && !window.seem.busy", timeout=60_000)

    def mask_area(self) -> int:
        return int(self.page.locator("#overlay").get_attribute("data-mask-area"))

    def items(self, selector: str) -> list[str]:
        return self.page.locator(f"{selector} li").all_inner_texts()


def polygon_and_new_object(d: Driver) -> None:
    """Polygon (corners clicked, closed on the first one), then "New object" keeps it."""
    thing = d.scene.things[0]
    x, y, w, h = thing.bbox
    corners = [[x + w * 0.25, y + h * 0.25], [x + w * 0.75, y + h * 0.25], [x + w * 0.75, y + h * 0.75],
               [x + w * 0.25, y + h * 0.75]]
    d.page.check("input[name=tool][value=polygon]")
    for c in corners:
        d.click(c)
    assert d.page.evaluate("window.seem.round") == 0, "an open polygon must not be sent"
    d.click(corners[0])
    d.wait_round(1)
    sent = d.sent[-1]["prompts"]
    assert [q["type"] for q in sent] == ["polygon"] and len(sent[0]["points"]) == 4
    assert d.mask_area() > 0
    assert d.items("#prompt-list") == [d.items("#prompt-list")[0]] and "polygon, 4 corners" in d.items("#prompt-list")[0]
    d.page.click("#new-object")
    assert d.page.evaluate("window.seem.round") == 0 and d.items("#prompt-list") == []
    assert len(d.items("#object-list")) == 1 and d.page.get_attribute("#overlay", "data-objects") == "1"


def brush_mask(d: Driver) -> None:
    """The mask brush: a painted stroke is sent as a mask prompt of the image's size."""
    from model.rle import decode_mask

    thing = d.scene.things[1]
    x, y, w, h = thing.bbox
    stroke = [[x + w * 0.3, y + h * 0.5], [x + w * 0.7, y + h * 0.5]]
    d.page.check("input[name=tool][value=mask]")
    d.drag(stroke)
    d.wait_round(1)
    prompt = d.sent[-1]["prompts"][-1]
    assert prompt["type"] == "mask" and set(prompt) == {"type", "rle", "positive"}
    painted = decode_mask(prompt["rle"], [d.scene.height, d.scene.width])
    cx, cy = (int(v) for v in stroke[0])
    assert painted[cy, cx] and painted[cy, int(stroke[1][0])], "the stroke's pixels are in the sent mask"
    assert painted.sum() < 0.2 * painted.size, "only the stroke is painted"
    assert d.mask_area() > 0
    d.page.click("#new-object")


def phrase_after_click_and_removal(d: Driver) -> None:
    """A phrase typed after a click starts a new object (Enter) unless "Add to this object"
    is pressed; the page says which. A prompt's × takes it away and the rest is sent again."""
    from .test_http_api import point_in

    thing = d.scene.things[2]
    d.page.check("input[name=tool][value=point]")
    d.click(point_in(d.scene.mask(thing.id)))
    d.wait_round(1)
    assert "joins" in d.page.inner_text("#text-hint")
    d.page.fill("#text", thing.category)
    d.page.press("#text", "Enter")
    d.wait_round(1)
    assert d.sent[-1]["prompts"] == [{"type": "text", "text": thing.category}], "the click stayed with its own object"
    assert "previous_mask" not in d.sent[-1]
    assert len(d.items("#object-list")) == 3
    d.click(point_in(d.scene.mask(thing.id)))
    d.wait_round(2)
    assert [q["type"] for q in d.sent[-1]["prompts"]] == ["text", "point"]
    d.page.locator("#prompt-list li").nth(1).locator("button.remove").click()
    d.wait_round(1)
    assert d.sent[-1]["prompts"] == [{"type": "text", "text": thing.category}]
    assert len(d.items("#prompt-list")) == 1
    d.page.locator("#object-list li").nth(1).locator("button.remove").click()
    assert len(d.items("#object-list")) == 2, "the brush object was taken away"


def referring_region(d: Driver, reference) -> None:  # noqa: ANN001
    """A box on a second image (a bundled sample) becomes a referring prompt."""
    d.page.click("#new-object")
    d.page.click("#reference summary")
    d.page.click(".ref-sample[data-src$='sample-2.png']")
    d.page.wait_for_function("window.seem.reference && window.seem.reference.width > 0", timeout=60_000)
    thing = next(t for t in reference.things if t.category in {u.category for u in d.scene.things})
    x, y, w, h = thing.bbox
    d.drag([[x, y], [x + w - 1, y + h - 1]], "#ref-canvas", (reference.height, reference.width))
    d.page.click("#ref-use")
    d.wait_round(1)
    prompt = d.sent[-1]["prompts"][-1]
    assert prompt["type"] == "referring" and prompt["image_id"] != d.page.evaluate("window.seem.imageId")
    assert prompt["region"]["type"] == "box"
    assert d.mask_area() > 0
    assert "reference image" in d.items("#prompt-list")[0]


def downloads(d: Driver, tmp_path: Path) -> None:
    """PNG (one colour per object on black) and COCO JSON of the kept objects + the current one."""
    import numpy as np
    from PIL import Image

    from model.rle import decode_mask

    with d.page.expect_download() as png_download:
        d.page.click("#download-png")
    with d.page.expect_download() as coco_download:
        d.page.click("#download-coco")
    assert png_download.value.suggested_filename == "sample-1-masks.png"
    png = np.asarray(Image.open(png_download.value.path()).convert("RGB"))
    coco = json.loads(Path(coco_download.value.path()).read_text())
    n_objects = int(d.page.get_attribute("#overlay", "data-objects"))
    assert len(coco["annotations"]) == n_objects + 1
    assert coco["images"] == [{"id": 1, "file_name": "sample-1.png", "width": d.scene.width, "height": d.scene.height}]
    union = np.zeros((d.scene.height, d.scene.width), bool)
    for a in coco["annotations"]:
        m = decode_mask(a["segmentation"], [d.scene.height, d.scene.width])
        assert a["area"] == int(m.sum()) > 0
        union |= m
    assert png.shape == union.shape + (3,)
    assert np.array_equal(png.any(axis=2), union), "the PNG shows exactly the downloaded masks"
    last = decode_mask(coco["annotations"][-1]["segmentation"])
    assert (png[last] == coco["annotations"][-1]["color"]).all(), "the current object is drawn last in its colour"


def segment_everything(d: Driver) -> None:
    """Panoptic with an edited vocabulary replaces the objects with labelled segments."""
    vocabulary = sorted({t.category for t in d.scene.things}) + d.scene.layout.split(":")[1].split("/")
    d.page.fill("#vocabulary", ", ".join(vocabulary))
    d.page.click("#everything")
    d.page.wait_for_function("!window.seem.busy && document.getElementById('status').textContent.includes('segments')",
                             timeout=60_000)
    labels = [li.split(" · ")[0] for li in d.items("#object-list")]
    assert labels and set(labels) <= set(vocabulary), labels
    assert int(d.page.get_attribute("#overlay", "data-objects")) == len(labels)


def test_web_page_tools(serving: ServingEnv, chromium: str, tmp_path: Path) -> None:
    """Every tool of the page in one session on a bundled sample: polygon, new object, mask
    brush, a phrase after a click, removing a prompt and an object, a referring region from a
    second image, downloads, segment everything; each round's latency is listed."""
    with page_session(serving, chromium, tmp_path) as (page, sent, _):
        routed: list[str | None] = []  # the routing header of each segment request (docs/api.md)
        page.on("request", lambda r: routed.append(r.headers.get("serve-multiplexed-model-id"))
                if r.url.endswith("/v1/segment") else None)
        page.click(".sample[data-src$='sample-1.png']")
        page.wait_for_function("document.getElementById('status').textContent.includes('ready')", timeout=60_000)
        d = Driver(page, sample_scene(1), sent)
        polygon_and_new_object(d)
        brush_mask(d)
        phrase_after_click_and_removal(d)
        referring_region(d, sample_scene(2))
        downloads(d, tmp_path)
        rounds = len(sent)
        latencies = d.items("#latency")
        assert len(latencies) == min(rounds, 8) and all(" ms" in t for t in latencies), latencies
        page.screenshot(path=str(ARTIFACTS / "webpage-tools.png"), full_page=True)
        assert set(routed) == {page.evaluate("window.seem.imageId")}, routed
        segment_everything(d)
        page.screenshot(path=str(ARTIFACTS / "webpage-everything.png"), full_page=True)


def test_web_page_video(serving: ServingEnv, chromium: str, tmp_path: Path) -> None:
    """Load a video, step to frame 2, click the object, propagate, step through and play:
    the masks drawn over the frames are the ones the server sent, and they follow the object."""
    from model.rle import decode_mask

    from .test_video_api import FRAMES, sequence_mp4

    seq, data = sequence_mp4()
    path = tmp_path / "moving.mp4"
    path.write_bytes(data)
    h, w = seq.frames.shape[1:3]
    prompted = 2
    with page_session(serving, chromium, tmp_path) as (page, sent, _):
        page.set_input_files("#video-file", str(path))
        page.wait_for_function("window.seem.video.ready", timeout=30_000)
        d = Driver(page, None, [])
        for _ in range(prompted):
            page.click("#video-next")
        page.wait_for_function(f"document.getElementById('video-overlay').dataset.frame === '{prompted}'")
        click = seq.click(prompted)
        xy = d.at([click.x, click.y], "#video-overlay", (h, w))
        page.mouse.click(xy["x"], xy["y"])
        assert d.items("#video-prompts") and "on frame 3" in d.items("#video-prompts")[0]
        page.click("#video-propagate")
        page.wait_for_function("window.seem.video.answer && !window.seem.video.busy", timeout=120_000)
        (obj,) = sent[-1]["objects"]
        assert obj["prompts"][0]["type"] == "point" and int(obj["time_s"] * 8 + 1e-6) == prompted
        answer = page.evaluate("window.seem.video.answer")
        assert len(answer["frames"]) == FRAMES and answer["frames"][0]["objects"] == [], "nothing before the prompt"
        # Step to the last frame: the mask drawn there is the server's, on the moved object.
        for _ in range(FRAMES - 1 - prompted):
            page.click("#video-next")
        page.wait_for_function(f"document.getElementById('video-overlay').dataset.frame === '{FRAMES - 1}'")
        last = decode_mask(answer["frames"][-1]["objects"][0]["rle"], [h, w])
        assert int(page.get_attribute("#video-overlay", "data-mask-area")) == int(last.sum()) > 0
        iou = (last & seq.target[-1]).sum() / (last | seq.target[-1]).sum()
        assert iou > 0.5, iou
        page.screenshot(path=str(ARTIFACTS / "webpage-video.png"), full_page=True)
        # Play from the start: frames are drawn with their masks as they are presented.
        page.evaluate("window.seem.video.drawn.clear(); document.getElementById('video').currentTime = 0")
        page.click("#video-play")
        page.wait_for_function("document.getElementById('video').ended", timeout=30_000)
        drawn = page.evaluate("[...window.seem.video.drawn]")
        assert len(drawn) >= 3, drawn
