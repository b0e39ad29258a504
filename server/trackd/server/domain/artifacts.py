"""Artifact rules: paths, owners and their states, size limits, uploads that become
visible only once whole, listing pages, deletion and the sweep of what is left over.

An upload is staged in a local file named by its id (`<staging_dir>/<upload id>`), hashed
as its bytes arrive. Bytes are acknowledged only after fsync, so a resumed upload goes on
from what the server holds. On finish the size and SHA-256 are checked, the staged file
becomes the immutable object `objects/<id[:2]>/<id>` of the store, and only then, in one
transaction, does the index row appear (replacing an older one, whose object becomes
garbage). A killed server leaves a staged file and an upload row, which nobody sees and
the sweep removes after the upload TTL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import mimetypes
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackd.server.clock import now_ms
from trackd.server.domain import paging, validation
from trackd.server.errors import (
    ArtifactTooLarge,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    model_not_found,
    run_not_found,
)
from trackd.server.store import artifacts as store
from trackd.server.store.blobs import BlobStore
from trackd.server.store.pool import Connection, Database

log = logging.getLogger(__name__)

PATH_BYTES_MAX = 1024
SEGMENT_BYTES_MAX = 255
CHUNK_BYTES_MAX = 1024 * 1024
# Bytes received between two acknowledgements (each after an fsync of the staged file).
ACK_BYTES = 32 * 1024 * 1024
LIST_DEFAULT = 1000
LIST_MAX = 10_000
# Seconds a replaced or deleted object stays in the store (a download may still read it).
GARBAGE_GRACE_S = 3600.0
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

mimetypes.add_type("application/vnd.apache.parquet", ".parquet")
mimetypes.add_type("application/yaml", ".yaml")
mimetypes.add_type("application/yaml", ".yml")
mimetypes.add_type("text/markdown", ".md")


def check_path(path: str, field: str, *, root_ok: bool = False) -> str:
    """Returns a well-formed artifact path, or raises InvalidArgument naming the rule it
    breaks. `root_ok`: the empty path (the owner's root directory) is allowed."""
    if not path:
        if root_ok:
            return path
        raise InvalidArgument.for_field(field, "is empty; name a file such as 'model/weights.bin'")
    size = len(path.encode("utf-8"))
    if size > PATH_BYTES_MAX:
        raise InvalidArgument.for_field(
            field, f"is {size} bytes in UTF-8; a path is at most {PATH_BYTES_MAX} bytes"
        )
    if "\x00" in path:
        raise InvalidArgument.for_field(field, "contains NUL; a path may not")
    if _CONTROL_RE.search(path):
        raise InvalidArgument.for_field(field, "contains a control character; a path may not")
    if "\\" in path:
        raise InvalidArgument.for_field(
            field, "contains a backslash; separate directories with '/'"
        )
    if path.startswith("/"):
        raise InvalidArgument.for_field(field, "is absolute; a path is relative to the root")
    for segment in path.split("/"):
        if segment == "":
            raise InvalidArgument.for_field(field, "has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise InvalidArgument.for_field(field, f"has a {segment!r} segment; a path may not")
        if len(segment.encode("utf-8")) > SEGMENT_BYTES_MAX:
            raise InvalidArgument.for_field(
                field, f"has a segment over {SEGMENT_BYTES_MAX} bytes in UTF-8"
            )
    return path


def _owner(kind: int, ident: str, row: Any) -> Owner:
    """The Owner of a store.owner row; NotFound if there is none (a deleted logged model
    is missing, a deleted run is not)."""
    if row is None or (kind == store.MODEL and row["deleted"]):
        raise run_not_found(ident) if kind == store.RUN else model_not_found(ident)
    return Owner(
        kind,
        ident,
        row["pk"],
        row["experiment_id"],
        row["artifact_uri"],
        row["deleted"],
        row["experiment_deleted"],
    )


def _upload_gone(upload_id: str) -> NotFound:
    return NotFound(
        f"no upload in progress has id {upload_id} (finished, abandoned or swept); "
        "start a new upload",
        metadata={"upload_id": upload_id},
    )


def _sha256(value: str, field: str) -> str:
    """A SHA-256 as lowercase hex ("" for none); InvalidArgument if malformed."""
    sha = value.lower()
    if sha and not _SHA256_RE.fullmatch(sha):
        raise InvalidArgument.for_field(field, "is not 64 hex digits")
    return sha


def check_range(offset: int, length: int) -> None:
    """InvalidArgument for a negative offset or length of a download."""
    if offset < 0:
        raise InvalidArgument.for_field("offset", f"is {offset}; it must be >= 0")
    if length < 0:
        raise InvalidArgument.for_field("length", f"is {length}; it must be >= 0")


def content_type(path: str) -> str:
    """The media type of a file by its name."""
    guessed, _ = mimetypes.guess_type(path, strict=False)
    return guessed or "application/octet-stream"


def object_key(upload_id: str) -> str:
    """The store key of an upload's object."""
    return f"objects/{upload_id[:2]}/{upload_id}"


@dataclass(frozen=True)
class Owner:
    """A run or a logged model, resolved: its kind, primary key and state."""

    kind: int
    ident: str
    pk: int
    experiment_id: int
    artifact_uri: str
    deleted: bool
    experiment_deleted: bool

    @property
    def noun(self) -> str:
        return "run" if self.kind == store.RUN else "logged model"

    def writable(self) -> None:
        """FailedPrecondition unless the owner and its experiment are live."""
        if self.experiment_deleted:
            raise FailedPrecondition(
                f"experiment {self.experiment_id} of {self.noun} {self.ident} is deleted",
                metadata={"experiment_id": str(self.experiment_id)},
            )
        if self.deleted:
            raise FailedPrecondition(
                f"{self.noun} {self.ident} is deleted", metadata={self.id_field: self.ident}
            )

    @property
    def id_field(self) -> str:
        return "run_id" if self.kind == store.RUN else "model_id"


def owner_of(request: Any, prefix: str = "") -> tuple[int, str]:
    """(kind, id) of the owner a request names through its `owner` oneof; InvalidArgument
    for none or a malformed id."""
    which = request.WhichOneof("owner")
    if which == "run_id":
        return store.RUN, validation.run_id(request.run_id, prefix + "run_id")
    if which == "model_id":
        return store.MODEL, validation.model_id(request.model_id, prefix + "model_id")
    raise InvalidArgument.for_field(prefix + "owner", "is unset; give run_id or model_id")


def _parquet_rows(path: Path) -> int | None:
    """The row count in a Parquet file's footer (read with pyarrow, when installed); None
    when pyarrow is missing or the file is not readable Parquet."""
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        return int(pq.read_metadata(path).num_rows)
    except Exception:  # noqa: BLE001 - not a readable Parquet file: no count
        return None


# Blocking file work of uploads (writes, fsyncs, hashing); a write whose call is cancelled
# still completes here, and the staged file is closed only after it.
_IO = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="artifact-io")
# Background fsyncs of staged files (each waits for the write before it first).
_SYNC = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="artifact-sync")


def _fsync_after(previous: concurrent.futures.Future[Any] | None, fd: int) -> None:
    if previous is not None:
        previous.result()
    os.fsync(fd)


@dataclass
class Upload:
    """One upload being received: its staged file, hash and counts so far."""

    upload_id: str
    owner: Owner
    path: str
    declared_size: int | None
    declared_sha256: str
    staged: Path
    received: int = 0
    acked: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    newlines: int = 0
    last_byte: bytes = b""
    fd: int = -1
    # The last blocking call on the staged file (a write goes on while the next chunk is
    # received), and the background fsync with the offset it makes durable.
    inflight: concurrent.futures.Future[Any] | None = None
    syncing: concurrent.futures.Future[Any] | None = None
    sync_target: int = 0
    # Set when a resume in another call took the upload over (this call then ends ABORTED).
    taken_over: bool = False

    @property
    def csv(self) -> bool:
        return self.path.lower().endswith(".csv")

    async def io(self, fn: Any, *args: Any) -> Any:
        """Runs a blocking call on the staged file in the artifact I/O threads."""
        self.inflight = _IO.submit(fn, *args)
        return await asyncio.wrap_future(self.inflight)

    def close(self) -> None:
        """Closes the staged file, once the blocking call on it (if any) has ended."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return

        def close_fd() -> None:
            with contextlib.suppress(OSError):
                os.close(fd)

        pending = [f for f in (self.inflight, self.syncing) if f is not None and not f.done()]
        if not pending:
            close_fd()
            return
        left = [len(pending)]

        def one_done(_: object) -> None:
            left[0] -= 1
            if left[0] == 0:
                close_fd()

        for future in pending:
            future.add_done_callback(one_done)


class Artifacts:
    """The artifacts of runs and logged models over the index and a byte store."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        max_bytes: int,
        upload_ttl_s: float,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.max_bytes = max_bytes
        self.upload_ttl_s = upload_ttl_s
        # Uploads received by this process: a resumed one cancels the call still holding it.
        self._active: dict[str, tuple[asyncio.Task[Any], Upload]] = {}

    # -- owners ------------------------------------------------------------------------

    async def owner(self, kind: int, ident: str) -> Owner:
        """The owner by kind and well-formed id; NotFound if missing (a deleted logged
        model is missing, a deleted run is not)."""
        return _owner(kind, ident, await self.db.read(lambda c: store.owner(c, kind, ident)))

    def _too_large(self, size: int) -> ArtifactTooLarge:
        return ArtifactTooLarge(
            f"the artifact is {size} bytes or more; this server stores at most "
            f"{self.max_bytes} bytes a file (--artifact-max-bytes)",
            metadata={"max_bytes": str(self.max_bytes)},
        )

    # -- uploads -----------------------------------------------------------------------

    async def begin(self, owner: Owner, start: Any) -> Upload:
        """Opens a new upload, or resumes the one `start.upload_id` names (checking that it
        is the same owner and path); the staged file is open for appending."""
        path = check_path(start.path, "start.path")
        declared = start.size if start.HasField("size") else None
        if declared is not None and declared < 0:
            raise InvalidArgument.for_field("start.size", f"is {declared}; it must be >= 0")
        if declared is not None and declared > self.max_bytes:
            raise self._too_large(declared)
        sha = _sha256(start.sha256, "start.sha256")
        owner.writable()
        clash = await self.db.read(lambda c: store.conflict(c, owner.kind, owner.pk, path))
        if clash is not None:
            raise self._conflict(path, clash)
        if start.upload_id:
            return await self._resume(owner, path, declared, sha, start.upload_id)
        upload_id = uuid.uuid4().hex
        staged = self.blobs.staging_dir / upload_id
        await self.db.transact(
            lambda c: store.new_upload(
                c, upload_id, owner.kind, owner.pk, path, declared, sha, now_ms()
            )
        )
        upload = Upload(upload_id, owner, path, declared, sha, staged)
        upload.fd = await upload.io(os.open, staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._hold(upload)
        return upload

    def _conflict(self, path: str, clash: str) -> FailedPrecondition:
        if clash.startswith(path + "/"):
            what = f"{path!r} is a directory (it holds {clash!r})"
        else:
            what = f"{clash!r} is a file, so {path!r} cannot be under it"
        return FailedPrecondition(
            f"path conflict: {what}; a file cannot share its path with a directory",
            metadata={"path": path},
        )

    async def _resume(
        self, owner: Owner, path: str, declared: int | None, sha: str, upload_id: str
    ) -> Upload:
        try:
            upload_id = uuid.UUID(upload_id).hex
        except ValueError:
            raise InvalidArgument.for_field(
                "start.upload_id", "is not an upload id this server gave"
            ) from None
        row = await self.db.read(lambda c: store.get_upload(c, upload_id))
        staged = self.blobs.staging_dir / upload_id
        if row is None:
            raise _upload_gone(upload_id)
        if (row["owner_kind"], row["owner_pk"], row["path"]) != (owner.kind, owner.pk, path):
            raise FailedPrecondition(
                f"upload {upload_id} is of another owner or path",
                metadata={"upload_id": upload_id},
            )
        if declared is None:
            declared = row["declared_size"]
        elif row["declared_size"] is not None and declared != row["declared_size"]:
            raise FailedPrecondition(
                f"upload {upload_id} was started with size {row['declared_size']}",
                metadata={"upload_id": upload_id},
            )
        await self._take_over(upload_id)
        upload = Upload(upload_id, owner, path, declared, sha or row["declared_sha256"], staged)
        self._hold(upload)
        # Rebuild the hash and counts from the bytes held (durable from here on).
        try:
            upload.fd = await upload.io(os.open, staged, os.O_RDWR)
        except FileNotFoundError:
            self.release(upload)
            raise _upload_gone(upload_id) from None  # swept meanwhile
        await upload.io(self._rehash, upload)
        upload.acked = upload.received
        await self.db.transact(lambda c: store.touch_upload(c, upload_id, now_ms()))
        return upload

    @staticmethod
    def _rehash(upload: Upload) -> None:
        os.fsync(upload.fd)
        with open(upload.staged, "rb") as f:
            while chunk := f.read(CHUNK_BYTES_MAX):
                upload.hasher.update(chunk)
                if upload.csv:
                    upload.newlines += chunk.count(b"\n")
                upload.last_byte = chunk[-1:]
                upload.received += len(chunk)
        os.lseek(upload.fd, upload.received, os.SEEK_SET)

    def _hold(self, upload: Upload) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._active[upload.upload_id] = (task, upload)

    async def _take_over(self, upload_id: str) -> None:
        """Ends the call of this process still receiving the upload (its client is gone
        but its connection not yet found dead) and waits for its last write."""
        held = self._active.get(upload_id)
        if held is None:
            return
        task, old = held
        if task is not asyncio.current_task() and not task.done():
            old.taken_over = True
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), 10)
        for future in (old.inflight, old.syncing):
            if future is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.wrap_future(future), 10)

    def release(self, upload: Upload) -> None:
        """Closes the staged file of a call that ends (the upload stays resumable)."""
        held = self._active.get(upload.upload_id)
        if held is not None and held[1] is upload:
            del self._active[upload.upload_id]
        upload.close()

    async def write(self, upload: Upload, data: bytes) -> int | None:
        """Appends a chunk: its write and hashing go on in a thread while the next chunk
        arrives. Every ACK_BYTES a background fsync starts; the bytes it made durable are
        returned (to acknowledge) by the first write after it ended, else None."""
        if len(data) > CHUNK_BYTES_MAX:
            raise InvalidArgument.for_field(
                "data", f"is {len(data)} bytes; a chunk is at most {CHUNK_BYTES_MAX} bytes"
            )
        total = upload.received + len(data)
        if total > self.max_bytes:
            raise self._too_large(total)
        if upload.declared_size is not None and total > upload.declared_size:
            raise InvalidArgument.for_field(
                "data", f"goes past the declared size of {upload.declared_size} bytes"
            )
        if upload.inflight is not None:
            await asyncio.wrap_future(upload.inflight)  # the previous chunk (its error)
        upload.inflight = _IO.submit(self._append, upload, data)
        upload.received = total
        acked = None
        if upload.syncing is not None and upload.syncing.done():
            upload.syncing.result()
            upload.syncing = None
            upload.acked = acked = upload.sync_target
            await self.db.transact(lambda c: store.touch_upload(c, upload.upload_id, now_ms()))
        if upload.syncing is None and upload.received - upload.acked >= ACK_BYTES:
            upload.sync_target = upload.received
            upload.syncing = _SYNC.submit(_fsync_after, upload.inflight, upload.fd)
        return acked

    @staticmethod
    def _append(upload: Upload, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(upload.fd, view)
            view = view[written:]
        upload.hasher.update(data)
        if upload.csv:
            upload.newlines += data.count(b"\n")
        if data:
            upload.last_byte = data[-1:]

    @staticmethod
    async def _drain(upload: Upload) -> None:
        """Waits for the writes and the fsync in flight."""
        for future in (upload.inflight, upload.syncing):
            if future is not None:
                await asyncio.wrap_future(future)
        upload.syncing = None

    async def sync(self, upload: Upload) -> int:
        """Makes every received byte durable; the number of bytes held."""
        await self._drain(upload)
        await upload.io(os.fsync, upload.fd)
        upload.acked = upload.received
        await self.db.transact(lambda c: store.touch_upload(c, upload.upload_id, now_ms()))
        return upload.acked

    async def finish(self, upload: Upload, sha256: str) -> dict[str, Any]:
        """Checks the upload's size and hash, stores its object and makes it visible; the
        stored file's row."""
        await self._drain(upload)
        sha = _sha256(sha256, "finish.sha256")
        if sha and upload.declared_sha256 and sha != upload.declared_sha256:
            raise InvalidArgument.for_field(
                "finish.sha256", "differs from the sha256 given in the start"
            )
        expected = sha or upload.declared_sha256
        if upload.declared_size is not None and upload.received != upload.declared_size:
            raise InvalidArgument.for_field(
                "finish",
                f"came after {upload.received} bytes; the start declared {upload.declared_size}",
            )
        actual = upload.hasher.hexdigest()
        if expected and actual != expected:
            await self.abort(upload)
            raise InvalidArgument.for_field(
                "sha256",
                f"is {expected} but the bytes received hash to {actual}; the upload is "
                "discarded, send the file again",
            )
        self.release(upload)  # put_file makes the bytes durable
        rows = None
        if upload.path.lower().endswith(".parquet"):
            rows = await asyncio.to_thread(_parquet_rows, upload.staged)
        if upload.csv and upload.received:
            lines = upload.newlines + (0 if upload.last_byte == b"\n" else 1)
            rows = max(lines - 1, 0)
        key = object_key(upload.upload_id)
        await self.blobs.put_file(key, upload.staged)
        file = {
            "path": upload.path,
            "object_key": key,
            "size": upload.received,
            "sha256": actual,
            "content_type": content_type(upload.path),
            "row_count": rows,
            "modified_ms": now_ms(),
        }
        owner = upload.owner

        async def commit(conn: Connection) -> None:
            await store.lock_owner(conn, owner.kind, owner.pk)
            if not await store.end_upload(conn, upload.upload_id):
                raise NotFound(
                    f"upload {upload.upload_id} was finished by another call or swept",
                    metadata={"upload_id": upload.upload_id},
                )
            fresh = await store.owner(conn, owner.kind, owner.ident)
            _owner(owner.kind, owner.ident, fresh).writable()
            clash = await store.conflict(conn, owner.kind, owner.pk, upload.path)
            if clash is not None:
                raise self._conflict(upload.path, clash)
            await store.put(conn, owner.kind, owner.pk, file)

        async def discard(conn: Connection) -> None:
            # Only while the upload is still this call's: the object is then nobody's. If
            # the upload is gone, another call (or this one's commit) made it a file's.
            if await store.end_upload(conn, upload.upload_id):
                await store.add_garbage(conn, [key], 0)

        try:
            await self.db.transact(commit)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.db.transact(discard)
            raise
        finally:
            await asyncio.to_thread(_unlink, upload.staged)
        return file

    async def abort(self, upload: Upload) -> None:
        """Discards an upload and its staged bytes."""
        self.release(upload)
        await self.db.transact(lambda c: store.end_upload(c, upload.upload_id))
        await asyncio.to_thread(_unlink, upload.staged)

    # -- reads -------------------------------------------------------------------------

    async def stat(self, owner: Owner, path: str) -> dict[str, Any]:
        """The file's row; NotFound for a missing file (or a directory)."""
        check_path(path, "path")
        row = await self.db.read(lambda c: store.get(c, owner.kind, owner.pk, path))
        if row is None:
            raise NotFound(
                f"{owner.noun} {owner.ident} has no artifact file {path!r}",
                metadata={"path": path[:200]},
            )
        return dict(row)

    async def read(self, file: dict[str, Any], offset: int, length: int) -> AsyncIterator[bytes]:
        """The bytes of a file's range (length 0: to the end, cut at the end); the caller
        checks the range first (check_range)."""
        size: int = file["size"]
        offset = min(offset, size)
        count = size - offset if length == 0 else min(length, size - offset)
        if count == 0:
            return
        try:
            async for chunk in self.blobs.read(file["object_key"], offset, count):
                yield chunk
        except FileNotFoundError:
            raise NotFound(
                f"the bytes of artifact {file['path']!r} are missing from the store",
                metadata={"path": file["path"][:200]},
            ) from None

    async def list(
        self,
        owner: Owner,
        directory: str,
        recursive: bool,
        max_results: int,
        page_token: str,
    ) -> tuple[paging.Page[dict[str, Any]], str]:
        """One page of a directory's entries (direct children, or all files under it), and
        the next page's token."""
        directory = check_path(directory, "path", root_ok=True)
        limit = validation.page_size(max_results, default=LIST_DEFAULT, maximum=LIST_MAX)
        fingerprint = paging.query_fingerprint(
            "artifacts", owner.kind, owner.ident, directory, recursive
        )
        position = paging.decode(page_token, fingerprint)
        after, after_dir = "", False
        if position is not None:
            values = paging.decode_position(position)
            if len(values) != 2 or not isinstance(values[0], str):
                raise InvalidArgument.for_field("page_token", "is not a token this server issued")
            after, after_dir = values[0], bool(values[1])
        rows = await self.db.read(
            lambda c: store.list_files(
                c, owner.kind, owner.pk, directory, after, limit + 1, recursive, after_dir
            )
        )
        items = [dict(r) for r in rows[:limit]]

        def resume(i: int) -> str:
            item = items[i]
            return paging.encode(
                paging.encode_position([item["path"], int(item["is_dir"])]), fingerprint
            )

        return paging.Page(items, resume), resume(len(items) - 1) if len(rows) > limit else ""

    # -- deletion and the sweep --------------------------------------------------------

    async def delete(self, owner: Owner, path: str) -> int:
        """Deletes a file or every file under a directory; the number deleted."""
        check_path(path, "path")
        owner.writable()

        async def work(conn: Connection) -> int:
            await store.lock_owner(conn, owner.kind, owner.pk)
            return await store.delete(conn, owner.kind, owner.pk, path, now_ms())

        count = await self.db.transact(work)
        if count == 0:
            raise NotFound(
                f"{owner.noun} {owner.ident} has no artifact file or directory {path!r}",
                metadata={"path": path[:200]},
            )
        return count

    async def sweep(
        self, *, garbage_grace_s: float = GARBAGE_GRACE_S, limit: int = 1000
    ) -> dict[str, int]:
        """Removes abandoned uploads (untouched for the upload TTL) with their staged files
        and objects, and garbage objects past the grace period. Counts of each."""
        now = now_ms()
        done = {"uploads": 0, "objects": 0}
        while True:
            ids = await self.db.transact(
                lambda c: store.abandoned_uploads(c, now - int(self.upload_ttl_s * 1000), limit)
            )
            for upload_id in ids:
                held = self._active.get(upload_id)
                if held is not None and not held[0].done():
                    held[0].cancel()
                await asyncio.to_thread(_unlink, self.blobs.staging_dir / upload_id)
                await self.blobs.delete(object_key(upload_id))
            done["uploads"] += len(ids)
            if len(ids) < limit:
                break
        while True:
            keys = await self.db.read(
                lambda c: store.due_garbage(c, now - int(garbage_grace_s * 1000), limit)
            )
            for key in keys:
                await self.blobs.delete(key)
            if keys:
                await self.db.transact(functools.partial(store.forget_garbage, keys=keys))
            done["objects"] += len(keys)
            if len(keys) < limit:
                break
        return done

    async def purge_deleted(self, deleted_before_ms: int) -> int:
        """Drops the files of runs and logged models deleted at or before the time (their
        objects are removed by the next sweep, at once); the number of files."""
        return await self.db.transact(lambda c: store.purge_deleted(c, deleted_before_ms))

    async def sweep_forever(self, every_s: float) -> None:
        """The server's background sweep."""
        while True:
            await asyncio.sleep(every_s)
            try:
                done = await self.sweep()
                if done["uploads"] or done["objects"]:
                    log.info(
                        "artifact sweep removed %s abandoned uploads and %s objects",
                        done["uploads"],
                        done["objects"],
                    )
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("artifact sweep failed: %s", exc)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
