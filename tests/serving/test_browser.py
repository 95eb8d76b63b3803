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
from pathlib import Path

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
    """A new page at the web page's URL; segment requests go to `sent`, page errors to `errors`."""
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: sent.append(json.loads(r.post_data))
            if r.url.endswith("/v1/segment") and r.post_data else None)
    page.goto(serving.url("/"))
    return page


def test_web_page_round_after_round(serving: ServingEnv, chromium: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from training.shapes_world import generate_scene

    scene = generate_scene(5)
    image_path = tmp_path / "scene5.png"
    image_path.write_bytes(png_bytes(scene.image))
    target = scene.things[0]
    inside = point_in(scene.mask(target.id))
    outside = point_in(~scene.mask(target.id))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    sent: list[dict] = []
    errors: list[str] = []
    with sync_playwright() as p:
        context = open_context(p, chromium, tmp_path / "profile")
        try:
            page = watched_page(context, serving, sent, errors)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.set_input_files("#file", str(image_path))
            page.wait_for_function("document.getElementById('status').textContent.includes('ready')", timeout=60_000)

            def at(xy: list[float]) -> dict:
                """Image pixel -> position on the (CSS-scaled) overlay canvas."""
                box = page.locator("#overlay").bounding_box()
                assert box is not None
                return {"x": (xy[0] + 0.5) * box["width"] / scene.width,
                        "y": (xy[1] + 0.5) * box["height"] / scene.height}

            def drag(start: dict, end: dict, steps: int) -> None:
                """Press at `start`, move to `end`, release (positions as `at` gives them)."""
                box = page.locator("#overlay").bounding_box()
                page.mouse.move(box["x"] + start["x"], box["y"] + start["y"])
                page.mouse.down()
                page.mouse.move(box["x"] + end["x"], box["y"] + end["y"], steps=steps)
                page.mouse.up()

            def wait_round(n: int) -> None:
                page.wait_for_function(f"window.seem.round === {n} && !window.seem.busy", timeout=60_000)

            # Round 1: a positive click -> a mask and its label appear.
            page.locator("#overlay").click(position=at(inside))
            wait_round(1)
            assert int(page.locator("#overlay").get_attribute("data-mask-area")) > 0
            label = page.locator("#result").inner_text()
            assert label and "px" in label, label
            page.screenshot(path=str(ARTIFACTS / "webpage-click.png"), full_page=True)

            # Round 2: a negative click (shift) sends both clicks and the last mask back.
            page.locator("#overlay").click(position=at(outside), modifiers=["Shift"])
            wait_round(2)
            assert sent[-1]["image_id"] == page.evaluate("window.seem.imageId")
            assert [q["positive"] for q in sent[-1]["prompts"]] == [True, False]
            assert sent[-1]["previous_mask"]["size"] == [scene.height, scene.width]

            # Round 3: drag a box.
            page.check("input[name=tool][value=box]")
            x, y, w, h = target.bbox
            start, end = at([x, y]), at([x + w - 1, y + h - 1])
            drag(start, end, steps=5)
            wait_round(3)
            assert sent[-1]["prompts"][-1]["type"] == "box"

            # Round 4: a scribble across the object.
            page.check("input[name=tool][value=scribble]")
            a, b = at([x + w * 0.3, y + h * 0.5]), at([x + w * 0.7, y + h * 0.5])
            drag(a, b, steps=8)
            wait_round(4)
            assert sent[-1]["prompts"][-1]["type"] == "scribble"
            assert len(sent[-1]["prompts"][-1]["path"]) >= 2

            # Round 5: a phrase joins the prompts.
            page.fill("#text", target.category)
            page.click("#text-go")
            wait_round(5)
            assert sent[-1]["prompts"][0] == {"type": "text", "text": target.category}
            assert int(page.locator("#overlay").get_attribute("data-mask-area")) > 0
            page.screenshot(path=str(ARTIFACTS / "webpage.png"), full_page=True)

            page.click("#reset")
            assert page.evaluate("window.seem.round") == 0
            assert page.locator("#overlay").get_attribute("data-mask-area") == "0"
            assert page.locator("#prompt-list li").count() == 0
        finally:
            context.close()
    assert not errors, errors
    assert (ARTIFACTS / "webpage.png").stat().st_size > 10_000
