"""Where images come from: a local folder, an S3 prefix, or a list of URIs (read through `storage`).

`list_source` yields `SourceItem(uri, size, etag_or_mtime)` — exactly what the manifest
needs to decide "already done, unchanged" without reading any bytes — and `read_bytes`
fetches one item. No Ray here: these functions run inside Ray tasks.

Sources:
- local directory: recursive, in sorted order of the path below the root. Symlinked
  files are listed under their link's path; symlinked directories are followed, but each
  physical directory is visited once, so loops end. Broken links are skipped.
- `s3://bucket/prefix`: everything below the prefix (treated as a folder, so
  `s3://b/img` lists `img/…` and not `img2/…`), paginated with ListObjectsV2.
- a list file, local or on S3: `.txt` with one URI per line (blank lines and lines
  starting with `#` ignored) or `.parquet` with a `uri` column. Entries may be local
  paths, `file://` URIs or `s3://` URIs; relative paths are relative to the list file.
  Each entry is stat'ed (size, etag/mtime); a missing entry is an error naming it.
  Entries are yielded in file order, duplicates once.
- a single image file or object.

Folder and prefix listings keep image file names (`is_image_name`); local files with
another or no extension are kept when their first bytes are an image's (`looks_like_image`),
S3 keys without an extension are kept (a non-image among them is recorded as a decode error).
Entries of a list file are taken as given (a non-image there becomes a per-item decode error).
`etag_or_mtime` is the S3 ETag without quotes, or the local mtime in nanoseconds.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import posixpath
from itertools import islice
from typing import Iterable, Iterator, NamedTuple
from urllib.parse import urlparse

from model.image_io import SNIFF_BYTES, is_image_name, looks_like_image
from storage import NotFound, StorageError, is_s3, list_objects, local_path, read_bytes, split_s3_uri, stat

__all__ = ["SourceItem", "SourceError", "SourceNotFound", "list_source", "read_bytes", "stat_uri", "LIST_FILE_EXTENSIONS",
           "is_inside"]

log = logging.getLogger(__name__)

LIST_FILE_EXTENSIONS = (".txt", ".parquet")
_STAT_BATCH = 64  # S3 HEADs issued together when stat'ing a list file's entries

#: A source cannot be listed or read (the storage layer's error; the message names the URI).
SourceError = StorageError
#: The named source object does not exist (also a FileNotFoundError).
SourceNotFound = NotFound


class SourceItem(NamedTuple):
    """One source object: its URI, size in bytes and version (S3 ETag or local mtime_ns)."""

    uri: str
    size: int
    etag_or_mtime: str


def _is_list_file(name: str) -> bool:
    return name.lower().endswith(LIST_FILE_EXTENSIONS)


def stat_uri(uri: str, *, endpoint_url: str | None = None) -> SourceItem:
    """Size and etag/mtime of one local path, file:// or s3:// object."""
    if not is_s3(uri):
        uri = os.path.abspath(local_path(uri))
    info = stat(uri, endpoint_url=endpoint_url)
    return SourceItem(info.key, info.size, info.version)


# --------------------------------------------------------------------------- listings
def _no_extension(key: str) -> bool:
    """An S3 key whose name has no extension: listed, so that an image stored without one
    is segmented, and anything else is recorded with its decode error, not dropped."""
    name = key.rsplit("/", 1)[-1]
    return "." not in name.lstrip(".") and not name.startswith(".")


def _sniffs_as_image(path: str) -> bool:
    """A local file without an image extension whose first bytes are an image's (read
    here: a few bytes per such file; on S3 that would be a request per object)."""
    try:
        with open(path, "rb") as f:
            return looks_like_image(f.read(SNIFF_BYTES))
    except OSError:
        return False


def _walk_local(root: str, filter_images: bool) -> Iterator[SourceItem]:
    seen: set[tuple[int, int]] = set()

    def walk(directory: str) -> Iterator[SourceItem]:
        try:
            st = os.stat(directory)
            ident = (st.st_dev, st.st_ino)
            if ident in seen:  # a symlink loop, or a directory linked twice
                return
            seen.add(ident)
            entries = list(os.scandir(directory))
        except OSError as e:
            raise SourceError(f"cannot list {directory}: {e}") from None
        keyed = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows symlinks; the `seen` set stops loops
                is_file = not is_dir and entry.is_file()
            except OSError:
                is_dir = is_file = False
            if not is_dir and not is_file:
                if entry.is_symlink():
                    log.warning("skipping broken symlink %s", entry.path)
                continue
            # Directories sort as "name/" so the listing is in full-path order.
            keyed.append((entry.name + ("/" if is_dir else ""), is_dir, entry))
        keyed.sort(key=lambda t: t[0])
        for _, is_dir, entry in keyed:
            if is_dir:
                yield from walk(entry.path)
            elif not filter_images or is_image_name(entry.name) or _sniffs_as_image(entry.path):
                try:
                    est = entry.stat()  # follows symlinks: size/mtime of the target
                except FileNotFoundError:  # removed while listing
                    continue
                yield SourceItem(entry.path, est.st_size, str(est.st_mtime_ns))

    yield from walk(root)


def _list_s3_prefix(src: str, endpoint_url: str | None, page_size: int, filter_images: bool) -> Iterator[SourceItem]:
    for info in list_objects(src, endpoint_url=endpoint_url, page_size=page_size):
        if not filter_images or is_image_name(info.key) or _no_extension(info.key):
            yield SourceItem(info.key, info.size, info.version)


def _list_file_entries(list_uri: str, data: bytes) -> list[str]:
    """The URIs a list file names, resolved against the list file's location."""
    if list_uri.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"cannot read list file {list_uri}: {e}") from None
        if "uri" not in table.column_names:
            raise SourceError(f"list file {list_uri} has no 'uri' column (columns: {table.column_names})")
        raw = [str(u).strip() for u in table.column("uri").to_pylist() if u is not None and str(u).strip()]
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise SourceError(f"list file {list_uri} is not UTF-8 text: {e}") from None
        raw = [line.strip() for line in text.splitlines()]
        raw = [line for line in raw if line and not line.startswith("#")]

    entries = []
    for entry in raw:
        if is_s3(entry):
            entries.append(entry)
            continue
        if is_s3(list_uri):
            if urlparse(entry).scheme:
                raise SourceError(f"list file {list_uri}: entry {entry!r} must be s3:// or relative to the list file")
            bucket, key = split_s3_uri(list_uri)
            entries.append(f"s3://{bucket}/{posixpath.normpath(posixpath.join(posixpath.dirname(key), entry))}")
            continue
        path = local_path(entry)
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(local_path(list_uri))), path)
        entries.append(os.path.normpath(path))
    return entries


def _stat_all(uris: Iterable[str], endpoint_url: str | None) -> Iterator[SourceItem]:
    """Stat URIs in order; S3 HEADs go out in parallel batches (one at a time is slow)."""
    iterator = iter(uris)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        while True:
            batch = list(islice(iterator, _STAT_BATCH))
            if not batch:
                return
            yield from pool.map(lambda u: stat_uri(u, endpoint_url=endpoint_url), batch)


def list_source(
    src: str,
    *,
    endpoint_url: str | None = None,
    filter_images: bool = True,
    page_size: int = 1000,
) -> Iterator[SourceItem]:
    """List the images of `src` (see the module docstring for the accepted forms).

    `filter_images=False` keeps every file of a folder/prefix; `page_size` is the
    ListObjectsV2 page size (S3 caps it at 1000).
    """
    if not isinstance(src, str) or not src:
        raise SourceError(f"invalid source {src!r}")
    if is_s3(src):
        bucket, key = split_s3_uri(src)
        if key and _is_list_file(key):
            uris = _list_file_entries(src, read_bytes(src, endpoint_url=endpoint_url))
            yield from _stat_all(dict.fromkeys(uris), endpoint_url)
        elif key and not key.endswith("/") and is_image_name(key):
            yield stat_uri(src, endpoint_url=endpoint_url)
        else:
            prefix = key if not key or key.endswith("/") else key + "/"
            yield from _list_s3_prefix(f"s3://{bucket}/{prefix}", endpoint_url, page_size, filter_images)
        return

    path = os.path.abspath(local_path(src))
    if os.path.isdir(path):
        yield from _walk_local(path, filter_images)
    elif os.path.isfile(path):
        if _is_list_file(path):
            uris = _list_file_entries(path, read_bytes(path))
            yield from _stat_all(dict.fromkeys(uris), endpoint_url)
        else:
            yield stat_uri(path)
    else:
        raise SourceNotFound(src, f"source not found: {src}")


def is_inside(uri: str, folder: str) -> bool:
    """Whether `uri` is `folder` or below it, by whole path components (local paths after
    resolving, s3:// as given): an output folder inside a source folder is left out of it."""
    if is_s3(uri) != is_s3(folder):
        return False
    if not is_s3(uri):
        uri, folder = os.path.realpath(local_path(uri)), os.path.realpath(local_path(folder))
    folder = folder.rstrip("/")
    return uri == folder or uri.startswith(folder + "/")
