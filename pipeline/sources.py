"""Where images come from: a local folder, an S3 prefix, or a list of URIs (DESIGN §2).

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
from urllib.parse import unquote, urlparse

from model.image_io import SNIFF_BYTES, is_image_name, looks_like_image
from store.backends import s3_client, split_s3_uri

__all__ = ["SourceItem", "SourceError", "SourceNotFound", "list_source", "read_bytes", "stat_uri", "LIST_FILE_EXTENSIONS",
           "is_inside"]

log = logging.getLogger(__name__)

LIST_FILE_EXTENSIONS = (".txt", ".parquet")
_STAT_BATCH = 64  # S3 HEADs issued together when stat'ing a list file's entries


class SourceItem(NamedTuple):
    """One source object: its URI, size in bytes and version (S3 ETag or local mtime_ns)."""

    uri: str
    size: int
    etag_or_mtime: str


class SourceError(Exception):
    """A source cannot be listed or read; the message names the URI."""


class SourceNotFound(SourceError, FileNotFoundError):
    """The named source object does not exist."""


# --------------------------------------------------------------------------- helpers
def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _local_path(uri: str) -> str:
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"file:// URI with a remote host is not supported: {uri}")
        return unquote(parsed.path)
    scheme = urlparse(uri).scheme
    if scheme and len(scheme) > 1:
        raise SourceError(f"unsupported URI scheme {scheme!r}: {uri} (use a path, file:// or s3://)")
    return uri


def _is_list_file(name: str) -> bool:
    return name.lower().endswith(LIST_FILE_EXTENSIONS)


def _s3_error(exc: Exception, uri: str) -> SourceError:
    code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))
    if code in ("NoSuchKey", "404", "NotFound"):
        return SourceNotFound(f"source object not found: {uri}")
    if code == "NoSuchBucket":
        return SourceError(f"bucket does not exist: {uri}")
    return SourceError(f"cannot access {uri}: {code or type(exc).__name__}: {exc}")


def _stat_local(path: str) -> SourceItem:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise SourceNotFound(f"source object not found: {path}") from None
    except OSError as e:
        raise SourceError(f"cannot stat {path}: {e}") from None
    if not os.path.isfile(path):
        raise SourceError(f"not a regular file: {path}")
    return SourceItem(path, st.st_size, str(st.st_mtime_ns))


def _stat_s3(uri: str, endpoint_url: str | None) -> SourceItem:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    if not key:
        raise SourceError(f"not an object URI (no key): {uri}")
    try:
        head = s3_client(endpoint_url).head_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as e:
        raise _s3_error(e, uri) from e
    return SourceItem(uri, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'))


def stat_uri(uri: str, *, endpoint_url: str | None = None) -> SourceItem:
    """Size and etag/mtime of one local path, file:// or s3:// object."""
    if _is_s3(uri):
        return _stat_s3(uri, endpoint_url)
    return _stat_local(os.path.abspath(_local_path(uri)))


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


def _list_s3_prefix(bucket: str, prefix: str, endpoint_url: str | None, page_size: int, filter_images: bool) -> Iterator[SourceItem]:
    from botocore.exceptions import BotoCoreError, ClientError

    paginator = s3_client(endpoint_url).get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
    try:
        for page in pages:
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                if key.endswith("/") or (filter_images and not (is_image_name(key) or _no_extension(key))):
                    continue
                yield SourceItem(f"s3://{bucket}/{key}", int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
    except (ClientError, BotoCoreError) as e:
        raise _s3_error(e, f"s3://{bucket}/{prefix}") from e


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
        if _is_s3(entry):
            entries.append(entry)
            continue
        if _is_s3(list_uri):
            if urlparse(entry).scheme:
                raise SourceError(f"list file {list_uri}: entry {entry!r} must be s3:// or relative to the list file")
            bucket, key = split_s3_uri(list_uri)
            entries.append(f"s3://{bucket}/{posixpath.normpath(posixpath.join(posixpath.dirname(key), entry))}")
            continue
        path = _local_path(entry)
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(_local_path(list_uri))), path)
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
    if _is_s3(src):
        bucket, key = split_s3_uri(src)
        if key and _is_list_file(key):
            uris = _list_file_entries(src, read_bytes(src, endpoint_url=endpoint_url))
            yield from _stat_all(dict.fromkeys(uris), endpoint_url)
        elif key and not key.endswith("/") and is_image_name(key):
            yield _stat_s3(src, endpoint_url)
        else:
            prefix = key if not key or key.endswith("/") else key + "/"
            yield from _list_s3_prefix(bucket, prefix, endpoint_url, page_size, filter_images)
        return

    path = os.path.abspath(_local_path(src))
    if os.path.isdir(path):
        yield from _walk_local(path, filter_images)
    elif os.path.isfile(path):
        if _is_list_file(path):
            uris = _list_file_entries(path, read_bytes(path))
            yield from _stat_all(dict.fromkeys(uris), endpoint_url)
        else:
            yield _stat_local(path)
    else:
        raise SourceNotFound(f"source not found: {src}")


def is_inside(uri: str, folder: str) -> bool:
    """Whether `uri` is `folder` or below it, by whole path components (local paths after
    resolving, s3:// as given): an output folder inside a source folder is left out of it."""
    if _is_s3(uri) != _is_s3(folder):
        return False
    if not _is_s3(uri):
        uri, folder = os.path.realpath(_local_path(uri)), os.path.realpath(_local_path(folder))
    folder = folder.rstrip("/")
    return uri == folder or uri.startswith(folder + "/")


def read_bytes(uri: str, *, endpoint_url: str | None = None) -> bytes:
    """The bytes of one local path, file:// or s3:// object."""
    if _is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3_uri(uri)
        if not key:
            raise SourceError(f"not an object URI (no key): {uri}")
        try:
            return s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as e:
            raise _s3_error(e, uri) from e
    path = _local_path(uri)
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise SourceNotFound(f"source object not found: {uri}") from None
    except IsADirectoryError:
        raise SourceError(f"is a directory, not an object: {uri}") from None
    except OSError as e:
        raise SourceError(f"cannot read {uri}: {e}") from None

