"""Moving artifact bytes: resumable streamed uploads and downloads over ArtifactService,
progress reporting, and the checks that keep downloaded files inside their destination.

An upload reads its source in 1 MiB chunks (never whole), hashing as it goes, and sends
the SHA-256 in its UploadFinish. When the connection drops, the upload is resumed with the
id the server gave it, from the byte the server says it holds; the hash is rebuilt from
a snapshot taken at a chunk boundary at or below that byte. A download writes to a
temporary file beside its destination, resumes a dropped stream with a ranged request,
and renames the file into place only once its size and SHA-256 match the server's
FileInfo. Both give up after a few consecutive failures that brought no progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import posixpath
import tempfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Final, Literal

import grpc

from trackd.client.errors import TrackdError
from trackd.v1 import artifact_pb2, artifact_service_pb2, artifact_service_pb2_grpc

if TYPE_CHECKING:
    from hashlib import _Hash

log = logging.getLogger(__name__)

# The most bytes of one `data` message (the contract's ARTIFACT_CHUNK_BYTES_MAX).
CHUNK_BYTES: Final = 1 << 20
# Bytes read ahead of the stream on upload, and written behind it on download, by one
# worker-thread hop each (a thread hop per 1 MiB chunk would cost more than the I/O).
BATCH_BYTES: Final = 8 * CHUNK_BYTES
# Consecutive failed attempts without progress before a transfer gives up.
MAX_RETRIES: Final = 5
BACKOFF_INITIAL: Final = 0.1
BACKOFF_MAX: Final = 2.0
# Codes after which a transfer is attempted again: the connection dropped or the call was
# cut short by the server or the network (a cancellation by the caller is CancelledError,
# never one of these).
RETRYABLE_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)


def retryable(err: grpc.aio.AioRpcError) -> bool:
    """Whether a failed transfer call is worth another attempt: one of RETRYABLE_CODES, or
    INTERNAL raised by the client's own gRPC core (a write on a connection that just broke
    is "Internal error from Core"). An INTERNAL that trackd answered carries its error
    details and is final."""
    if err.code() in RETRYABLE_CODES:
        return True
    if err.code() != grpc.StatusCode.INTERNAL:
        return False
    # A grpc.aio.Metadata at run time (the stubs type it as the blocking API's tuple).
    trailing: Any = err.trailing_metadata()
    return trailing is None or "grpc-status-details-bin" not in trailing


# Which kind of owner an artifact belongs to, and its id.
Owner = tuple[Literal["run_id", "model_id"], str]
# Called with (bytes transferred so far, total bytes) as a transfer advances; on the event
# loop's thread (the blocking client's own thread for `Client`).
ProgressCallback = Callable[[int, int], None]


def owner(run_id: str | None, model_id: str | None) -> Owner:
    """The owner of an artifact call: exactly one of a run id and a model id.

    Raises:
        ValueError: neither or both given.
    """
    if bool(run_id) == bool(model_id):
        raise ValueError("give exactly one of run_id and model_id")
    return ("run_id", run_id) if run_id else ("model_id", model_id or "")


def with_owner(message: Any, who: Owner) -> Any:
    """`message` with its `owner` oneof set; returns it."""
    setattr(message, who[0], who[1])
    return message


def artifact_path(directory: str | None, name: str) -> str:
    """The artifact path of `name` under `directory` ('/'-separated; None or "" is the
    root). The server checks the result against its path rules."""
    directory = (directory or "").strip("/")
    return posixpath.join(directory, name) if directory else name


def local_target(root: str, path: str) -> str:
    """Where the artifact `path` (as the server names it) goes under the local directory
    `root`. A path that could land outside `root` is refused, whatever the server sent: an
    absolute path, an empty, "." or ".." segment, a backslash or NUL, or a symbolic link
    under `root` leading out of it.

    Raises:
        TrackdError: (code DATA_LOSS, reason UNSAFE_PATH) the path would escape `root`.
    """
    segments = path.split("/")
    if (
        not path
        or "\\" in path
        or "\0" in path
        or any(s in {"", ".", ".."} for s in segments)
        or os.path.isabs(path)
    ):
        raise _unsafe(path)
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, *segments))
    if os.path.commonpath([real_root, target]) != real_root or target == real_root:
        raise _unsafe(path)
    return target


def _unsafe(path: str) -> TrackdError:
    return TrackdError(
        grpc.StatusCode.DATA_LOSS,
        f"the server named an artifact {path[:200]!r} that would be written outside the "
        f"destination directory; nothing was written for it",
        reason="UNSAFE_PATH",
    )


class Progress:
    """Progress of one transfer of one or more files: calls `callback(done, total)` and
    moves a tqdm bar when asked for one. `begin_file` moves the base past the files
    already done, so that `at(offset)` is an offset in the current file."""

    def __init__(
        self,
        total: int,
        callback: ProgressCallback | None = None,
        bar: bool = False,
        desc: str = "",
    ) -> None:
        self.total = total
        self.done = 0
        self._base = 0
        self._callback = callback
        self._bar: Any = None
        if bar:
            from tqdm.auto import tqdm  # type: ignore[import-untyped]

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)

    @property
    def active(self) -> bool:
        """Whether anyone is told of the progress."""
        return self._callback is not None or self._bar is not None

    def grow(self, size: int) -> None:
        """Adds `size` bytes to the total (a download learns its size from its answer)."""
        self.total += size
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def begin_file(self) -> None:
        """Makes the bytes reached so far the base of the next file's offsets."""
        self._base = self.done

    def at(self, offset: int) -> None:
        """The current file has reached `offset` bytes (it may go back on a resume)."""
        done = self._base + offset
        if self._bar is not None:
            self._bar.update(done - self.done)
        self.done = done
        if self._callback is not None:
            self._callback(done, self.total)

    def close(self) -> None:
        """Closes the bar, if any."""
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _HashSnapshots:
    """SHA-256 states at chunk boundaries of an upload, so that a resume from the byte the
    server holds rebuilds the hash by reading at most one chunk again. States below the
    server's last report are dropped as it advances."""

    def __init__(self) -> None:
        self._states: dict[int, _Hash] = {0: hashlib.sha256()}

    def add(self, offset: int, state: _Hash) -> None:
        self._states[offset] = state.copy()

    def forget_below(self, offset: int) -> None:
        """Drops every state but the last at or below `offset` (and those above it)."""
        keep = max((o for o in self._states if o <= offset), default=None)
        for o in [o for o in self._states if keep is not None and o < keep]:
            del self._states[o]

    async def resume(self, source: IO[bytes], offset: int) -> _Hash:
        """The hash of the first `offset` bytes of `source`, which is left at `offset`."""
        start = max((o for o in self._states if o <= offset), default=0)
        state = self._states[start].copy() if start in self._states else hashlib.sha256()
        await asyncio.to_thread(source.seek, start)
        while start < offset:
            block = await asyncio.to_thread(source.read, min(CHUNK_BYTES, offset - start))
            if not block:
                raise _shrunk(offset)
            state.update(block)
            start += len(block)
        return state


def _shrunk(size: int) -> TrackdError:
    return TrackdError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"the local file has fewer than the {size} bytes it had when the upload began "
        f"(was it changed during the upload?)",
        reason="LOCAL_FILE_CHANGED",
    )


class _UploadGone(Exception):
    """A resumed upload's id is unknown to the server (expired, or already finished)."""


class _UploadState:
    def __init__(self, who: Owner, path: str, size: int) -> None:
        self.owner = who
        self.path = path
        self.size = size
        self.upload_id = ""
        # The most bytes the server said it holds durably, in this upload.
        self.persisted = 0
        self.result: artifact_pb2.FileInfo | None = None
        self.hashes = _HashSnapshots()


def _protocol_error(what: str) -> TrackdError:
    return TrackdError(grpc.StatusCode.INTERNAL, what, reason="PROTOCOL_ERROR")


def _backoff(failures: int) -> float:
    return float(min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (failures - 1)))


async def upload(
    stub: artifact_service_pb2_grpc.ArtifactServiceAsyncStub,
    who: Owner,
    path: str,
    source: IO[bytes],
    size: int,
    progress: Progress,
) -> artifact_pb2.FileInfo:
    """Uploads `size` bytes of `source` (a binary file positioned anywhere; it is seeked)
    as the artifact `path` of `who`, resuming after dropped connections.

    Returns:
        The stored file's FileInfo message.

    Raises:
        grpc.aio.AioRpcError: the server refused the upload, or MAX_RETRIES attempts in a
            row failed without the server holding more bytes.
        TrackdError: the local file shrank during the upload, or the server broke the
            protocol.
    """
    state = _UploadState(who, path, size)
    failures = 0
    while True:
        before = state.persisted
        try:
            return await _upload_once(stub, state, source, progress)
        except _UploadGone:
            # Send the whole file again as a new upload.
            log.info("upload %s of %s is gone; starting it again", state.upload_id, path)
            state.upload_id, state.persisted = "", 0
            failures += 1
            if failures > MAX_RETRIES:
                raise _protocol_error(f"the upload of {path!r} kept disappearing") from None
        except grpc.aio.AioRpcError as err:
            failures = 1 if state.persisted > before else failures + 1
            if not retryable(err) or failures > MAX_RETRIES:
                raise
            log.info(
                "upload of %s broke (%s: %s) with %d of %d bytes held by the server; retrying",
                path,
                err.code().name,
                err.details(),
                state.persisted,
                size,
            )
        await asyncio.sleep(_backoff(failures))


async def _upload_once(
    stub: artifact_service_pb2_grpc.ArtifactServiceAsyncStub,
    state: _UploadState,
    source: IO[bytes],
    progress: Progress,
) -> artifact_pb2.FileInfo:
    """One UploadArtifact call: start (or resume), the missing bytes, finish."""
    call = stub.UploadArtifact()  # type: ignore[call-arg]
    reader: asyncio.Task[None] | None = None
    resuming = bool(state.upload_id)
    try:
        start = with_owner(
            artifact_service_pb2.UploadStart(
                path=state.path, size=state.size, upload_id=state.upload_id
            ),
            state.owner,
        )
        await call.write(artifact_service_pb2.UploadArtifactRequest(start=start))
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as err:
            if resuming and err.code() == grpc.StatusCode.NOT_FOUND:
                raise _UploadGone from None
            raise
        if not isinstance(first, artifact_service_pb2.UploadArtifactResponse) or not first.HasField(
            "progress"
        ):  # EOF, or not a progress report
            raise _protocol_error("the server did not answer the upload's start with its progress")
        offset = first.progress.persisted_bytes
        if not 0 <= offset <= state.size:
            raise _protocol_error(f"the server holds {offset} bytes of a {state.size}-byte file")
        if resuming:
            log.info(
                "resuming upload %s of %s at byte %d of %d",
                state.upload_id,
                state.path,
                offset,
                state.size,
            )
        state.upload_id = first.progress.upload_id
        state.persisted = offset
        reader = asyncio.create_task(_read_answers(call, state))
        hasher = await state.hashes.resume(source, offset)
        progress.at(offset)
        await _send_bytes(call, source, hasher, offset, state, progress)
        finish = artifact_service_pb2.UploadFinish(sha256=hasher.hexdigest())
        await call.write(artifact_service_pb2.UploadArtifactRequest(finish=finish))
        await call.done_writing()
    except asyncio.InvalidStateError:
        # The call ended while we wrote: the reader holds its status.
        if reader is not None:
            await reader
        raise _protocol_error("the server ended the upload before its finish") from None
    except BaseException:
        call.cancel()
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        raise
    assert reader is not None
    await reader
    if state.result is None:
        raise _protocol_error("the server ended the upload without the stored file")
    return state.result


async def _send_bytes(
    call: Any,
    source: IO[bytes],
    hasher: _Hash,
    offset: int,
    state: _UploadState,
    progress: Progress,
) -> None:
    """Sends the bytes of `source` from `offset` to the end in 1 MiB `data` messages, the
    next batch read and hashed in a worker thread while this one is sent."""

    def read_ahead(start: int) -> asyncio.Future[list[bytes]]:
        return asyncio.ensure_future(
            asyncio.to_thread(_read_batch, source, hasher, start, state, state.persisted)
        )

    ahead = read_ahead(offset) if offset < state.size else None
    try:
        while ahead is not None:
            blocks = await ahead
            if not blocks:
                raise _shrunk(state.size)
            end = offset + sum(len(b) for b in blocks)
            ahead = read_ahead(end) if end < state.size else None
            for block in blocks:
                await call.write(artifact_service_pb2.UploadArtifactRequest(data=block))
                offset += len(block)
                progress.at(offset)
    finally:
        if ahead is not None:
            # A worker thread cannot be stopped: let it finish before the file is reused.
            await asyncio.gather(ahead, return_exceptions=True)


def _read_batch(
    source: IO[bytes], hasher: _Hash, offset: int, state: _UploadState, persisted: int
) -> list[bytes]:
    """Reads up to BATCH_BYTES of `source` from `offset` (where it stands) in chunks,
    hashing them and keeping the hash state at each chunk's end; an empty list if the file
    ends before its size."""
    blocks: list[bytes] = []
    end = min(state.size, offset + BATCH_BYTES)
    state.hashes.forget_below(persisted)
    while offset < end:
        block = source.read(min(CHUNK_BYTES, end - offset))
        if not block:
            return []
        hasher.update(block)
        offset += len(block)
        state.hashes.add(offset, hasher)
        blocks.append(block)
    return blocks


async def _read_answers(call: Any, state: _UploadState) -> None:
    """Reads an upload's answers: progress reports, then the stored file."""
    while True:
        answer = await call.read()
        if not isinstance(answer, artifact_service_pb2.UploadArtifactResponse):  # grpc.aio.EOF
            return
        if answer.HasField("artifact"):
            state.result = answer.artifact
        elif answer.HasField("progress"):
            state.persisted = max(state.persisted, answer.progress.persisted_bytes)


class _Replaced(Exception):
    """The file changed on the server between two attempts of one download."""


async def download(
    stub: artifact_service_pb2_grpc.ArtifactServiceAsyncStub,
    who: Owner,
    path: str,
    dest: str,
    offset: int,
    length: int,
    progress: Progress,
    size_known: bool = False,
) -> artifact_pb2.FileInfo:
    """Downloads the artifact `path` of `who` (or the byte range `offset`, `length`; 0 is
    "to the end") into the local file `dest`, through a temporary file in the same
    directory renamed into place when complete. A whole file is checked against its
    FileInfo (size and SHA-256) before the rename.

    Args:
        size_known: the progress total already counts this file (else it grows by the
            file's size when the answer names it).

    Returns:
        The file's FileInfo message, as the server sent it.

    Raises:
        grpc.aio.AioRpcError: the server refused, or MAX_RETRIES attempts in a row failed
            without progress.
        TrackdError: (DATA_LOSS, CHECKSUM_MISMATCH) the bytes do not match the FileInfo.
    """
    out, temp = await asyncio.to_thread(_open_temp, dest)
    try:
        with out:
            info = await _download_into(stub, who, path, out, offset, length, progress, size_known)
        await asyncio.to_thread(os.replace, temp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return info


def _open_temp(dest: str) -> tuple[IO[bytes], str]:
    """A new temporary file beside `dest` (whose directory is created), and its name."""
    directory, name = os.path.split(os.path.abspath(dest))
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{name[:100]}.", suffix=".part")
    return os.fdopen(fd, "wb"), temp


async def _download_into(
    stub: artifact_service_pb2_grpc.ArtifactServiceAsyncStub,
    who: Owner,
    path: str,
    out: IO[bytes],
    offset: int,
    length: int,
    progress: Progress,
    size_known: bool,
) -> artifact_pb2.FileInfo:
    info: artifact_pb2.FileInfo | None = None
    writer = _WriteBehind(out)
    received = 0
    failures = 0
    try:
        while True:
            before = received
            request = with_owner(
                artifact_service_pb2.DownloadArtifactRequest(
                    path=path,
                    offset=offset + received,
                    length=length - received if length else 0,
                ),
                who,
            )
            call = stub.DownloadArtifact(request)
            try:
                async for answer in call:
                    if answer.HasField("artifact"):
                        if info is None:
                            info = answer.artifact
                            if not size_known:
                                progress.grow(_range_size(info.file_size, offset, length))
                        elif answer.artifact.sha256 != info.sha256:
                            raise _Replaced
                        continue
                    await writer.add(answer.data)
                    received += len(answer.data)
                    progress.at(received)
                break
            except _Replaced:
                call.cancel()
                log.info("%s was replaced on the server during its download; starting again", path)
                failures += 1
                if failures > MAX_RETRIES:
                    raise _protocol_error(f"{path!r} kept changing during its download") from None
                await writer.reset()
                received, info = 0, None
                progress.at(0)
            except grpc.aio.AioRpcError as err:
                failures = 1 if received > before else failures + 1
                if not retryable(err) or failures > MAX_RETRIES:
                    raise
                log.info(
                    "download of %s broke (%s: %s) after %d bytes; resuming",
                    path,
                    err.code().name,
                    err.details(),
                    received,
                )
                await asyncio.sleep(_backoff(failures))
        await writer.drain()
    except BaseException:
        await writer.abandon()
        raise
    if info is None:
        raise _protocol_error(f"the server sent no FileInfo for {path!r}")
    digest = writer.hasher.hexdigest()
    if offset == 0 and length == 0 and (received != info.file_size or digest != info.sha256):
        raise TrackdError(
            grpc.StatusCode.DATA_LOSS,
            f"{path!r}: received {received} bytes with SHA-256 {digest}, but the file has "
            f"{info.file_size} bytes with SHA-256 {info.sha256}; nothing was kept",
            reason="CHECKSUM_MISMATCH",
        )
    return info


class _WriteBehind:
    """Writes and hashes a download's chunks in a worker thread, BATCH_BYTES at a time,
    while the next chunks arrive."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.hasher = hashlib.sha256()
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._writing: asyncio.Future[None] | None = None

    async def add(self, data: bytes) -> None:
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES:
            await self._write_batch()

    async def _write_batch(self) -> None:
        await self._wait()
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._writing = asyncio.ensure_future(
            asyncio.to_thread(_write_blocks, self.out, self.hasher, batch)
        )

    async def _wait(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            await writing

    async def drain(self) -> None:
        """Writes what is left and flushes the file."""
        await self._write_batch()
        await self._wait()
        await asyncio.to_thread(self.out.flush)

    async def reset(self) -> None:
        """Forgets everything received: an empty file and a new hash."""
        await self._wait()
        self._batch, self._batch_bytes = [], 0
        self.hasher = hashlib.sha256()
        await asyncio.to_thread(_truncate, self.out)

    async def abandon(self) -> None:
        """Waits for a write in flight, whatever its outcome (the file is then dropped)."""
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)


def _write_blocks(out: IO[bytes], hasher: _Hash, blocks: list[bytes]) -> None:
    for block in blocks:
        out.write(block)
        hasher.update(block)


def _range_size(size: int, offset: int, length: int) -> int:
    rest = max(0, size - offset)
    return min(rest, length) if length else rest


def _truncate(out: IO[bytes]) -> None:
    out.seek(0)
    out.truncate()


__all__ = [
    "CHUNK_BYTES",
    "MAX_RETRIES",
    "RETRYABLE_CODES",
    "Owner",
    "Progress",
    "ProgressCallback",
    "artifact_path",
    "download",
    "local_target",
    "owner",
    "retryable",
    "upload",
    "with_owner",
]
