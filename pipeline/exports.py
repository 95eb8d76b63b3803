"""Outputs of `seem segment`: masks.parquet, COCO annotations.json, errors.parquet, overlays.

Everything is a pure function of the per-image results, sorted by URI, so re-running a
job over the same inputs writes byte-identical files (no timestamps, stable ids):

- image ids are 1..N over the segmented images in URI order;
- annotation / mask ids are 1..M in (image, mask index) order;
- category ids are 1..K for the vocabulary in its order, then the text prompts that
  are not vocabulary names, in the order given.

Files are published atomically through the store backends (`storage.open_store`),
so OUT may be a local folder or `s3://bucket/prefix`, and a reader never sees a partial
file.

masks.parquet, one row per mask:
    uri, sha256, image_id, mask_id, index (within the image), source ("panoptic"|"text"),
    prompt, label, class_label, category_id, score, label_score, bbox [x, y, w, h], area,
    rle {size: [h, w], counts: COCO compressed RLE string}
    prompt_id, annotation_id, object_id (prompted masks: the prompts file's line "id" /
    annotation id in annotations.json / "object_id"; null for panoptic and text masks)
errors.parquet, one row per failed item: uri, stage, reason, and for a prompts file's
    broken line or annotation its line number / annotation_id / prompt_id.
"""
from __future__ import annotations

import io
import json
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "MASKS_SCHEMA",
    "ERRORS_SCHEMA",
    "build_categories",
    "split_error",
    "masks_table",
    "errors_table",
    "coco_document",
    "prompted_masks_table",
    "filled_coco",
    "write_outputs",
    "render_overlay",
    "palette",
]

MASKS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("image_id", pa.int64()),
        ("mask_id", pa.int64()),
        ("index", pa.int32()),
        ("source", pa.string()),
        ("prompt", pa.string()),
        ("label", pa.string()),
        ("class_label", pa.string()),
        ("category_id", pa.int32()),
        ("score", pa.float64()),
        ("label_score", pa.float64()),
        ("bbox", pa.list_(pa.int32(), 4)),
        ("area", pa.int64()),
        ("rle", pa.struct([("size", pa.list_(pa.int32(), 2)), ("counts", pa.string())])),
        # Prompted masks (seem segment --prompts): which line / annotation asked for them.
        ("prompt_id", pa.string()),
        ("annotation_id", pa.int64()),
        ("object_id", pa.string()),
    ]
)

ERRORS_SCHEMA = pa.schema([
    ("uri", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
    # A prompts file's broken line (1-based) or annotation, and the line's "id".
    ("line", pa.int64()), ("annotation_id", pa.int64()), ("prompt_id", pa.string()),
])

_STAGES = ("list", "read", "decode", "encode", "store", "segment", "overlay", "prompts")


def build_categories(vocabulary: Sequence[str], stuff: Iterable[str], texts: Sequence[str],
                     panoptic: bool = True) -> list[dict[str, Any]]:
    """COCO categories: the vocabulary (when panoptic segmentation runs), then each text
    prompt that is not already a vocabulary name."""
    stuff = set(stuff)
    cats: list[dict[str, Any]] = []
    names: set[str] = set()
    if panoptic:
        for name in vocabulary:
            thing = name not in stuff
            cats.append({"id": len(cats) + 1, "name": name, "supercategory": "thing" if thing else "stuff",
                         "isthing": int(thing)})
            names.add(name)
    for text in texts:
        if text not in names:
            cats.append({"id": len(cats) + 1, "name": text, "supercategory": "text prompt", "isthing": 1})
            names.add(text)
    return cats


def split_error(message: str) -> tuple[str, str]:
    """"decode: truncated JPEG" -> ("decode", "truncated JPEG") (see stages.error_text)."""
    stage, sep, reason = str(message).partition(": ")
    if sep and stage in _STAGES:
        return stage, reason
    return "unknown", str(message)


def masks_table(segmented: pa.Table) -> pa.Table:
    """One row per mask from per-image results (`stages.SEGMENTED_SCHEMA`, status ok),
    which must already be sorted by uri with image ids assigned."""
    cols: dict[str, list[Any]] = {f.name: [] for f in MASKS_SCHEMA}
    mask_id = 0
    for img in segmented.select(["uri", "sha256", "image_id", "width", "height", "masks"]).to_pylist():
        for m in sorted(img["masks"], key=lambda m: m["index"]):
            mask_id += 1
            cols["uri"].append(img["uri"])
            cols["sha256"].append(img["sha256"])
            cols["image_id"].append(img["image_id"])
            cols["mask_id"].append(mask_id)
            for name in ("index", "source", "prompt", "label", "class_label", "category_id", "score",
                         "label_score", "bbox", "area"):
                cols[name].append(m[name])
            cols["rle"].append({"size": [img["height"], img["width"]], "counts": m["rle_counts"]})
            for name in ("prompt_id", "annotation_id", "object_id"):
                cols[name].append(None)
    return pa.Table.from_pydict(cols, schema=MASKS_SCHEMA)


def errors_table(rows: Iterable[tuple[str, str]], entry_errors: Iterable[dict[str, Any]] = ()) -> pa.Table:
    """errors.parquet from (uri, "<stage>: <reason>") pairs, sorted by uri, one per uri,
    then a prompts file's failed entries (dicts with uri, error, line, annotation_id,
    prompt_id) in file order."""
    seen: dict[str, tuple[str, str]] = {}
    for uri, message in rows:
        seen.setdefault(uri, split_error(message))
    out = [{"uri": u, "stage": seen[u][0], "reason": seen[u][1]} for u in sorted(seen)]
    for e in entry_errors:
        stage, reason = split_error(e["error"])
        out.append({"uri": e.get("uri"), "stage": stage, "reason": reason, "line": e.get("line"),
                    "annotation_id": e.get("annotation_id"), "prompt_id": e.get("prompt_id")})
    return pa.Table.from_pylist(out, schema=ERRORS_SCHEMA)


def coco_document(segmented: pa.Table, masks: pa.Table, categories: list[dict[str, Any]],
                  info: dict[str, Any]) -> dict[str, Any]:
    """The COCO instances document (RLE segmentations) for the segmented images."""
    images = []
    for img in segmented.select(["image_id", "uri", "sha256", "width", "height", "overlay"]).to_pylist():
        entry = {"id": img["image_id"], "file_name": img["uri"], "width": img["width"], "height": img["height"],
                 "sha256": img["sha256"]}
        if img["overlay"]:
            entry["overlay"] = img["overlay"]
        images.append(entry)
    annotations = []
    for m in masks.to_pylist():
        ann = {
            "id": m["mask_id"],
            "image_id": m["image_id"],
            "category_id": m["category_id"],
            "segmentation": {"size": list(m["rle"]["size"]), "counts": m["rle"]["counts"]},
            "area": m["area"],
            "bbox": list(m["bbox"]),
            "iscrowd": 0,
            "score": m["score"],
            "label": m["label"],
            "source": m["source"],
        }
        if m["prompt"] is not None:
            ann["prompt"] = m["prompt"]
        for name in ("prompt_id", "object_id"):
            if m.get(name) is not None:
                ann[name] = m[name]
        annotations.append(ann)
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def prompted_masks_table(done: Sequence[dict[str, Any]]) -> pa.Table:
    """masks.parquet of a prompted job: one row per segmented entry, in `done`'s order.

    Each item: uri, sha256, image_id, width, height, prompts (canonical JSON), label,
    category_id, prompt_id, annotation_id, object_id, and `result` (a `prompted.PROMPT_RESULT`
    row with status ok)."""
    rows, per_image = [], {}
    for mask_id, d in enumerate(done, start=1):
        r = d["result"]
        index = per_image[d["uri"]] = per_image.get(d["uri"], -1) + 1
        rows.append({
            "uri": d["uri"], "sha256": d["sha256"], "image_id": d["image_id"], "mask_id": mask_id, "index": index,
            "source": "prompt", "prompt": d["prompts"], "label": d["label"], "class_label": r["class_label"],
            "category_id": d["category_id"], "score": r["score"], "label_score": r["label_score"], "bbox": r["bbox"],
            "area": r["area"], "rle": {"size": [d["height"], d["width"]], "counts": r["rle_counts"]},
            "prompt_id": d["prompt_id"], "annotation_id": d["annotation_id"] if d["annotation_id"] is not None else mask_id,
            "object_id": d["object_id"],
        })
    return pa.Table.from_pylist(rows, schema=MASKS_SCHEMA)


def filled_coco(document: dict[str, Any], masks: pa.Table, failed: dict[int, str]) -> dict[str, Any]:
    """A COCO prompts file with each segmented annotation's `segmentation` (compressed RLE),
    `area` and `score` filled in; every other id, category and field kept as it was. An
    annotation that could not be segmented keeps its fields and gains `error` (the reason)."""
    by_id = {m["annotation_id"]: m for m in masks.select(["annotation_id", "rle", "area", "score"]).to_pylist()}
    out = dict(document)
    annotations = []
    for ann in document.get("annotations", []):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        m = by_id.get(ann_id)
        if m is not None:
            ann = {**ann, "segmentation": {"size": list(m["rle"]["size"]), "counts": m["rle"]["counts"]},
                   "area": m["area"], "score": m["score"]}
        elif ann_id in failed:
            ann = {**ann, "error": failed[ann_id]}
        annotations.append(ann)
    out["annotations"] = annotations
    return out


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    # Deterministic bytes: no created_by variance beyond the pyarrow version, no stats
    # depending on chunking (one row group per file at these sizes).
    pq.write_table(table.combine_chunks(), sink, compression="zstd" if pa.Codec.is_available("zstd") else "snappy")
    return sink.getvalue().to_pybytes()


def write_outputs(out: Any, masks: pa.Table, errors: pa.Table, coco: dict[str, Any]) -> dict[str, str]:
    """Publish masks.parquet, annotations.json and errors.parquet atomically to `out`
    (an `ObjectStore`); returns name -> URI/path."""
    files = {
        "masks.parquet": _parquet_bytes(masks),
        "errors.parquet": _parquet_bytes(errors),
        "annotations.json": json.dumps(coco, separators=(",", ":"), ensure_ascii=False).encode(),
    }
    written = {}
    for name, data in files.items():
        out.put_atomic(name, data)
        written[name] = out.uri(name)
    return written


# --------------------------------------------------------------------------- overlays
def palette(n: int) -> list[tuple[int, int, int]]:
    """n well-separated, saturated colours (golden-ratio hue steps), the same every time."""
    import colorsys

    colors = []
    for i in range(n):
        h = (0.08 + i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def _label_anchor(mask: np.ndarray) -> tuple[int, int]:
    """A point well inside the mask (the pixel farthest from its border), (x, y)."""
    from scipy import ndimage

    # Pad so a mask touching the image edge still measures distance to that edge.
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def _draw_prompts(draw: Any, prompts: Sequence[Any], color: tuple[int, int, int], scale: float) -> None:
    """Spatial prompts (model.types) in a mask's colour: boxes and polygons outlined, strokes
    as lines, clicks as dots (ringed white when positive, black when negative)."""
    from model.types import Box, Point, Polygon, Scribble

    def xy(x: float, y: float) -> tuple[float, float]:
        return ((x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5)

    for p in prompts:
        if isinstance(p, Box):
            draw.rectangle((*xy(p.x0, p.y0), *xy(p.x1, p.y1)), outline=color, width=2)
        elif isinstance(p, Point):
            x, y = xy(p.x, p.y)
            ring = (255, 255, 255) if p.positive else (0, 0, 0)
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=color, outline=ring, width=2)
        elif isinstance(p, Polygon):
            draw.polygon([xy(*q) for q in p.points], outline=color, width=2)
        elif isinstance(p, Scribble):
            draw.line([xy(*q) for q in p.path], fill=color, width=2)


def render_overlay(image: np.ndarray, masks: Sequence[np.ndarray], labels: Sequence[str], *,
                   alpha: float = 0.45, max_side: int = 1600, prompts: Sequence[Sequence[Any]] | None = None) -> bytes:
    """PNG bytes: the image with each mask filled in its colour, outlined, and its label
    written on a dark box at a point inside it (legible on any background). `prompts`: the
    spatial prompts of each mask, drawn in its colour (`_draw_prompts`).

    Images larger than `max_side` are drawn scaled down (masks with nearest neighbour)."""
    from PIL import Image, ImageDraw, ImageFont
    from scipy import ndimage

    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        masks = [np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0 for m in masks]
    canvas = image.astype(np.float32)
    colors = palette(len(masks))
    for mask, color in zip(masks, colors):
        canvas[mask] = canvas[mask] * (1 - alpha) + np.array(color, np.float32) * alpha
    for mask, color in zip(masks, colors):
        edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, round(min(image.shape[:2]) / 300)))
        canvas[edge] = color
    out = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for mask_prompts, color in zip(prompts or (), colors):
        _draw_prompts(draw, mask_prompts, color, scale)
    font_size = max(11, min(24, round(min(out.size) / 22)))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    for mask, label, color in zip(masks, labels, colors):
        if not mask.any() or not label:
            continue
        x, y = _label_anchor(mask)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = right - left, bottom - top
        pad = 2
        # Centre the label on the anchor, kept inside the picture.
        x0 = min(max(0, x - tw // 2 - pad), max(0, out.width - tw - 2 * pad))
        y0 = min(max(0, y - th // 2 - pad), max(0, out.height - th - 2 * pad))
        draw.rectangle((x0, y0, x0 + tw + 2 * pad, y0 + th + 2 * pad), fill=(0, 0, 0), outline=color)
        draw.text((x0 + pad - left, y0 + pad - top), label, fill=(255, 255, 255), font=font)
    buf = io.BytesIO()
    out.save(buf, "PNG", optimize=False)
    return buf.getvalue()
