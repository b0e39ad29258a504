"""Artifact byte stores: where the bytes of artifacts live once they are committed.

The index (path, size, sha256, state) lives in PostgreSQL (store/artifacts.py); a store
only keeps immutable objects under keys that trackd chooses, one per upload
(`objects/<upload id>`), so that a replaced artifact never mixes the bytes of two uploads.
Uploads are staged as local files under `staging_dir` first (resumable, hashed as they
arrive); `put_file` then makes a staged file a durable object.

Two stores: `LocalStore` (a directory; the default, under the data directory) and
`S3Store` (an S3-compatible bucket and prefix, through obstore). `open_store` picks one
from a URI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

# The largest chunk a store yields when reading, and a download message carries.
READ_CHUNK_BYTES = 1024 * 1024


class BlobStore(Protocol):
    """A place for immutable artifact objects."""

    # The store's root URI, as users configure it ("/srv/trackd/artifacts",
    # "s3://bucket/prefix"); never holds a secret.
    uri: str
    # A local directory for staged uploads; on the same filesystem as the objects for
    # LocalStore (so that put_file is a rename).
    staging_dir: Path

    async def put_file(self, key: str, staged: Path) -> None:
        """Stores the staged file's bytes durably under `key` (fsync'd, or acknowledged by
        the object store), without reading it whole into memory. The staged file may be
        moved (LocalStore) or left in place (the caller removes it)."""
        ...

    def read(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of `key` from `offset`, `length` of them (None: to the end; a range
        past the end is cut there), in chunks of at most READ_CHUNK_BYTES, never the whole
        object in memory. Raises, on the first iteration, FileNotFoundError if the object
        is missing and ValueError for a bad key or a negative offset or length."""
        ...

    async def delete(self, key: str) -> None:
        """Removes `key`; a missing key is not an error."""
        ...

    def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every object key that starts with `prefix` (a plain string prefix, not only
        whole segments), in no particular order, a batch at a time: for a sweep that finds
        objects the index no longer knows. Never the store's own staged or temporary
        files."""
        ...

    async def close(self) -> None:
        """Releases what the store holds (connections)."""
        ...


def check_key(key: str) -> None:
    """Refuses an object key that could leave the store's root or collide with the store's
    own files: empty, absolute, with NUL or backslash, or with an empty segment or one
    that starts with '.' (names the stores keep for staging and temporary files).

    Keys are chosen by trackd ("objects/ab/<upload id>"), never by users: this guards
    against a bug, it does not validate input. Raises ValueError naming the rule.
    """
    if not key:
        raise ValueError("empty object key")
    if "\x00" in key or "\\" in key:
        raise ValueError(f"object key with NUL or backslash: {key!r}")
    if key.startswith("/"):
        raise ValueError(f"absolute object key: {key!r}")
    if any(s == "" or s.startswith(".") for s in key.split("/")):
        raise ValueError(f"object key with an empty segment or one starting with '.': {key!r}")


def open_store(uri: str, data_dir: Path) -> BlobStore:
    """The store for `uri`: "s3://bucket/prefix" for S3Store (credentials, region and
    endpoint from the AWS_* environment variables), a path or file:// URI for LocalStore.
    An empty uri means `<data_dir>/artifacts`. Raises ValueError naming the problem."""
    from trackd.server.store.blobs.local import LocalStore

    if uri.startswith("s3://"):
        from trackd.server.store.blobs.s3 import S3Store

        return S3Store(uri, staging_dir=data_dir / "artifact-staging")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise ValueError(f"unsupported artifact store URI scheme: {uri.split('://')[0]}://")
    root = Path(uri) if uri else data_dir / "artifacts"
    return LocalStore(root.resolve())
