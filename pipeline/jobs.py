"""Bulk jobs on Ray Data: encode a source into the feature store, segment it (docs/architecture.md, "A bulk job").

The Ray layer is thin; the work is in `pipeline.stages` (plain classes and functions).

encode_job(src, store)
    1. driver: list the source (uri, size, etag/mtime) and read the manifest of the model;
       an item whose size and etag match an ok row is skipped without reading a byte
       (as is one whose last attempt failed to *decode* the very same object, unless
       `retry_failed`: that failure would repeat).
    2. decode (`decode_table`): read bytes, sha256, "features already stored?" (identical
       bytes under another name: no encoder work), decode + resize to the model's input.
       Broken items become error rows. In CPU tasks (`map_batches`) when the encoders hold
       GPUs, inside the encoder actor on CPU-only clusters (`EncodeOptions.decode_in`).
    3. encoder actor pool (`map_batches(EncoderWorker, compute=ActorPoolStrategy)`): one
       GPU per actor when the cluster has GPUs (bf16 autocast there), fractional CPUs
       otherwise; writes features straight to the store, returns metadata rows only.
    4. driver: writes the returned rows to the manifest as part files while the job runs
       (every `manifest_flush_rows` rows or `manifest_flush_s` seconds), so a job killed
       at any point loses at most the rows in flight; the next run skips what is recorded
       and reuses features whose objects were written but not yet recorded.

segment_job(src, out, store)
    runs encode_job (incremental), then a decoder actor pool over the stored features of
    every listed image (`SegmenterWorker`), and writes masks.parquet, annotations.json,
    errors.parquet (and overlays) deterministically from the manifest and the features.

Both return summaries (`pipeline.progress`). Ray is started locally unless it is already
initialised or `address` names a cluster.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.progress import EncodeSummary, Progress, SegmentSummary
from rayinit import start_or_join
from storage import retry_counts
from pipeline.sources import SourceItem, is_inside, list_source
from pipeline.stages import (
    DEFAULT_FEATURE_FORMAT,
    ENCODED_SCHEMA,
    ITEM_SCHEMA,
    SEGMENT_INPUT_SCHEMA,
    SEGMENTED_SCHEMA,
    DecodeOptions,
    EncoderWorker,
    FeatureFormat,
    ModelSpec,
    SegmenterWorker,
    SegmentSpec,
    decode_table,
    error_text,
    load_predictor,
)

log = logging.getLogger(__name__)

__all__ = ["EncodeOptions", "SegmentOptions", "encode_job", "segment_job", "init_ray", "new_run_id"]

MANIFEST_COLUMNS = ("uri", "size", "etag", "sha256", "width", "height", "feature_key", "bytes", "status", "error")
_COMPACT_ABOVE_PARTS = 32
_MAX_BLOCKS = 2000
_LIST_CHUNK = 1 << 13  # listed items turned into Arrow columns at a time


@dataclass
class EncodeOptions:
    """Options of the encode pass (also used by segment_job).

    pool: (min, max) encoder actors; None = (1, number of GPUs) on a GPU cluster, else
    (1, max(1, CPUs // 4)). gpus_per_actor / cpus_per_actor: None = 1 GPU + 1 CPU per
    actor when the cluster has GPUs, else no GPU and `cpus_per_actor` 0.5 on a small
    machine (< 4 CPUs, where a whole CPU per actor would starve the decode tasks) or 1.
    decode_in: "tasks" (separate CPU tasks), "actor" (inside the encoder actor) or "auto":
    tasks when the encoder actors hold GPUs (CPU cores decode while the GPU encodes),
    actor otherwise (measured faster on CPU-only machines: docs/benchmarks.md).
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    feature_format: FeatureFormat = DEFAULT_FEATURE_FORMAT
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    endpoint_url: str | None = None  # S3 endpoint of the store (the source's is decode.endpoint_url)
    batch_size: int = 16
    pool: tuple[int, int] | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    torch_threads: int | None = None
    decode_in: str = "auto"
    decode_cpus: float = 0.5
    retry_failed: bool = False
    manifest_flush_rows: int = 256
    manifest_flush_s: float = 10.0
    progress: bool | None = None
    address: str | None = None
    run_id: str | None = None

    def __post_init__(self) -> None:
        if self.decode_in not in ("auto", "tasks", "actor"):
            raise ValueError(f"decode_in must be 'auto', 'tasks' or 'actor', got {self.decode_in!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.pool is not None and not (1 <= self.pool[0] <= self.pool[1]):
            raise ValueError(f"pool must be (min, max) with 1 <= min <= max, got {self.pool}")


@dataclass
class SegmentOptions:
    """What segment_job produces. vocabulary None = the model's default (for panoptic);
    texts alone (no vocabulary) = text prompts only; neither = default panoptic."""

    vocabulary: Sequence[str] | None = None
    stuff: Sequence[str] | None = None
    texts: Sequence[str] = ()
    overlays: bool = False
    out_endpoint_url: str | None = None
    batch_size: int = 4
    pool: tuple[int, int] | None = None


def new_run_id() -> str:
    """Sortable, unique run id: UTC time + random suffix (manifest run ids are [A-Za-z0-9._-])."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------- Ray
def init_ray(address: str | None = None) -> bool:
    """Connect to Ray: the running one if initialised, else `address` (or RAY_ADDRESS), else
    a new local cluster (rayinit's rule). Returns True when this call started or connected
    (the caller may shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    # The storage retry settings reach the workers on every node (which do not inherit
    # this process's environment when they run on a cluster).
    settings = {k: v for k, v in os.environ.items() if k.startswith("SEEM_STORAGE_")}
    if settings:
        kwargs["runtime_env"] = {"env_vars": settings}
    start_or_join(address, **kwargs)
    return True


def _configure_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    # Our own bar counts images; Ray Data's per-operator bars would interleave with it.
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # It would warn that its bars are off, which is on purpose (ours replace them).
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


@dataclass(frozen=True)
class _Resources:
    pool: tuple[int, int]
    num_gpus: float
    num_cpus: float
    torch_threads: int | None


def _actor_resources(pool: tuple[int, int] | None, gpus: float | None, cpus: float | None,
                     torch_threads: int | None) -> _Resources:
    import ray

    total = ray.cluster_resources()
    n_gpus = int(total.get("GPU", 0))
    n_cpus = float(total.get("CPU", 1))
    if gpus is None:
        gpus = 1.0 if n_gpus >= 1 else 0.0
    if cpus is None:
        cpus = 1.0 if (gpus > 0 or n_cpus >= 4) else 0.5
    if pool is None:
        pool = (1, max(1, int(n_gpus / gpus))) if gpus > 0 else (1, max(1, int(n_cpus // 4)))
    if torch_threads is None and gpus == 0:
        # Ray sets OMP_NUM_THREADS to the whole CPUs an actor holds (1 for a fraction);
        # torch should use what was reserved, at least one thread.
        torch_threads = max(1, int(cpus))
    return _Resources(pool, gpus, cpus, torch_threads)


def decode_memory_bytes(max_pixels: int) -> int:
    """Memory a decode task may need: the RGB array of the largest allowed image plus
    Pillow's working copy and the file's bytes (about 6 bytes a pixel), at least 64 MiB."""
    return max(64 << 20, 6 * int(max_pixels))


def _item_blocks(items: pa.Table, batch_size: int) -> list[pa.Table]:
    """Input blocks of about `batch_size` items (at most _MAX_BLOCKS blocks): small blocks
    keep the pipeline streaming and the progress bar moving."""
    per_block = max(batch_size, math.ceil(items.num_rows / _MAX_BLOCKS))
    return [items.slice(start, per_block) for start in range(0, items.num_rows, per_block)]


def listed_table(src: str | Iterable[SourceItem], endpoint_url: str | None) -> pa.Table:
    """The listing of `src` as an `ITEM_SCHEMA` table, built in chunks from the streamed
    listing: a million items cost ~100 MB of Arrow columns, not a million Python objects."""
    listing = iter(list_source(src, endpoint_url=endpoint_url) if isinstance(src, str) else src)
    chunks = []
    while True:
        chunk = list(islice(listing, _LIST_CHUNK))
        if not chunk:
            break
        uris, sizes, etags = zip(*chunk)
        chunks.append(pa.table({"uri": pa.array(uris, pa.string()), "size": pa.array(sizes, pa.int64()),
                                "etag": pa.array(etags, pa.string())}, schema=ITEM_SCHEMA))
    return pa.concat_tables(chunks) if chunks else ITEM_SCHEMA.empty_table()


# --------------------------------------------------------------------------- encode
class _ManifestWriter:
    """Buffers result rows and publishes them as manifest parts as the job goes."""

    def __init__(self, manifest: Any, run_id: str, flush_rows: int, flush_s: float) -> None:
        self.manifest, self.run_id = manifest, run_id
        self.flush_rows, self.flush_s = max(1, flush_rows), flush_s
        self.buffer: list[dict[str, Any]] = []
        self.last = time.monotonic()
        self.parts = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.buffer.extend({k: r.get(k) for k in MANIFEST_COLUMNS} for r in rows)
        if len(self.buffer) >= self.flush_rows or time.monotonic() - self.last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.manifest.write(self.buffer, run_id=self.run_id)
            self.parts += 1
            self.buffer = []
        self.last = time.monotonic()


def items_to_do(listed: pa.Table, done: pa.Table, retry_failed: bool) -> pa.Table:
    """The listed items that need work, in listing order: all but those whose latest
    manifest row (`done`, one per uri) has the same size and etag/mtime and is ok — or
    failed to *decode* these very bytes (that would fail again) unless `retry_failed`.

    One hash lookup in Arrow: no per-item Python objects (docs/benchmarks.md, control plane)."""
    if listed.num_rows == 0 or done.num_rows == 0:
        return listed
    # Row of each listed uri in `done` (null: never recorded); then only that row's small
    # columns are gathered, listing-aligned: no joined copy of the uri strings.
    row = pc.index_in(listed["uri"], value_set=done["uri"])
    unchanged = pc.and_(pc.equal(listed["size"], done["size"].take(row)),
                        pc.equal(listed["etag"], done["etag"].take(row)))
    settled = pc.equal(done["status"].take(row), "ok")
    if not retry_failed:
        settled = pc.or_kleene(settled, pc.starts_with(done["error"].take(row), pattern="decode: "))
    skip = pc.fill_null(pc.and_kleene(unchanged, settled), False)
    return listed.filter(pc.invert(skip))


def encode_job(src: str | Sequence[SourceItem], store: str, options: EncodeOptions | None = None) -> EncodeSummary:
    """Encode every new or changed image of `src` into the feature store at `store`.

    `src`: a folder, s3://bucket/prefix, a .txt/.parquet list of URIs, or already
    listed `SourceItem`s. Returns the summary; the manifest of the model holds the rows.
    """
    summary, _ = _encode(src, store, options or EncodeOptions())
    return summary


def _encode(src: str | Iterable[SourceItem], store_uri: str, opts: EncodeOptions) -> tuple[EncodeSummary, pa.Table]:
    from store.feature_store import FeatureStore

    started = time.perf_counter()
    driver_retries = retry_counts()["retries"]
    run_id = opts.run_id or new_run_id()
    # The driver builds the model once on CPU: its id keys the store and the manifest.
    predictor = load_predictor(dataclasses.replace(opts.model, device="cpu"))
    model_id = predictor.model_id
    fstore = FeatureStore(store_uri, opts.endpoint_url)
    listed = listed_table(src, opts.decode.endpoint_url)
    manifest = fstore.manifest(model_id)
    todo = items_to_do(listed, manifest.read(columns=("size", "etag", "error")), opts.retry_failed)
    summary = EncodeSummary(run_id=run_id, model_id=model_id, store=fstore.root_uri, listed=listed.num_rows,
                            skipped=listed.num_rows - todo.num_rows, manifest_quarantined=len(manifest.quarantined))
    if todo.num_rows:
        writer = _ManifestWriter(manifest, run_id, opts.manifest_flush_rows, opts.manifest_flush_s)
        pipeline_started = time.perf_counter()
        with Progress(todo.num_rows, "encode", enabled=opts.progress) as bar:
            try:
                for table in _run_encoder(todo, model_id, fstore.root_uri, opts):
                    summary.storage_retries += pc.sum(table["storage_retries"]).as_py() or 0
                    rows = table.to_pylist()
                    for r in rows:
                        if r["status"] == "error":
                            summary.failed += 1
                        elif r["encoded"]:
                            summary.encoded += 1
                        else:
                            summary.reused += 1
                    writer.add(rows)
                    bar.update(len(rows), failed=summary.failed)
            finally:
                # Whatever finished is recorded, also when the job is interrupted.
                writer.flush()
        summary.pipeline_seconds = time.perf_counter() - pipeline_started
        summary.manifest_parts = writer.parts
        # Fold the small parts this run's flushes left (not the large, compacted ones).
        manifest.compact_small(run_id=f"{run_id}-compact", min_parts=_COMPACT_ABOVE_PARTS)
    summary.storage_retries += retry_counts()["retries"] - driver_retries
    summary.seconds = time.perf_counter() - started
    return summary, listed


def _run_encoder(todo: pa.Table, model_id: str, store_uri: str, opts: EncodeOptions) -> Iterator[pa.Table]:
    """Stream `ENCODED_SCHEMA` tables for `todo` through decode tasks and encoder actors."""
    import ray
    import ray.data

    init_ray(opts.address)
    _configure_ray_data()
    res = _actor_resources(opts.pool, opts.gpus_per_actor, opts.cpus_per_actor, opts.torch_threads)
    ds = ray.data.from_arrow(_item_blocks(todo, opts.batch_size))
    worker_kwargs: dict[str, Any] = dict(model=opts.model, model_id=model_id, store_uri=store_uri,
                                         store_endpoint_url=opts.endpoint_url, feature_format=opts.feature_format,
                                         batch_size=opts.batch_size, torch_threads=res.torch_threads)
    decode_in = opts.decode_in
    if decode_in == "auto":
        decode_in = "tasks" if res.num_gpus > 0 else "actor"
    if decode_in == "tasks":
        ds = ds.map_batches(
            decode_table,
            batch_format="pyarrow",
            batch_size=opts.batch_size,
            num_cpus=opts.decode_cpus,
            # Memory for the largest image the pixel cap allows. Also what keeps decoding
            # in its own tasks: Ray Data fuses a task map into the next actor map only
            # when their resource arguments are equal, and the actors reserve none.
            memory=decode_memory_bytes(opts.decode.max_pixels),
            fn_kwargs=dict(model_name=opts.model.name, model_id=model_id, store_uri=store_uri,
                           store_endpoint_url=opts.endpoint_url, options=opts.decode),
        )
    else:
        worker_kwargs["decode_options"] = opts.decode
    ds = ds.map_batches(
        EncoderWorker,
        batch_format="pyarrow",
        batch_size=opts.batch_size,
        fn_constructor_kwargs=worker_kwargs,
        compute=ray.data.ActorPoolStrategy(min_size=res.pool[0], max_size=res.pool[1]),
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus or None,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield batch.cast(ENCODED_SCHEMA)


# --------------------------------------------------------------------------- segment
def segment_job(src: str | Sequence[SourceItem], out: str, store: str, segment: SegmentOptions | None = None,
                options: EncodeOptions | None = None) -> SegmentSummary:
    """Segment every image of `src` into `out` (a folder or s3://bucket/prefix), encoding
    into `store` first what is not encoded yet. Writes masks.parquet, annotations.json,
    errors.parquet and (on request) overlays/; see `pipeline.exports` for the formats."""
    from storage import open_store
    from store.feature_store import FeatureStore

    opts = options or EncodeOptions()
    seg = segment or SegmentOptions()
    started = time.perf_counter()
    source: str | Iterable[SourceItem] = src
    if isinstance(src, str):  # our own outputs (an --out inside the source folder) are never inputs
        source = (i for i in list_source(src, endpoint_url=opts.decode.endpoint_url) if not is_inside(i.uri, out))
    enc, listed = _encode(source, store, opts)
    predictor = load_predictor(dataclasses.replace(opts.model, device="cpu"))
    fstore = FeatureStore(store, opts.endpoint_url)
    out_store = open_store(out, endpoint_url=seg.out_endpoint_url)
    spec, categories = _segment_spec(predictor, seg, out_store.root_uri)
    inputs, errors = _segment_inputs(fstore, enc.model_id, listed)

    pipeline_started = time.perf_counter()
    results = _run_segmenter(inputs, enc.model_id, fstore.root_uri, spec, seg, opts)
    summary = SegmentSummary(encode=enc, out=out_store.root_uri, pipeline_seconds=time.perf_counter() - pipeline_started)
    info = {
        "description": "seem-ray segment",
        "model_id": enc.model_id,
        "vocabulary": list(spec.vocabulary) if spec.panoptic else [],
        "texts": list(spec.texts),
        "source": src if isinstance(src, str) else f"{len(pc.unique(listed['uri']))} listed items",
    }
    _write_segment_outputs(out_store, results, errors, categories, info, summary)
    if seg.overlays:
        summary.files["overlays"] = out_store.uri("overlays")
    summary.seconds = time.perf_counter() - started
    return summary


def _segment_spec(predictor: Any, seg: SegmentOptions, out_uri: str) -> tuple[SegmentSpec, list[dict[str, Any]]]:
    """What to segment into and the COCO categories, decided once here so that every worker
    uses the same ids: panoptic over the vocabulary unless only phrases are asked for."""
    from pipeline import exports
    from model.types import Vocabulary

    panoptic = seg.vocabulary is not None or not seg.texts
    vocab = Vocabulary.resolve(seg.vocabulary, seg.stuff, predictor.default_vocabulary)
    vocab_names, stuff = vocab.names, tuple(seg.stuff) if seg.stuff is not None else vocab.stuff_names
    texts = tuple(dict.fromkeys(t.strip() for t in seg.texts if t.strip()))
    categories = exports.build_categories(vocab_names, stuff, texts, panoptic)
    spec = SegmentSpec(vocabulary=vocab_names, stuff=stuff, texts=texts, panoptic=panoptic,
                       categories={c["name"]: c["id"] for c in categories}, overlays=seg.overlays,
                       out_uri=out_uri if seg.overlays else None, out_endpoint_url=seg.out_endpoint_url)
    return spec, categories


def _segment_inputs(fstore: Any, model_id: str, listed: pa.Table) -> tuple[pa.Table, list[tuple[str, str]]]:
    """The images to segment (every listed uri's latest manifest row with status ok, ids 1..N
    in uri order) and (uri, reason) of the listed ones that cannot be: failed to encode, or
    no manifest row."""
    table = fstore.manifest(model_id).read()
    # Filter in Arrow: the manifest can hold many more images than this source.
    table = table.filter(pc.is_in(table["uri"], value_set=listed["uri"]))
    rows = table.select(["uri", "sha256", "width", "height", "status", "error"]).to_pylist()
    recorded = {r["uri"] for r in rows}
    errors = [(r["uri"], r["error"] or "encode: failed") for r in rows if r["status"] != "ok"]
    errors += [(u, error_text("encode", "no manifest row after the encode pass (concurrent run?)"))
               for u in sorted(set(listed["uri"].to_pylist()) - recorded)]
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["uri"])
    inputs = pa.table({
        "image_id": list(range(1, len(ok) + 1)),
        **{column: [r[column] for r in ok] for column in ("uri", "sha256", "width", "height")},
    }, schema=SEGMENT_INPUT_SCHEMA)
    return inputs, errors


def _write_segment_outputs(out_store: Any, results: pa.Table, errors: list[tuple[str, str]],
                           categories: list[dict[str, Any]], info: dict[str, Any], summary: SegmentSummary) -> None:
    """masks.parquet, errors.parquet and annotations.json from the segmenter's rows (and the
    errors before it); fills the summary's counts and files."""
    from pipeline import exports

    # Deterministic outputs: images in uri order keep the ids given above.
    results = results.sort_by([("uri", "ascending")])
    good = results.filter(pc.equal(results["status"], "ok"))
    bad = results.filter(pc.not_equal(results["status"], "ok"))
    errors = errors + list(zip(bad["uri"].to_pylist(), bad["error"].to_pylist()))
    # Images that failed here are dropped and the survivors renumbered 1..N in uri order,
    # so the COCO ids stay dense and do not depend on which worker failed what.
    good = good.set_column(0, "image_id", pa.array(range(1, good.num_rows + 1), pa.int64()))
    masks = exports.masks_table(good)
    errors_tbl = exports.errors_table(errors)
    coco = exports.coco_document(good, masks, categories, info)
    summary.files = exports.write_outputs(out_store, masks, errors_tbl, coco)
    summary.segmented = good.num_rows
    summary.failed = errors_tbl.num_rows
    summary.masks = masks.num_rows
    summary.reencoded = int(sum(results["reencoded"].to_pylist())) if results.num_rows else 0


def _run_segmenter(inputs: pa.Table, model_id: str, store_uri: str, spec: SegmentSpec, seg: SegmentOptions,
                   opts: EncodeOptions) -> pa.Table:
    """All `SEGMENTED_SCHEMA` rows for `inputs` (through a decoder actor pool)."""
    tables = []
    with Progress(inputs.num_rows, "segment", enabled=opts.progress) as bar:
        for batch in stream_actor_pool(inputs, SegmenterWorker, _segmenter_kwargs(model_id, store_uri, spec, opts),
                                       SEGMENTED_SCHEMA, seg.pool, seg.batch_size, opts):
            tables.append(batch)
            bar.update(batch.num_rows)
    return pa.concat_tables(tables) if tables else SEGMENTED_SCHEMA.empty_table()


def _segmenter_kwargs(model_id: str, store_uri: str, spec: SegmentSpec, opts: EncodeOptions) -> dict[str, Any]:
    return dict(model=opts.model, model_id=model_id, store_uri=store_uri, store_endpoint_url=opts.endpoint_url,
                feature_format=opts.feature_format, segment=spec, decode_options=opts.decode)


def stream_actor_pool(inputs: pa.Table, worker: type, kwargs: dict[str, Any], schema: pa.Schema,
                      pool: tuple[int, int] | None, batch_size: int, opts: EncodeOptions) -> Iterator[pa.Table]:
    """`schema` tables from `worker` actors (constructed with `kwargs` and `torch_threads`)
    over `inputs`, in blocks of about `batch_size` rows, as they finish."""
    if inputs.num_rows == 0:
        return
    import ray
    import ray.data

    init_ray(opts.address)
    _configure_ray_data()
    res = _actor_resources(pool, opts.gpus_per_actor, opts.cpus_per_actor, opts.torch_threads)
    per_block = max(batch_size, math.ceil(inputs.num_rows / _MAX_BLOCKS))
    blocks = [inputs.slice(s, per_block) for s in range(0, inputs.num_rows, per_block)]
    ds = ray.data.from_arrow(blocks).map_batches(
        worker,
        batch_format="pyarrow",
        batch_size=batch_size,
        fn_constructor_kwargs={**kwargs, "torch_threads": res.torch_threads},
        compute=ray.data.ActorPoolStrategy(min_size=res.pool[0], max_size=res.pool[1]),
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus or None,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield batch.cast(schema)


def default_store() -> str:
    """The embedded default store: a local folder under the working directory."""
    return os.path.join("out", "store")
