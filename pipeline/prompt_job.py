"""`seem segment SRC --prompts FILE --out OUT`: masks for per-image, per-object prompts.

prompted_segment_job(src, out, store, PromptOptions(prompts=FILE))
    1. driver: read FILE (`pipeline.prompt_files`: COCO detections or JSON lines), list SRC
       and match each entry's image (and referred images) by relative path or full URI;
       broken or unmatched entries become error rows.
    2. encode pass (`jobs._encode`, incremental) over the matched images only.
    3. driver: key each entry by its image's features, its prompts and the decode settings
       (`prompt_files.result_key`); keys found in OUT's results cache are done.
    4. `PromptedWorker` actor pool over the images with work left: one row per image with
       all its entries, decoded from the stored features, many targets per decoder call.
       Results stream back into the cache as they come.
    5. driver: masks.parquet, annotations.json (COCO input: the input document with the
       masks filled in; JSON lines: a new COCO document), errors.parquet, overlays.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import exports
from pipeline.jobs import EncodeOptions, _encode, stream_actor_pool
from pipeline.progress import Progress, PromptSummary
from pipeline.prompt_files import (EntryError, ImageIndex, PromptEntry, PromptFile, canonical_prompts, parse_prompt_file,
                                   referred_images, result_key)
from pipeline.prompted import PROMPTED_INPUT_SCHEMA, PROMPTED_SCHEMA, PromptedWorker, ResultCache
from pipeline.sources import SourceItem, list_source, read_bytes
from pipeline.stages import SegmentSpec, error_text, load_predictor, overlay_name

__all__ = ["PromptOptions", "prompted_segment_job"]

_CACHE_FLUSH_ROWS = 512


@dataclass
class PromptOptions:
    """A prompted segment job. vocabulary: names to label masks with (None: the model's);
    batch_size: images per worker call; prompts_per_call: targets per decoder call."""

    prompts: str
    with_category_text: bool = False
    vocabulary: Sequence[str] | None = None
    stuff: Sequence[str] | None = None
    overlays: bool = False
    out_endpoint_url: str | None = None
    batch_size: int = 4
    prompts_per_call: int = 32
    pool: tuple[int, int] | None = None


@dataclass
class _Job:
    """An entry on its way through the job: where it goes and, at the end, its result."""

    entry: PromptEntry
    uri: str
    refs: dict[str, str]  # referring image name -> SRC uri
    key: str = ""
    prompts: str = ""
    result: dict[str, Any] | None = None


def prompted_segment_job(src: str | Sequence[SourceItem], out: str, store: str, prompts: PromptOptions,
                         options: EncodeOptions | None = None) -> PromptSummary:
    """Segment every entry of `prompts.prompts` on its SRC image into `out`; see the module."""
    from store.backends import open_store
    from store.feature_store import FeatureStore

    opts = options or EncodeOptions()
    started = time.perf_counter()
    pfile = parse_prompt_file(read_bytes(prompts.prompts, endpoint_url=opts.decode.endpoint_url),
                              with_category_text=prompts.with_category_text)
    items = list(list_source(src, endpoint_url=opts.decode.endpoint_url)) if isinstance(src, str) else list(src)
    jobs, errors = _match(pfile, ImageIndex((i.uri for i in items), src if isinstance(src, str) else "/"))
    used = {j.uri for j in jobs} | {u for j in jobs for u in j.refs.values()}
    enc, _ = _encode([i for i in items if i.uri in used], store, opts)
    fstore = FeatureStore(store, opts.endpoint_url)
    images = _image_rows(fstore.manifest(enc.model_id).read(), used)
    predictor = load_predictor(dataclasses.replace(opts.model, device="cpu"))
    from model.types import Vocabulary

    resolved = Vocabulary.resolve(prompts.vocabulary, prompts.stuff, predictor.default_vocabulary)
    vocab, stuff = resolved.names, tuple(prompts.stuff) if prompts.stuff is not None else resolved.stuff_names
    out_store = open_store(out, endpoint_url=prompts.out_endpoint_url)
    spec = SegmentSpec(vocabulary=vocab, stuff=stuff, panoptic=False, overlays=prompts.overlays,
                       out_uri=out_store.root_uri if prompts.overlays else None,
                       out_endpoint_url=prompts.out_endpoint_url)
    settings = json.dumps({"vocabulary": vocab, "stuff": sorted(stuff), "max_masks": 1})
    jobs, image_errors = _keyed(jobs, images, settings)
    errors += image_errors
    cache = ResultCache(out_store)
    known = cache.read()
    for j in jobs:
        j.result = known.get(j.key)
    summary = PromptSummary(encode=enc, out=out_store.root_uri, entries=len(pfile.entries) + len(pfile.errors),
                            cached=sum(j.result is not None for j in jobs))
    inputs = _worker_inputs(jobs, images, out_store if prompts.overlays else None)
    pipeline_started = time.perf_counter()
    kwargs = dict(model=opts.model, model_id=enc.model_id, store_uri=fstore.root_uri,
                  store_endpoint_url=opts.endpoint_url, feature_format=opts.feature_format, segment=spec,
                  decode_options=opts.decode, prompts_per_call=prompts.prompts_per_call)
    results, overlays, summary.reencoded = _run(inputs, kwargs, cache, known, prompts, opts)
    summary.decoded = sum(key not in known for key in results)
    summary.pipeline_seconds = time.perf_counter() - pipeline_started
    for j in jobs:
        j.result = results.get(j.key, j.result)
    cache.compact(j.result for j in jobs if j.result is not None)
    _write(out_store, pfile, jobs, errors, images, overlays, vocab, stuff, enc.model_id, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def _match(pfile: PromptFile, index: ImageIndex) -> tuple[list[_Job], list[dict[str, Any]]]:
    """Entries whose image (and referred images) are in SRC, and error rows for the rest."""
    errors = [_error_row(e, None) for e in pfile.errors]
    jobs = []
    for entry in pfile.entries:
        uri = index.find(entry.image)
        if uri is None:
            errors.append(_error_row(entry, None, f"prompts: unknown image {entry.image!r} (not in the source)"))
            continue
        refs = {name: index.find(name) for name in referred_images(entry)}
        missing = [name for name, u in refs.items() if u is None]
        if missing:
            errors.append(_error_row(entry, uri, f"prompts: unknown referring image {missing[0]!r} (not in the source)"))
            continue
        jobs.append(_Job(entry, uri, refs))  # type: ignore[arg-type]
    return jobs, errors


def _error_row(e: PromptEntry | EntryError, uri: str | None, error: str | None = None) -> dict[str, Any]:
    if error is None and isinstance(e, EntryError):
        error = f"{e.stage}: {e.reason}"
    return {"uri": uri, "error": error, "line": e.line, "annotation_id": e.annotation_id, "prompt_id": e.prompt_id}


def _image_rows(manifest: pa.Table, used: set[str]) -> dict[str, dict[str, Any]]:
    table = manifest.filter(pc.is_in(manifest["uri"], value_set=pa.array(sorted(used), pa.string())))
    rows = table.select(["uri", "sha256", "width", "height", "feature_key", "status", "error"]).to_pylist()
    return {r["uri"]: r for r in rows}


def _keyed(jobs: list[_Job], images: dict[str, dict[str, Any]], settings: str) -> tuple[list[_Job], list[dict]]:
    """Jobs whose images have features, with their result keys; error rows for the others."""
    keyed, errors = [], []
    for j in jobs:
        bad = [u for u in (j.uri, *j.refs.values()) if (images.get(u) or {}).get("status") != "ok"]
        if bad:
            reason = (images.get(bad[0]) or {}).get("error") or error_text("encode", "no manifest row after the encode pass")
            errors.append(_error_row(j.entry, j.uri, reason))
            continue
        j.prompts = canonical_prompts(j.entry.prompts)
        referred = [images[u]["feature_key"] for u in j.refs.values()]
        j.key = result_key(images[j.uri]["feature_key"], j.prompts, referred, settings)
        keyed.append(j)
    return keyed, errors


def _worker_inputs(jobs: list[_Job], images: dict[str, dict[str, Any]], overlays_to: Any) -> pa.Table:
    """One row per image with work left: an entry without a result, or (with overlays) a
    missing overlay. The row carries all the image's entries, cached results included."""
    by_uri: dict[str, list[_Job]] = {}
    for j in jobs:
        by_uri.setdefault(j.uri, []).append(j)
    rows = []
    for uri in sorted(by_uri):
        group, img = by_uri[uri], images[uri]
        pending = any(j.result is None for j in group)
        if not pending and (overlays_to is None or overlays_to.exists(f"overlays/{overlay_name(uri, img['sha256'])}")):
            continue
        entries = [{"key": j.key, "prompts": j.prompts, "caption": j.entry.caption, "result": j.result,
                    "refs": json.dumps({name: images[u]["sha256"] for name, u in j.refs.items()})} for j in group]
        rows.append({"uri": uri, "sha256": img["sha256"], "width": img["width"], "height": img["height"],
                     "entries": entries})
    return pa.Table.from_pylist(rows, schema=PROMPTED_INPUT_SCHEMA)


def _run(inputs: pa.Table, kwargs: dict[str, Any], cache: ResultCache, known: dict[str, Any], prompts: PromptOptions,
         opts: EncodeOptions) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Results by key, overlay names by uri and the number of re-encoded images; new results
    go to the cache every `_CACHE_FLUSH_ROWS` (a killed job keeps what it finished)."""
    results: dict[str, dict[str, Any]] = {}
    overlays: dict[str, str] = {}
    reencoded = 0
    pending: list[dict[str, Any]] = []
    with Progress(inputs.num_rows, "segment", enabled=opts.progress) as bar:
        for batch in stream_actor_pool(inputs, PromptedWorker, kwargs, PROMPTED_SCHEMA, prompts.pool,
                                       prompts.batch_size, opts):
            for row in batch.to_pylist():
                reencoded += bool(row["reencoded"])
                if row["overlay"]:
                    overlays[row["uri"]] = row["overlay"]
                for r in row["results"]:
                    results[r["key"]] = r
                    if r["key"] not in known:
                        pending.append(r)
            if len(pending) >= _CACHE_FLUSH_ROWS:
                cache.write(pending)
                pending = []
            bar.update(batch.num_rows)
    cache.write(pending)
    return results, overlays, reencoded


# --------------------------------------------------------------------------- outputs
def _write(out_store: Any, pfile: PromptFile, jobs: list[_Job], errors: list[dict[str, Any]],
           images: dict[str, dict[str, Any]], overlays: dict[str, str], vocab: tuple[str, ...], stuff: tuple[str, ...],
           model_id: str, summary: PromptSummary) -> None:
    """masks.parquet, annotations.json and errors.parquet (entries in file order)."""
    categories = exports.build_categories(vocab, stuff, ())
    category_ids = {c["name"]: c["id"] for c in categories}
    coco = pfile.kind == "coco"
    ok = sorted({j.uri for j in jobs if j.result and j.result["status"] == "ok"})
    image_ids = {u: i for i, u in enumerate(ok, start=1)}
    done, failed = [], {}
    for j in sorted(jobs, key=lambda j: j.entry.index):
        r = j.result
        if r is None or r["status"] != "ok":
            reason = r["error"] if r else error_text("segment", "no result for this entry (its worker was lost)")
            errors.append(_error_row(j.entry, j.uri, reason))
            failed[j.entry.annotation_id] = reason
            continue
        img, e = images[j.uri], j.entry
        done.append({"uri": j.uri, "sha256": img["sha256"], "width": img["width"], "height": img["height"],
                     "image_id": e.image_id if coco else image_ids[j.uri], "prompts": j.prompts, "result": r,
                     "label": e.caption if coco else r["class_label"],
                     "category_id": e.category_id if coco else category_ids.get(r["class_label"]),
                     "prompt_id": e.prompt_id, "annotation_id": e.annotation_id, "object_id": e.object_id})
    masks = exports.prompted_masks_table(done)
    errors_tbl = exports.errors_table((), errors)
    if coco:
        for e in errors:
            failed.setdefault(e["annotation_id"], e["error"])
        document = exports.filled_coco(pfile.coco or {}, masks, failed)
    else:
        segmented = pa.Table.from_pylist([
            {"image_id": image_ids[u], "uri": u, "sha256": images[u]["sha256"], "width": images[u]["width"],
             "height": images[u]["height"], "overlay": overlays.get(u)} for u in ok])
        info = {"description": "seem-ray segment --prompts", "model_id": model_id, "vocabulary": list(vocab)}
        document = exports.coco_document(segmented, masks, categories, info)
    summary.files = exports.write_outputs(out_store, masks, errors_tbl, document)
    if overlays:
        summary.files["overlays"] = out_store.uri("overlays")
    summary.segmented, summary.masks, summary.failed = len(ok), masks.num_rows, errors_tbl.num_rows
