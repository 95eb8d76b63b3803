"""The per-model manifest: which source objects are done, as Parquet (docs/architecture.md, "The feature store format").

Stored under `{root}/{model_id}/manifest/` as *part files*: every writer batch is one
immutable Parquet file `part-{run_id}-{uuid}.parquet`, published atomically through the
backend. Nothing is ever appended to or rewritten in place, so any number of concurrent
actors can write, and a run killed at any moment leaves only whole parts behind.

Reading merges all parts and keeps one row per `uri`: the latest by `time`; on a tie an
"ok" row beats an "error" row (then the later run id, then the later part). A re-run
therefore replaces earlier rows instead of duplicating items. `compact()` folds all parts
into sorted parts of at most `PART_ROWS` rows and `compact_small()` only the small ones
that flushes and incremental runs leave (write the new parts first, then delete the old
ones), which is safe at any time: a crash in between leaves duplicates that reading
resolves. A part that cannot be read (damaged) is moved under `quarantine/` and skipped:
its images have no row any more, so the next job does them again.

Columns (`MANIFEST_SCHEMA`):
    uri          source object URI (local path or s3://…)
    size         source object size in bytes
    etag         S3 ETag (quotes stripped) or, for local files, mtime in nanoseconds
    sha256       sha256 of the image bytes (null when the read failed)
    width,height decoded (EXIF-oriented) image size (null on error)
    feature_key  key of the features object relative to the store root (null on error)
    bytes        size of the features object
    status       "ok" | "error"
    error        error message (null when ok)
    run_id       the run that wrote the row
    time         when the row was produced (UTC, microseconds)
"""
from __future__ import annotations

import concurrent.futures
import datetime as _dt
import logging
import re
import uuid
from typing import Any, Iterable, Mapping, NamedTuple, TypedDict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage import CorruptObject, ObjectStore, open_store
from storage import NotFound as ObjectNotFound
from store.backends import check_model_id

__all__ = ["Manifest", "ManifestRow", "DoneEntry", "MANIFEST_SCHEMA", "QUARANTINE_DIR"]

log = logging.getLogger(__name__)

#: Sub-folder of the manifest where damaged parts are moved (never listed as parts).
QUARANTINE_DIR = "quarantine"
#: Most rows a compacted part holds (~25 MB of Parquet): no file grows with the bucket.
PART_ROWS = 250_000
#: Parts smaller than this are folded by `compact_small` (a flush of 256 rows is ~20 kB).
SMALL_PART_BYTES = 4 << 20

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("etag", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("feature_key", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
_STATUSES = ("ok", "error")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_PART_RE = re.compile(r"^part-[A-Za-z0-9._-]+\.parquet$")


class ManifestRow(TypedDict, total=False):
    """One row as a dict; `uri` and `status` are required, `run_id`/`time` are filled in."""

    uri: str
    size: int | None
    etag: str | None
    sha256: str | None
    width: int | None
    height: int | None
    feature_key: str | None
    bytes: int | None
    status: str
    error: str | None
    run_id: str
    time: _dt.datetime


class DoneEntry(NamedTuple):
    """What the manifest knows about one source object (for incremental runs)."""

    size: int | None
    etag: str | None
    sha256: str | None
    status: str

    def unchanged(self, size: int | None, etag: str | None) -> bool:
        """True when the object still has the size and etag/mtime recorded here."""
        return self.size == size and self.etag == etag


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class Manifest:
    """The manifest of one model in one store.

    `Manifest(backend, model_id)`, or `Manifest.open(root_uri, model_id)`, or
    `FeatureStore.manifest(model_id)`.
    """

    def __init__(self, backend: ObjectStore, model_id: str) -> None:
        self.backend = backend
        self.model_id = check_model_id(model_id)
        self.prefix = f"{model_id}/manifest/"
        self.quarantined: list[str] = []  # keys of damaged parts this object moved aside

    @classmethod
    def open(cls, root_uri: str, model_id: str, *, endpoint_url: str | None = None) -> "Manifest":
        return cls(open_store(root_uri, endpoint_url=endpoint_url), model_id)

    def __repr__(self) -> str:
        return f"Manifest({self.backend.uri(self.prefix.rstrip('/'))!r})"

    # ------------------------------------------------------------------ writing
    def write(self, rows: Iterable[Mapping[str, Any]] | pa.Table, *, run_id: str) -> str | None:
        """Publish `rows` as one new part file; returns its key (None for no rows).

        Missing columns are null; a missing `time` is now; `run_id` is this run's.
        """
        table = self._to_table(rows, run_id)
        if table.num_rows == 0:
            return None
        return self._write_part(table, run_id)

    def _to_table(self, rows: Iterable[Mapping[str, Any]] | pa.Table, run_id: str) -> pa.Table:
        if not _RUN_ID_RE.match(run_id or ""):
            raise ValueError(f"invalid run id {run_id!r}: use 1-64 characters of [A-Za-z0-9._-]")
        if isinstance(rows, pa.Table):
            rows = rows.to_pylist()
        now = _now()
        columns: dict[str, list[Any]] = {f.name: [] for f in MANIFEST_SCHEMA}
        for i, row in enumerate(rows):
            unknown = set(row) - set(columns)
            if unknown:
                raise ValueError(f"manifest row {i} has unknown columns {sorted(unknown)}")
            if not row.get("uri"):
                raise ValueError(f"manifest row {i} has no uri")
            if row.get("status") not in _STATUSES:
                raise ValueError(f"manifest row {i} ({row.get('uri')}): status must be 'ok' or 'error', got {row.get('status')!r}")
            for name in columns:
                value = row.get(name)
                if name == "run_id":
                    value = value or run_id
                elif name == "time" and value is None:
                    value = now
                columns[name].append(value)
        return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)

    def _write_part(self, table: pa.Table, run_id: str) -> str:
        sink = pa.BufferOutputStream()
        compression = "zstd" if pa.Codec.is_available("zstd") else "snappy"
        pq.write_table(table, sink, compression=compression)
        key = f"{self.prefix}part-{run_id}-{uuid.uuid4().hex}.parquet"
        self.backend.put_atomic(key, sink.getvalue().to_pybytes())
        return key

    # ------------------------------------------------------------------ reading
    def parts(self) -> list[str]:
        """Keys of the current part files."""
        return [k for k, _ in self.backend.list(self.prefix) if _PART_RE.match(k[len(self.prefix) :])]

    def _read_part(self, key: str, schema: pa.Schema = MANIFEST_SCHEMA) -> pa.Table:
        data = self.backend.get(key)
        try:
            file = pq.ParquetFile(pa.BufferReader(data))
            present = set(file.schema_arrow.names)
            table = file.read(columns=[f.name for f in schema if f.name in present])
            # Columns are selected by name so parts from an older writer that lack a
            # column (future schema growth) still merge.
            cols = {f.name: (table[f.name].cast(f.type) if f.name in present else pa.nulls(table.num_rows, f.type))
                    for f in schema}
            return pa.Table.from_pydict(cols, schema=schema)
        except (pa.ArrowException, ValueError, OSError) as e:
            raise CorruptObject(self.backend.uri(key), f"unreadable manifest part: {e}") from e

    def _read_all(self, schema: pa.Schema = MANIFEST_SCHEMA) -> tuple[list[str], pa.Table]:
        # A concurrent compact() may delete a part between our listing and our read;
        # its rows are then in a newer part, so list again.
        for _ in range(5):
            keys = self.parts()
            try:
                if len(keys) <= 1:
                    tables = [self._read_or_quarantine(k, schema) for k in keys]
                else:
                    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(keys))) as pool:
                        tables = list(pool.map(lambda k: self._read_or_quarantine(k, schema), keys))
            except ObjectNotFound:
                continue
            readable = [k for k, t in zip(keys, tables) if t is not None]
            tables = [t for t in tables if t is not None]
            if not tables:
                return readable, schema.empty_table()
            return readable, pa.concat_tables(tables)
        raise RuntimeError(f"manifest parts under {self.backend.uri(self.prefix)} kept changing while reading")

    def _read_or_quarantine(self, key: str, schema: pa.Schema = MANIFEST_SCHEMA) -> pa.Table | None:
        """The part's rows, or None when it is damaged: it is then moved aside under
        `quarantine/` (kept for inspection, never read again) and its images, having no
        row any more, are simply done again by the next job instead of failing every job."""
        try:
            return self._read_part(key, schema)
        except CorruptObject as e:
            target = f"{self.prefix}{QUARANTINE_DIR}/{key[len(self.prefix):]}"
            log.warning("%s; moved to %s, its images will be done again", e, self.backend.uri(target))
            try:
                self.backend.put_atomic(target, self.backend.get(key))
            except ObjectNotFound:
                return None  # compacted away meanwhile
            self.backend.delete(key)
            self.quarantined.append(target)
            return None

    def read(self, *, dedupe: bool = True, columns: Iterable[str] | None = None) -> pa.Table:
        """All rows, one per uri (the latest; see module docstring), sorted by uri.
        `dedupe=False` returns every row of every part (for audits). `columns` reads only
        those (plus what de-duplication needs): a skip decision over a million rows need
        not hold every image's sha256 and feature key."""
        schema = MANIFEST_SCHEMA
        if columns is not None:
            wanted = set(columns) | set(_DEDUPE_COLUMNS)
            schema = pa.schema([f for f in MANIFEST_SCHEMA if f.name in wanted])
        _, table = self._read_all(schema)
        return _dedupe(table) if dedupe else table

    def done_index(self) -> dict[str, DoneEntry]:
        """uri -> DoneEntry(size, etag, sha256, status) of the latest row per uri."""
        table = self.read()
        return {
            uri: DoneEntry(size, etag, sha, status)
            for uri, size, etag, sha, status in zip(
                table["uri"].to_pylist(),
                table["size"].to_pylist(),
                table["etag"].to_pylist(),
                table["sha256"].to_pylist(),
                table["status"].to_pylist(),
            )
        }

    def compact(self, *, run_id: str = "compact", part_rows: int = PART_ROWS) -> str | None:
        """Fold all current parts into de-duplicated parts of at most `part_rows` rows,
        sorted by uri; returns the first new key (None when there was nothing to fold).
        Parts written meanwhile are left alone. Reads and rewrites the whole manifest:
        see `compact_small` for what a job runs after every incremental run."""
        keys, table = self._read_all()
        if len(keys) <= 1:
            return keys[0] if keys else None
        return self._replace(keys, _dedupe(table), run_id, part_rows)

    def compact_small(self, *, run_id: str = "compact", small_bytes: int = SMALL_PART_BYTES,
                      min_parts: int = 2, part_rows: int = PART_ROWS) -> str | None:
        """Fold only the parts smaller than `small_bytes` (what incremental runs and
        flushes leave) into parts of at most `part_rows` rows; large parts are not read.
        Its cost follows the new rows, not the size of the manifest. Returns the first new
        key, or None when fewer than `min_parts` small parts exist."""
        small = [k for k, size in self.backend.list(self.prefix)
                 if _PART_RE.match(k[len(self.prefix):]) and size < small_bytes]
        if len(small) < max(2, min_parts):
            return None
        try:
            tables = [t for t in map(self._read_or_quarantine, small) if t is not None]
        except ObjectNotFound:
            return None  # another compaction got there first
        if not tables:
            return None
        return self._replace(small, _dedupe(pa.concat_tables(tables)), run_id, part_rows)

    def _replace(self, old_keys: list[str], rows: pa.Table, run_id: str, part_rows: int) -> str | None:
        """Publish `rows` (de-duplicated, sorted by uri) as parts of <= `part_rows` rows,
        then delete `old_keys`: a crash in between leaves duplicates that reads resolve."""
        new_keys = [self._write_part(rows.slice(start, part_rows), run_id)
                    for start in range(0, rows.num_rows, max(1, part_rows))]
        for key in old_keys:
            if key not in new_keys:
                self.backend.delete(key)
        return new_keys[0] if new_keys else None


_DEDUPE_COLUMNS = ("uri", "time", "status", "run_id")


def _dedupe(table: pa.Table) -> pa.Table:
    """Keep the winning row per uri: latest time, then ok over error, then later run id."""
    if table.num_rows == 0:
        return table
    status_rank = pc.if_else(pc.equal(table["status"], "ok"), 1, 0)
    indexed = table.select(["uri", "time", "run_id"]).append_column("_ok", status_rank)
    indexed = indexed.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    # Sort so the winner of each uri comes first, then take the first row per uri.
    # (Arrow's sort is stable, so equal keys keep part order: the last part wins.)
    # Sort indices only (not a sorted copy of the key columns): at a million rows the
    # copies were most of a no-op run's memory.
    order = pc.sort_indices(indexed, sort_keys=[
        ("uri", "ascending"), ("time", "descending"), ("_ok", "descending"), ("run_id", "descending"),
        ("_row", "descending")])
    del indexed
    uris = table["uri"].take(order).combine_chunks()
    first = pc.not_equal(uris.slice(1), uris.slice(0, len(uris) - 1))
    del uris
    keep = pa.concat_arrays([pa.array([True]), first.fill_null(True)])
    return table.take(order.filter(keep))
