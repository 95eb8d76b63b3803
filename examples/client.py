"""A minimal seem-ray HTTP client: upload an image, click twice (the second round sends the
first answer's mask back), then ask for every segment. docs/api.md describes the API.

    python examples/client.py photo.png --x 120 --y 80 [--url http://127.0.0.1:8000] [--key KEY]

Every request about an image carries `Serve-Multiplexed-Model-Id: <image_id>`, so Serve's
proxy sends it straight to the replica that holds the image's features (docs/api.md,
"Routing header"). Leaving the header out still works, one hop slower.
"""
from __future__ import annotations

import argparse
import mimetypes
import sys
from typing import Any

import requests

ROUTING_HEADER = "Serve-Multiplexed-Model-Id"


class SeemClient:
    """One keep-alive connection to a seem-ray service."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def _post(self, path: str, image_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if image_id:
            headers[ROUTING_HEADER] = image_id
        r = self.session.post(self.url + path, headers=headers, timeout=120, **kwargs)
        if r.status_code >= 400:  # every error body is {"error": {"code", "message"}}
            error = r.json().get("error", {})
            raise RuntimeError(f"{r.status_code} {error.get('code')}: {error.get('message')}")
        return r.json()

    def upload(self, data: bytes, content_type: str = "image/png") -> dict[str, Any]:
        """POST /v1/images: {"image_id", "width", "height", "cached"}."""
        return self._post("/v1/images", data=data, headers={"Content-Type": content_type})

    def segment(self, image_id: str, prompts: list[dict[str, Any]], previous_mask: dict | None = None,
                max_masks: int = 1) -> dict[str, Any]:
        """POST /v1/segment: masks for prompts that describe one object."""
        body: dict[str, Any] = {"image_id": image_id, "prompts": prompts, "max_masks": max_masks}
        if previous_mask is not None:
            body["previous_mask"] = previous_mask
        return self._post("/v1/segment", image_id, json=body)

    def panoptic(self, image_id: str, vocabulary: list[str] | None = None) -> dict[str, Any]:
        """POST /v1/panoptic: every segment with a label."""
        body: dict[str, Any] = {"image_id": image_id}
        if vocabulary:
            body["vocabulary"] = vocabulary
        return self._post("/v1/panoptic", image_id, json=body)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("--x", type=float, required=True)
    p.add_argument("--y", type=float, required=True)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--key", help="API key (Authorization: Bearer)")
    args = p.parse_args()
    client = SeemClient(args.url, args.key)
    with open(args.image, "rb") as f:
        info = client.upload(f.read(), mimetypes.guess_type(args.image)[0] or "image/png")
    image_id = info["image_id"]
    print(f"image {image_id[:12]}… {info['width']} x {info['height']} (cached: {info['cached']})")
    clicks = [{"type": "point", "xy": [args.x, args.y]}]
    first = client.segment(image_id, clicks)
    best = first["masks"][0]
    print(f"click: {best['label']} area {best['area']} px, {first['timings_ms']['total']:.1f} ms in the service")
    second = client.segment(image_id, clicks, previous_mask=best["rle"])  # round 2: the memory prompt
    print(f"round 2: area {second['masks'][0]['area']} px")
    for seg in client.panoptic(image_id)["segments"]:
        print(f"segment {seg['id']}: {seg['label']} ({seg['area']} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
