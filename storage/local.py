"""Local files: atomic publication and the mapping of `OSError`s to `storage.errors`.

A write goes to a temporary file in the destination directory, is fsynced, then is
published with `os.replace` (or `os.link` when the caller must not overwrite): atomic
renames within one file system, so a reader sees the whole object or none. Temporary
names start with `TEMP_PREFIX`; listings never show them.
"""
from __future__ import annotations

import errno
import os
import uuid

from .errors import AccessDenied, NotFound, StorageError

__all__ = ["TEMP_PREFIX", "write_atomic", "read_file", "map_os_error"]

#: Prefix of in-flight temporary files; never a valid key segment.
TEMP_PREFIX = ".seemtmp-"

BytesLike = bytes | bytearray | memoryview


def map_os_error(exc: OSError, path: str, op: str) -> StorageError:
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return NotFound(path)
    if isinstance(exc, PermissionError):
        return AccessDenied(f"{op} {path}: permission denied", path)
    if isinstance(exc, IsADirectoryError):
        return StorageError(f"is a directory, not an object: {path}", path)
    return StorageError(f"cannot {op} {path}: {exc}", path)


def read_file(path: str, max_bytes: int | None = None) -> bytes:
    """The file's bytes (at most `max_bytes` + 1 when a cap is given, so a caller can
    tell a file that grew past it)."""
    try:
        with open(path, "rb") as f:
            return f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as e:
        raise map_os_error(e, path, "read") from None


def write_fully(fd: int, data: memoryview) -> None:
    """Write all of `data` to `fd` (os.write may write less than asked)."""
    chunk = 1 << 22
    pos = 0
    while pos < len(data):
        pos += os.write(fd, data[pos:pos + chunk])


def _fsync_dir(path: str) -> None:
    # The rename is only durable once the directory entry is on disk; not every
    # platform/file system lets us open a directory, which is harmless to skip.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_atomic(path: str, data: BytesLike, *, overwrite: bool = True, fsync: bool = True) -> bool:
    """Publish `data` at `path` all at once. With `overwrite=False` an existing file is
    left alone and False returned. Returns True when this call published the file."""
    directory = os.path.dirname(path)
    if not overwrite and os.path.exists(path):
        return False
    os.makedirs(directory, exist_ok=True)
    # Same directory => same file system => the final rename/link is atomic.
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            write_fully(fd, memoryview(data).cast("B"))
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
            published = True
        else:
            published = _link_no_clobber(tmp, path)
    except BaseException:
        # Any failure (disk full, interrupt) must not leave the temp file behind.
        _unlink_quietly(tmp)
        raise
    if not overwrite:
        _unlink_quietly(tmp)
    if published and fsync:
        _fsync_dir(directory)
    return published


def _link_no_clobber(tmp: str, path: str) -> bool:
    """Publish tmp at path only if path does not exist (atomic where link() works)."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        # File systems without hard links (some FUSE/SMB mounts): fall back to a
        # check-then-replace. The race it leaves is benign for content-addressed
        # objects, whose competing writers publish identical bytes.
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.exists(path):
            return False
        os.replace(tmp, path)
        return True
