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
        """The bytes of `key` from `offset`, `length` of them (None: to the end), in chunks
        of at most READ_CHUNK_BYTES. FileNotFoundError if the object is missing."""
        ...

    async def delete(self, key: str) -> None:
        """Removes `key`; a missing key is not an error."""
        ...

    async def close(self) -> None:
        """Releases what the store holds (connections)."""
        ...


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
