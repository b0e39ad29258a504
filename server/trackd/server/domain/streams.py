"""StreamMetrics: chunks in, cumulative acks out, each ack only after its commit.

A reader task takes chunks off the request stream, validates them and queues them on the
group-commit writers; a bounded window of chunks per stream is in flight, and when it is
full the reader stops reading, so gRPC's flow control pushes back on the client. The
response side waits for the chunks in order and acknowledges them cumulatively. A chunk
that breaks a rule, names an unknown run or a deleted one is acknowledged as rejected.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from trackd.server.clock import now_ms
from trackd.server.domain import ingest, validation
from trackd.server.domain.auth import policy
from trackd.server.domain.auth.policy import Authorizer
from trackd.server.domain.auth.principal import Level
from trackd.server.domain.validation import Violations
from trackd.server.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TrackdError,
    Unavailable,
    run_not_found,
)
from trackd.server.store import metrics as store
from trackd.v1 import run_service_pb2 as pb

STREAM_ID_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
CHUNK_POINTS_MAX = 100_000
WINDOW_CHUNKS = 16
# Runs whose verdict one stream remembers (then it starts over).
VERDICTS_MAX = 10_000


@dataclass
class _Pending:
    sequence: int
    future: asyncio.Future[ingest.Result] | None
    error: TrackdError | None = None


class MetricStreams:
    """Serves StreamMetrics calls over the writers."""

    def __init__(
        self, writers: ingest.Writers, window: int = WINDOW_CHUNKS, idle_timeout: float = 300.0
    ) -> None:
        self.writers = writers
        self.window = window
        self.idle_timeout = idle_timeout
        self.open = 0
        self.draining = asyncio.Event()

    def drain(self) -> None:
        """Stops taking chunks: every open stream acknowledges what it has taken, once
        committed, and then ends with UNAVAILABLE so that its client reconnects."""
        self.draining.set()

    async def serve(
        self,
        requests: AsyncIterator[pb.StreamMetricsRequest],
        authorizer: Authorizer | None = None,
    ) -> AsyncIterator[pb.StreamMetricsResponse]:
        """Acknowledgements for the chunks of one call; the call ends with
        DEADLINE_EXCEEDED when the client stays silent for idle_timeout seconds. With an
        `authorizer`, each run is checked (CAN_EDIT) once per stream, and a chunk naming a
        run the caller may not write is rejected (NOT_FOUND or PERMISSION_DENIED)."""
        self.open += 1
        try:
            requests = _requests(requests, self.idle_timeout, self.draining)
            async for ack in self._serve(requests, authorizer):
                yield ack
        finally:
            self.open -= 1

    async def _serve(
        self, requests: AsyncIterator[pb.StreamMetricsRequest], authorizer: Authorizer | None
    ) -> AsyncIterator[pb.StreamMetricsResponse]:
        first = await anext(requests, None)
        if first is None:
            return
        stream_id = first.stream_id
        if not STREAM_ID_RE.fullmatch(stream_id):
            raise InvalidArgument.for_field(
                "stream_id", "must be 1 to 64 letters, digits, '_' or '-'"
            )
        stream_key = _stream_key(stream_id)
        committed = await self.writers.db.read(lambda conn: store.stream_mark(conn, stream_key))
        pending: asyncio.Queue[_Pending | None] = asyncio.Queue(self.window)
        state = {"next": committed + 1}
        # The verdict on each run this stream named: None to write, else the rejection.
        verdicts: dict[str, TrackdError | None] | None = (
            None if authorizer is None or policy.subjects_if_limited() is None else {}
        )

        async def submit(req: pb.StreamMetricsRequest) -> None:
            if req.stream_id != stream_id:
                raise InvalidArgument.for_field(
                    "stream_id", f"changed within the stream (was {stream_id!r})"
                )
            seq = req.sequence
            if seq <= 0:
                raise InvalidArgument.for_field(
                    "sequence", f"is {seq}; chunks are numbered from 1 (0 is the handshake)"
                )
            if seq < state["next"]:
                # Committed before (a resend after a reconnect): acknowledge, write nothing.
                await pending.put(_Pending(seq, None))
                return
            if seq > state["next"]:
                raise InvalidArgument.for_field(
                    "sequence", f"is {seq}, but the next chunk of the stream is {state['next']}"
                )
            state["next"] = seq + 1
            try:
                if verdicts is not None and authorizer is not None:
                    await _authorize(authorizer, req, verdicts)
                item = await self._item(req, stream_key)
                error = None
            except TrackdError as err:
                # A rejected chunk still takes its place in the stream: an empty item
                # records its sequence, so that a reconnect resumes after it.
                item = ingest.Item([], 0, stream=(stream_key, seq))
                error = err
            future = await self.writers.enqueue(item, stream_key)
            await pending.put(_Pending(seq, future, error))

        async def read() -> None:
            try:
                if first.sequence != 0:
                    await submit(first)
                async for req in requests:
                    await submit(req)
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        acked = committed
        try:
            if first.sequence == 0:
                yield pb.StreamMetricsResponse(acked_sequence=committed)
            while True:
                p = await pending.get()
                if p is None:
                    break
                batch = [p]
                # Coalesce acknowledgements of chunks already settled.
                while not pending.empty():
                    nxt = pending.get_nowait()
                    if nxt is None:
                        pending.put_nowait(None)
                        break
                    batch.append(nxt)
                rejections = []
                for q in batch:
                    error = q.error
                    if q.future is not None:
                        result = await q.future
                        error = error or result.error
                    if error is not None:
                        rejections.append(
                            pb.ChunkRejection(
                                sequence=q.sequence,
                                code=error.code.name,
                                reason=error.reason,
                                message=error.message,
                            )
                        )
                # Acknowledgements never go backwards, even for a resent old chunk.
                acked = max(acked, batch[-1].sequence)
                yield pb.StreamMetricsResponse(acked_sequence=acked, rejections=rejections)
            await reader  # re-raises a protocol error of the request stream
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _item(self, req: pb.StreamMetricsRequest, stream_id: str) -> ingest.Item:
        """Validates a chunk and resolves its runs; raises InvalidArgument or NotFound."""
        v = Violations()
        total = 0
        now = 0
        for i, col in enumerate(req.series):
            n = len(col.steps)
            total += n
            if not _valid_run_id(col.run_id):
                v.add(f"series[{i}].run_id", f"{col.run_id[:40]!r} is not a run id")
            v.key(f"series[{i}].key", col.key)
            if len(col.values) != n:
                v.add(f"series[{i}].values", f"has {len(col.values)} entries for {n} steps")
            if col.timestamps and len(col.timestamps) != n:
                v.add(
                    f"series[{i}].timestamps",
                    f"has {len(col.timestamps)} entries for {n} steps; give one per step or none",
                )
            elif col.timestamps and min(col.timestamps) < 0:
                v.add(f"series[{i}].timestamps", "must be >= 0 (milliseconds since the epoch)")
        if total > CHUNK_POINTS_MAX:
            v.add("series", f"the chunk has {total} points; the limit is {CHUNK_POINTS_MAX}")
        v.raise_if_any()
        run_pks = await self.writers.resolve_runs([c.run_id for c in req.series])
        series = []
        for col in req.series:
            pk = run_pks.get(col.run_id)
            if pk is None:
                raise run_not_found(col.run_id)
            timestamps = list(col.timestamps)
            if not timestamps or 0 in timestamps:
                now = now or now_ms()
                timestamps = (
                    [t or now for t in timestamps] if timestamps else [now] * len(col.steps)
                )
            series.append(
                ingest.SeriesPoints(
                    pk, col.run_id, col.key, list(col.steps), timestamps, list(col.values)
                )
            )
        return ingest.Item(series, total, stream=(stream_id, req.sequence))


def _stream_key(stream_id: str) -> str:
    """Where a stream's progress is kept: its id, and with auth on the principal's name
    before it, so that one principal's stream ids can neither read nor advance another's."""
    principal = policy.caller()
    return stream_id if principal.anonymous else f"{principal.name}/{stream_id}"


async def _authorize(
    authorizer: Authorizer, req: pb.StreamMetricsRequest, verdicts: dict[str, TrackdError | None]
) -> None:
    """Raises the rejection of the first run of the chunk the caller may not write; each
    run is decided once per stream."""
    for col in req.series:
        run_id = col.run_id
        if run_id not in verdicts:
            if len(verdicts) >= VERDICTS_MAX:
                verdicts.clear()
            try:
                await authorizer.require(policy.RUN, run_id, Level.EDIT)
                verdicts[run_id] = None
            except (NotFound, PermissionDenied) as err:
                verdicts[run_id] = err
        error = verdicts[run_id]
        if error is not None:
            raise error


async def _requests(
    requests: AsyncIterator[pb.StreamMetricsRequest], idle: float, draining: asyncio.Event
) -> AsyncIterator[pb.StreamMetricsRequest]:
    """The requests, until the client closes its side; fails with DeadlineExceeded after
    `idle` seconds of silence, and with Unavailable once the server starts draining (the
    chunks already taken are still committed and acknowledged first)."""
    drain = asyncio.ensure_future(draining.wait())
    try:
        while True:
            nxt = asyncio.ensure_future(anext(requests))
            done, _ = await asyncio.wait(
                {nxt, drain}, timeout=idle, return_when=asyncio.FIRST_COMPLETED
            )
            if nxt in done:
                try:
                    yield nxt.result()
                except StopAsyncIteration:
                    return
                continue
            nxt.cancel()
            await asyncio.gather(nxt, return_exceptions=True)
            if draining.is_set():
                raise Unavailable("the server is shutting down; reconnect to go on")
            raise DeadlineExceeded(f"the stream sent nothing for {idle:g} s; reconnect to go on")
    finally:
        drain.cancel()


def _valid_run_id(value: str) -> bool:
    try:
        validation.run_id(value)
    except InvalidArgument:
        return False
    return True
