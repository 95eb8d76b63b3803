"""Regenerate the bundled sample images of `seem demo` (run once; the outputs are committed).

    .venv/bin/python pipeline/samples/make_samples.py [--photos DIR]

- Six Shapes World scenes from the held-out *test* split (never seen in training), PNG.
- Three real photos from scikit-image's data folder (public domain / CC0, see README.md),
  re-saved as JPEG (quality 85, longest side at most 512 px). `--photos` is a folder
  holding `astronaut.png`, `coffee.png`, `chelsea.png`; get them offline from the
  scikit-image wheel:

      .venv/bin/pip download --no-deps scikit-image -d /tmp/ski
      unzip -o /tmp/ski/scikit_image-*.whl 'skimage/data/*.png' -d /tmp/ski/x
      .venv/bin/python pipeline/samples/make_samples.py --photos /tmp/ski/x/skimage/data

Without `--photos` only the scenes are (re)written. `--web serving/static/samples` writes
the web page's samples instead: three other test-split scenes (seeds 10-12 of the split, with
look-alike shapes), 256 x 192 so that each stays under 40 KB.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout

from training.shapes_world import generate_scene, split_seeds  # noqa: E402

NUM_SCENES = 6
WEB_SCENES = slice(9, 12)  # test-split seeds after the CLI's six; several look-alikes each
WEB_SIZE = (192, 256)      # (h, w): small bytes for a page that loads them on one click
PHOTOS = ("astronaut", "coffee", "chelsea")
MAX_SIDE = 512
JPEG_QUALITY = 85


def write_scenes(out: Path) -> list[Path]:
    """The first NUM_SCENES test-split scenes as `shapes-<i>.png`."""
    paths = []
    for i, seed in enumerate(split_seeds("test", NUM_SCENES)):
        scene = generate_scene(seed)
        path = out / f"shapes-{i + 1}.png"
        # optimize=True: smallest PNG at no quality cost (the package ships these bytes).
        Image.fromarray(scene.image).save(path, optimize=True)
        paths.append(path)
    return paths


def write_web_samples(out: Path) -> list[Path]:
    """The web page's one-click samples as `sample-<i>.png`."""
    paths = []
    for i, seed in enumerate(split_seeds("test", WEB_SCENES.stop)[WEB_SCENES]):
        path = out / f"sample-{i + 1}.png"
        Image.fromarray(generate_scene(seed, size=WEB_SIZE).image).save(path, optimize=True)
        paths.append(path)
    return paths


def write_photos(src: Path, out: Path) -> list[Path]:
    """The scikit-image photos as `<name>.jpg`, longest side <= MAX_SIDE."""
    paths = []
    for name in PHOTOS:
        im = Image.open(src / f"{name}.png").convert("RGB")
        scale = MAX_SIDE / max(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        path = out / f"{name}.jpg"
        im.save(path, quality=JPEG_QUALITY, optimize=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, help="folder with scikit-image's astronaut/coffee/chelsea PNGs")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--web", type=Path, help="write the web page's samples to this folder instead")
    args = parser.parse_args(argv)
    if args.web:
        args.web.mkdir(parents=True, exist_ok=True)
        for path in write_web_samples(args.web):
            print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    written = write_scenes(args.out)
    if args.photos:
        written += write_photos(args.photos, args.out)
    for path in written:
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
