"""LocalStore: artifact objects as files under a root directory, staged uploads in
`<root>/.staging` on the same filesystem, so that storing an upload is a rename.

Every blocking call (open, read, rename, fsync, scandir) runs in a worker thread, a chunk
of at most READ_CHUNK_BYTES at a time, so that a large file never holds the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

from trackd.server.store.blobs import READ_CHUNK_BYTES, check_key

STAGING = ".staging"
# Threads for reads of objects, each a chunk of at most READ_CHUNK_BYTES; a read is never
# left running on a closed file descriptor.
_READS = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="blob-read")


class LocalStore:
    """Objects at `<root>/<key>`; creates the root and the staging directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)
        self.staging_dir = root / STAGING
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        check_key(key)
        return self.root / key

    async def put_file(self, key: str, staged: Path) -> None:
        """Moves `staged` to `key` (replacing an object there) and makes it durable: the
        file is fsync'd, renamed, and its directory (and any directory created for it)
        fsync'd. A staged file on another filesystem is copied in chunks through a
        temporary file next to the object first. Raises ValueError for a bad key and
        OSError from the filesystem."""
        dest = self._path(key)
        await asyncio.to_thread(_put_file, self.root, dest, staged)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The bytes of `key` from `offset`, `length` of them (None: to the end; a range
        past the end is cut there), in chunks of at most READ_CHUNK_BYTES, each read in a
        worker thread. Raises FileNotFoundError (on the first iteration) if the object is
        missing, ValueError for a bad key or a negative offset or length."""
        path = self._path(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("negative offset or length")
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        end = None if length is None else offset + length
        # One read ahead: the next chunk is read while the caller sends this one.
        ahead = _READS.submit(_pread, fd, offset, end)
        try:
            pos = offset
            while chunk := await asyncio.wrap_future(ahead):
                pos += len(chunk)
                ahead = _READS.submit(_pread, fd, pos, end)
                yield chunk
        finally:
            # Closed once no read runs on it (at once if none does).
            ahead.add_done_callback(lambda _: os.close(fd))

    async def delete(self, key: str) -> None:
        """Removes `key`; a missing key is not an error. Raises ValueError for a bad key."""
        path = self._path(key)
        try:
            await asyncio.to_thread(os.unlink, path)
        except FileNotFoundError:
            pass

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every key that starts with `prefix`, one directory listed at a time (in a worker
        thread), never a name starting with '.' (the staging directory, temporary files).
        The order is unspecified. Raises ValueError for a prefix with NUL, '..' or a
        leading '/'."""
        if "\x00" in prefix or prefix.startswith("/") or ".." in prefix.split("/"):
            raise ValueError(f"bad key prefix: {prefix!r}")
        pending = [prefix.rpartition("/")[0]]
        while pending:
            rel = pending.pop()
            files, dirs = await asyncio.to_thread(_scan, self.root / rel)
            for name in dirs:
                child = f"{rel}/{name}" if rel else name
                if child.startswith(prefix) or prefix.startswith(child + "/"):
                    pending.append(child)
            for name in files:
                key = f"{rel}/{name}" if rel else name
                if key.startswith(prefix):
                    yield key

    async def close(self) -> None:
        """Nothing to release."""


def _pread(fd: int, pos: int, end: int | None) -> bytes:
    n = READ_CHUNK_BYTES if end is None else min(READ_CHUNK_BYTES, end - pos)
    return os.pread(fd, n, pos) if n > 0 else b""


def _scan(directory: Path) -> tuple[list[str], list[str]]:
    """The names of the regular files and of the directories (not followed if links) in
    `directory`, but none starting with '.'; nothing if it does not exist."""
    files: list[str] = []
    dirs: list[str] = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    files.append(entry.name)
    except (FileNotFoundError, NotADirectoryError):
        pass
    return files, dirs


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(root: Path, directory: Path) -> None:
    """Creates `directory` and its missing parents under `root`, fsyncing the parent of
    each directory created so that the new entries survive a crash."""
    missing: list[Path] = []
    d = directory
    while d != root and not d.is_dir():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(d.parent)


def _put_file(root: Path, dest: Path, staged: Path) -> None:
    _make_dirs(root, dest.parent)
    with open(staged, "rb") as src:
        os.fsync(src.fileno())
    try:
        os.replace(staged, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:  # the staged file is on another filesystem
            raise
        _copy_durably(staged, dest)
    _fsync_dir(dest.parent)


def _copy_durably(staged: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        with open(staged, "rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(READ_CHUNK_BYTES):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
