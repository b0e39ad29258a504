"""S3Store: artifact objects in an S3-compatible bucket under a prefix, through obstore.

obstore's S3 client (Rust object_store) does the HTTP work outside the GIL: a staged file
is uploaded from its path in multipart parts, and reads stream ranged GETs. Credentials,
region and endpoint come from the AWS_* environment variables as obstore reads them
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL); an http:// endpoint (a local
S3-compatible server) is allowed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import S3Store as _ObstoreS3

from trackd.server.errors import Unavailable
from trackd.server.store.blobs import READ_CHUNK_BYTES, check_key

if TYPE_CHECKING:
    from obstore.store import ClientConfig

# Multipart part size and parts in flight per upload: at most 4 x 8 MiB buffered.
PART_BYTES = 8 * 1024 * 1024
PART_CONCURRENCY = 4
# Bytes asked for by one ranged GET: a download is a series of these, so a slow reader
# holds no request open for long, and a request that fails after sending some bytes is
# reopened where it stopped.
WINDOW_BYTES = 16 * 1024 * 1024


def parse_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of "s3://bucket/prefix" (the prefix without slashes at either
    end, possibly empty). Raises ValueError for another scheme, no bucket, credentials,
    a query or a fragment in the URI."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        raise ValueError(f"not an s3:// URI: {parts.scheme}://")
    if "@" in parts.netloc:
        raise ValueError("an s3:// URI must not hold credentials: use AWS_* variables")
    if parts.query or parts.fragment:
        raise ValueError("an s3:// URI takes no query or fragment")
    if not parts.netloc:
        raise ValueError("an s3:// URI needs a bucket: s3://bucket/prefix")
    return parts.netloc, parts.path.strip("/")


def _endpoint() -> str:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"):
        if value := os.environ.get(name):
            return value
    return ""


class S3Store:
    """Objects at `s3://<bucket>/<prefix>/<key>`; uploads staged in `staging_dir`."""

    def __init__(self, uri: str, staging_dir: Path) -> None:
        bucket, prefix = parse_uri(uri)
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.staging_dir = staging_dir
        staging_dir.mkdir(parents=True, exist_ok=True)
        options: ClientConfig = {"timeout": "300s", "connect_timeout": "10s"}
        if _endpoint().startswith("http://"):
            options["allow_http"] = True
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            self._store = _ObstoreS3(
                bucket, prefix=prefix or None, client_options=options, region=region
            )
        else:
            self._store = _ObstoreS3(bucket, prefix=prefix or None, client_options=options)

    async def put_file(self, key: str, staged: Path) -> None:
        """Uploads `staged` to `key` (replacing an object there), in multipart parts read
        from the file, never the whole file in memory; done once the bucket has
        acknowledged the whole object. The staged file stays (the caller removes it).
        Raises ValueError for a bad key and Unavailable when the bucket fails."""
        check_key(key)
        try:
            await obstore.put_async(
                self._store,
                key,
                staged,
                chunk_size=PART_BYTES,
                max_concurrency=PART_CONCURRENCY,
            )
        except BaseError as e:
            raise _unavailable(e) from e

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The bytes of `key` from `offset`, `length` of them (None: to the end; a range
        past the end is cut there), by ranged GETs of WINDOW_BYTES streamed in chunks of at
        most READ_CHUNK_BYTES. Raises, on the first iteration, FileNotFoundError if the
        object is missing, ValueError for a bad key or a negative offset or length, and
        Unavailable when the bucket fails (a GET that fails twice in a row without a
        byte)."""
        check_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("negative offset or length")
        try:
            size = (await obstore.head_async(self._store, key))["size"]
        except NotFoundError as e:
            raise FileNotFoundError(key) from e
        except BaseError as e:
            raise _unavailable(e) from e
        end = size if length is None else min(size, offset + length)
        pos = offset
        failures = 0
        while pos < end:
            stop = min(end, pos + WINDOW_BYTES)
            try:
                result = await obstore.get_async(self._store, key, options={"range": (pos, stop)})
                async for piece in result.stream(min_chunk_size=READ_CHUNK_BYTES):
                    for i in range(0, len(piece), READ_CHUNK_BYTES):
                        chunk = piece[i : i + READ_CHUNK_BYTES]
                        pos += len(chunk)
                        failures = 0
                        yield chunk
            except NotFoundError as e:
                raise FileNotFoundError(key) from e
            except BaseError as e:
                # Objects are immutable, so a GET reopened from `pos` continues the same
                # bytes; a request that timed out under a slow reader is reopened.
                failures += 1
                if failures >= 2:
                    raise _unavailable(e) from e

    async def delete(self, key: str) -> None:
        """Removes `key`; a missing key is not an error. Raises ValueError for a bad key and
        Unavailable when the bucket fails."""
        check_key(key)
        try:
            await obstore.delete_async(self._store, key)
        except NotFoundError:
            pass
        except BaseError as e:
            raise _unavailable(e) from e

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every key under the store's prefix that starts with `prefix`, a page of 1000 at
        a time. Raises obstore's errors from the bucket."""
        directory = prefix.rpartition("/")[0]
        stream = obstore.list(self._store, prefix=directory or None, chunk_size=1000)
        async for page in stream:
            for meta in page:
                key = meta["path"]
                if key.startswith(prefix):
                    yield key

    async def close(self) -> None:
        """Nothing to release: obstore's connection pool goes with the store."""


def _unavailable(error: BaseError) -> Unavailable:
    """What a caller sees of a bucket that failed: UNAVAILABLE, retry later."""
    return Unavailable(
        f"the artifact store did not answer ({type(error).__name__}); retry the call"
    )
