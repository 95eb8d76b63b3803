"""Prompt files of `seem segment --prompts FILE`: per-image, per-object prompts in bulk.

Two formats, told apart by their content:

- a COCO detection file: one JSON object with `images` (`id`, `file_name`, `width`,
  `height`) and `annotations` (`id`, `image_id`, `bbox` [x, y, w, h], `category_id`).
  Every annotation becomes one target: a box prompt (with `with_category_text`, the
  category's name as a text prompt too).
- JSON lines: one object per line, `{"image": "name or URI", "id": any, "prompts": [...],
  "object_id": any}` (`id` and `object_id` optional), the prompts exactly as the HTTP API
  takes them (`model.prompt_schema`). Every line becomes one target.

A broken line or annotation becomes an `EntryError` (line number / annotation id and the
reason) and the rest is read. No Ray here: the driver of the job calls this.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from model.prompt_schema import PromptSchemaError, ReferringPrompt, parse_prompt_list

__all__ = ["PromptEntry", "EntryError", "PromptFile", "parse_prompt_file", "ImageIndex", "canonical_prompts",
           "result_key", "referred_images"]

_JSONL_FIELDS = {"image", "id", "prompts", "object_id"}


@dataclass(frozen=True)
class PromptEntry:
    """One target of a prompt file: the prompts that together describe one object."""

    index: int  # position among the file's good entries
    image: str  # as written: a path relative to SRC, or a full URI
    prompts: tuple[Any, ...]  # validated `model.prompt_schema` models
    line: int | None = None  # JSON lines: 1-based line number
    annotation_id: int | None = None  # COCO: the annotation's id
    prompt_id: str | None = None  # JSON lines: "id" (a string as is, another JSON value as JSON)
    object_id: str | None = None
    category_id: int | None = None  # COCO: kept in the output
    image_id: int | None = None  # COCO: the image's id in the file
    caption: str | None = None  # what an overlay writes next to the mask


@dataclass(frozen=True)
class EntryError:
    """A line or annotation that cannot be segmented, and why."""

    reason: str
    stage: str = "prompts"
    line: int | None = None
    annotation_id: int | None = None
    prompt_id: str | None = None
    image: str | None = None


@dataclass
class PromptFile:
    kind: str  # "coco" | "jsonl"
    entries: list[PromptEntry] = field(default_factory=list)
    errors: list[EntryError] = field(default_factory=list)
    coco: dict[str, Any] | None = None  # the input document (COCO only)


def _id_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def canonical_prompts(prompts: Sequence[Any]) -> str:
    """The prompts as canonical JSON (defaults filled in, keys sorted): equal prompts give
    equal text however they were written."""
    return json.dumps([p.model_dump(mode="json") for p in prompts], sort_keys=True, separators=(",", ":"))


def result_key(feature_key: str, prompts_json: str, referred: Sequence[str], settings: str) -> str:
    """What a decoded entry's result depends on, hashed: the image's features (the key holds
    the model id and the image's sha256), the prompts, referred images' features, and the
    decode settings. A changed line gets a new key; an unchanged one finds its result."""
    h = hashlib.sha256()
    for part in (feature_key, prompts_json, *referred, settings):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- reading
def parse_prompt_file(data: bytes, *, with_category_text: bool = False) -> PromptFile:
    """A prompt file's bytes -> its entries and the errors of its broken parts.

    Raises ValueError only when the file as a whole is unusable (not UTF-8, a COCO file
    without its lists)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"the prompts file is not UTF-8 text: {e}") from None
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None  # several objects: JSON lines
        if isinstance(doc, dict) and ("annotations" in doc or "images" in doc):
            return _parse_coco(doc, with_category_text)
    return _parse_jsonl(text)


def _parse_jsonl(text: str) -> PromptFile:
    out = PromptFile(kind="jsonl")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            out.errors.append(EntryError(f"bad JSON: {e}", line=number))
            continue
        entry_or_error = _jsonl_entry(obj, number, len(out.entries))
        (out.entries if isinstance(entry_or_error, PromptEntry) else out.errors).append(entry_or_error)
    return out


def _jsonl_entry(obj: Any, number: int, index: int) -> PromptEntry | EntryError:
    if not isinstance(obj, dict):
        return EntryError("a line must be a JSON object with image and prompts", line=number)
    prompt_id = _id_text(obj.get("id"))
    unknown = sorted(set(obj) - _JSONL_FIELDS)
    if unknown:
        return EntryError(f"unknown field {unknown[0]!r} (a line has image, id, prompts, object_id)",
                          line=number, prompt_id=prompt_id)
    image = obj.get("image")
    if not isinstance(image, str) or not image.strip():
        return EntryError("image: a file name or URI is required", line=number, prompt_id=prompt_id)
    if "prompts" not in obj:
        return EntryError("prompts: required", line=number, prompt_id=prompt_id, image=image)
    try:
        prompts = tuple(parse_prompt_list(obj["prompts"]))
    except PromptSchemaError as e:
        return EntryError(str(e), line=number, prompt_id=prompt_id, image=image)
    return PromptEntry(index=index, image=image, prompts=prompts, line=number, prompt_id=prompt_id,
                       object_id=_id_text(obj.get("object_id")), caption=prompt_id)


def _parse_coco(doc: dict[str, Any], with_category_text: bool) -> PromptFile:
    images, annotations = doc.get("images"), doc.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise ValueError("a COCO prompts file needs 'images' and 'annotations' lists")
    by_id = {img.get("id"): img for img in images if isinstance(img, dict)}
    names = {c.get("id"): c.get("name") for c in doc.get("categories") or [] if isinstance(c, dict)}
    out = PromptFile(kind="coco", coco=doc)
    for ann in annotations:
        entry_or_error = _coco_entry(ann, by_id, names, with_category_text, len(out.entries))
        (out.entries if isinstance(entry_or_error, PromptEntry) else out.errors).append(entry_or_error)
    return out


def _coco_entry(ann: Any, images: dict[Any, dict], names: dict[Any, Any], with_category_text: bool,
                index: int) -> PromptEntry | EntryError:
    if not isinstance(ann, dict):
        return EntryError("an annotation must be a JSON object")
    ann_id = ann.get("id")
    if not isinstance(ann_id, int) or isinstance(ann_id, bool):
        return EntryError(f"annotation id must be an integer, got {ann_id!r}")
    img = images.get(ann.get("image_id"))
    if img is None or not isinstance(img.get("file_name"), str):
        return EntryError(f"unknown image: image_id {ann.get('image_id')!r} is not in 'images' (with a file_name)",
                          annotation_id=ann_id)
    box = _coco_box(ann.get("bbox"), img)
    if isinstance(box, str):
        return EntryError(box, annotation_id=ann_id, image=img["file_name"])
    prompts: list[dict[str, Any]] = [{"type": "box", "xyxy": box}]
    category = names.get(ann.get("category_id"))
    if with_category_text and isinstance(category, str) and category.strip():
        prompts.append({"type": "text", "text": category})
    category_id = ann.get("category_id") if isinstance(ann.get("category_id"), int) else None
    return PromptEntry(index=index, image=img["file_name"], prompts=tuple(parse_prompt_list(prompts)),
                       annotation_id=ann_id, category_id=category_id, image_id=img.get("id"),
                       caption=category if isinstance(category, str) else str(ann_id))


def _coco_box(bbox: Any, img: dict[str, Any]) -> list[float] | str:
    """COCO [x, y, w, h] -> the API's inclusive pixel corners [x0, y0, x1, y1], or the reason
    it cannot be one. The box must lie inside the image the file gives (`width`, `height`);
    the worker checks it against the real image again."""
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        return f"bbox must be 4 finite numbers [x, y, w, h], got {json.dumps(bbox)[:80]}"
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return f"empty box: width {w:g} and height {h:g} must be > 0"
    width, height = img.get("width"), img.get("height")
    right, bottom = (width, height) if isinstance(width, (int, float)) and isinstance(height, (int, float)) else (
        math.inf, math.inf)
    if x < 0 or y < 0 or x + w > right + 1e-6 or y + h > bottom + 1e-6:
        return (f"box outside the image: [{x:g}, {y:g}, {w:g}, {h:g}] does not fit in "
                f"{width} x {height} (width x height)")
    # A COCO box ends at x + w (exclusive edge); the API's corners are inclusive pixels.
    return [x, y, max(x, x + w - 1), max(y, y + h - 1)]


def referred_images(entry: PromptEntry) -> list[str]:
    """Images named by the entry's referring prompts, in order, each once."""
    return list(dict.fromkeys(p.image_id for p in entry.prompts if isinstance(p, ReferringPrompt)))


# --------------------------------------------------------------------------- matching images
class ImageIndex:
    """Finds SRC images by the names a prompt file uses: the full URI (or local path,
    `file://` URI), or the path relative to SRC's folder / prefix (a list file's folder)."""

    def __init__(self, uris: Iterable[str], src: str) -> None:
        self.root = _root_of(src)
        self.by_name: dict[str, str] = {}
        for uri in uris:
            self.by_name[uri] = uri
            if uri.startswith(self.root):
                self.by_name.setdefault(uri[len(self.root):], uri)

    def find(self, name: str) -> str | None:
        """The URI of the SRC image called `name`, or None."""
        if name in self.by_name:
            return self.by_name[name]
        if name.startswith("file://"):
            name = name[len("file://"):]
        if not name.startswith("s3://"):
            name = posixpath.normpath(name)
            if os.path.isabs(name):
                return self.by_name.get(name)
            name = name[2:] if name.startswith("./") else name
        return self.by_name.get(name)


def _root_of(src: str) -> str:
    """The prefix that relative names are relative to, ending in '/'."""
    if src.startswith("s3://"):
        from model.image_io import is_image_name

        base = src.rsplit("/", 1)[0] if src.lower().endswith((".txt", ".parquet")) or is_image_name(src) else src
        return base.rstrip("/") + "/"
    path = os.path.abspath(src[len("file://"):] if src.startswith("file://") else src)
    if os.path.isfile(path):
        path = os.path.dirname(path)
    return path.rstrip("/") + "/"
