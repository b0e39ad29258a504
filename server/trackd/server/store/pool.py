"""The asyncpg pool and the unit of work: one transaction, retried on deadlock."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from trackd.server.errors import Aborted

log = logging.getLogger(__name__)

T = TypeVar("T")

# Conflicts PostgreSQL resolves by failing one transaction; rerunning it is correct.
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
RETRIES = 5
# Attempts a unit of work makes in all when it meets dead connections (see Database._unit).
STALE_RETRIES = 4
# Seconds before the second rerun, doubling for each further one (0.01, 0.02).
STALE_BACKOFF = 0.01

# Failures that leave a connection unusable (server restarted, backend terminated, socket
# reset, protocol state lost). The connection is terminated so that the pool replaces it;
# the caller sees them as UNAVAILABLE.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,
    asyncpg.CannotConnectNowError,
    ConnectionError,
    OSError,
)

# What a unit of work receives: a pooled connection (or a plain one, in `trackd migrate`).
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


class _Connection(asyncpg.Connection):
    """A connection that skips asyncpg's reset query on release (a round trip per unit of
    work): trackd changes no session state (only SET LOCAL, no LISTEN, no cursors kept,
    advisory locks released explicitly). An open transaction is still rolled back."""

    def get_reset_query(self) -> str:
        return ""


# Settings trackd gives its pooled sessions (sent at connect when it reaches PostgreSQL
# itself; through a pooler, applied with SET LOCAL in each read unit, see Database.read).
SESSION_SETTINGS = {
    # Parallel workers take milliseconds to start: worth it for searches over tens of
    # thousands of runs, a loss for small ones (measured: a 1k-run search took 10.8 ms
    # parallel, 2.2 ms serial). A higher setup cost keeps small plans serial and leaves
    # large ones parallel.
    "parallel_setup_cost": "10000",
    # JIT compilation pays off for analytic queries running seconds; trackd's run in
    # milliseconds, and compiling one took longer than the query it served (measured:
    # 0.55 s of JIT on a 0.23 s search over 100k runs whose cost estimate crossed
    # jit_above_cost).
    "jit": "off",
}
# The same, for one transaction: a pooler in transaction mode (pgbouncer) refuses startup
# parameters other than a few it tracks itself, and a plain SET would stay on a server
# connection that other clients share next.
_SET_LOCAL = "; ".join(f"SET LOCAL {k} = {v}" for k, v in SESSION_SETTINGS.items())


def _discard(conn: PoolConnectionProxy[asyncpg.Record]) -> None:
    """Closes a connection found dead so that the pool opens a fresh one in its place.
    asyncpg may already have detached it: a connection that sees its socket close releases
    itself to the pool at once, and its proxy then refuses every call, terminate() too."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass  # already closed and released; the pool reconnects it on its next acquire


# Read-your-writes with a streaming replica (README, "Read replicas"). A position in the
# primary's write-ahead log (an LSN) is an int here and PostgreSQL's "X/Y" text on the wire.
#
# The LSN a call needs its reads to reflect (the caller's x-trackd-lsn), None when it sent
# none; and the highest LSN the call's reads or writes reflect, answered to the caller.
required_lsn: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "required_lsn", default=None
)
observed_lsn: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "observed_lsn", default=None
)
# Set for calls whose lag-tolerant reads must still read the primary: the MLflow REST API,
# whose clients cannot carry an LSN and expect to read what they just wrote.
primary_reads: contextvars.ContextVar[bool] = contextvars.ContextVar("primary_reads", default=False)
_on_replica: contextvars.ContextVar[bool] = contextvars.ContextVar("on_replica", default=False)
# What makes the replica count as down for a while (TimeoutError: it did not answer).
_REPLICA_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, TimeoutError)
# Seconds the replica's replay LSN is reused before it is asked again.
REPLAY_LSN_TTL = 0.005
# Seconds a replica that failed is left alone before it is tried again.
REPLICA_RETRY_AFTER = 1.0


def parse_lsn(text: str) -> int:
    """The int of an LSN in PostgreSQL's "X/Y" form (ValueError if it is not one)."""
    hi, sep, lo = text.strip().partition("/")
    if not sep:
        raise ValueError(f"{text!r} is not an LSN")
    return (int(hi, 16) << 32) | int(lo, 16)


def _as_lsn(value: object) -> int | None:
    """An LSN as asyncpg returns it (an int, its pg_lsn codec), or None (NULL)."""
    if value is None:
        return None
    return value if isinstance(value, int) else parse_lsn(str(value))


def format_lsn(lsn: int) -> str:
    """PostgreSQL's "X/Y" form of an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def observe_lsn(lsn: int | None) -> None:
    """Records that the current call's state reflects `lsn` (answered in its trailers)."""
    held = observed_lsn.get()
    if held is not None and lsn is not None:
        held[0] = max(held[0], lsn)


def reading_replica() -> bool:
    """Whether the unit of work running now reads the replica (read_lagging)."""
    return _on_replica.get()


class ReadOnPrimary(Exception):
    """Raised by a read_lagging unit on the replica when only the primary can answer (the
    replica lacks the row, or the data is still changing); the read is rerun there."""


async def _lsn_and_work(
    conn: Connection, query: str, work: Callable[[Connection], Awaitable[T]]
) -> tuple[int | None, T]:
    # The first statement takes the snapshot; the LSN it returns is read after that, so
    # the snapshot reflects no more than it (an upper bound the caller may ask for next).
    text = await conn.fetchval(query)
    return _as_lsn(text), await work(conn)


async def _unit(
    pool: asyncpg.Pool,
    work: Callable[[Connection], Awaitable[T]],
    *,
    idempotent: bool,
    atomic: bool = True,
    **transaction: Any,
) -> T:
    """Runs `work` in a transaction on a pooled connection (without one when not
    `atomic`: each statement its own implicit transaction). A connection found dead is
    discarded and the unit rerun, STALE_RETRIES attempts in all, as long as nothing of
    `work` can have run (or `work` is idempotent); after that, its error is raised.

    A rerun takes another pooled connection: the pool reopens one asyncpg has seen
    closed (a backend that is terminated tells its client so, and asyncpg then closes
    and releases the connection by itself), so a rerun meets a dead connection only if
    the database killed it again meanwhile, or before asyncpg could notice."""
    for attempt in range(STALE_RETRIES):
        if attempt > 1:
            # Give a database that is restarting a moment; the first rerun is at once.
            await asyncio.sleep(STALE_BACKOFF * 2 ** (attempt - 2))
        try:
            # Opening a connection in place of a dead one can fail too; nothing has run.
            conn = await pool.acquire()
        except CONNECTION_ERRORS:
            if attempt == STALE_RETRIES - 1:
                raise
            log.info("could not open a connection; retrying")
            continue
        started = False
        try:
            if not atomic:
                started = True
                return await work(conn)
            async with conn.transaction(**transaction):
                started = True
                return await work(conn)
        except CONNECTION_ERRORS:
            _discard(conn)
            if (started and not idempotent) or attempt == STALE_RETRIES - 1:
                raise
            log.info("discarded a dead connection; retrying on another")
        finally:
            await pool.release(conn)
    raise AssertionError("unreachable")


async def _create_pool(dsn: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    """Opens a pool to `dsn`, PostgreSQL itself (the read replica; not through a pooler)."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min(min_size, max_size),
        max_size=max_size,
        # Statements are few and fixed; cache them all.
        statement_cache_size=1024,
        connection_class=_Connection,
        server_settings={"application_name": "trackd", **SESSION_SETTINGS},
    )


class Replica:
    """A pool to a streaming replica and what is known of its replay position."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._replay: int | None = None
        self._replay_at = -1.0
        self._asking: asyncio.Future[int | None] | None = None
        self.down_until = 0.0
        # Reads served by the replica and reads it passed to the primary (for metrics).
        self.reads = 0
        self.fallbacks = 0

    def failed(self, exc: BaseException) -> None:
        log.warning(
            "the read replica failed (%s); reading the primary for %ss", exc, REPLICA_RETRY_AFTER
        )
        self.down_until = time.monotonic() + REPLICA_RETRY_AFTER
        self._replay = None

    async def replay_lsn(self) -> int | None:
        """The replica's replay LSN, asked at most every REPLAY_LSN_TTL seconds (callers
        arriving meanwhile share one question); None when it is not replaying (promoted)."""
        now = time.monotonic()
        if now - self._replay_at < REPLAY_LSN_TTL:
            return self._replay
        if self._asking is None:
            self._asking = asyncio.ensure_future(self._ask())
        return await asyncio.shield(self._asking)

    async def _ask(self) -> int | None:
        try:
            text = await self.pool.fetchval("SELECT pg_last_wal_replay_lsn()", timeout=2.0)
        finally:
            self._asking = None
        self._replay = _as_lsn(text)
        self._replay_at = time.monotonic()
        return self._replay


class Database:
    """Owns the connection pool; `transact` runs one unit of work in a transaction."""

    def __init__(self, pool: asyncpg.Pool, *, pooled: bool = False) -> None:
        self.pool = pool
        # Whether the pool reaches a pooler in transaction mode (see connect).
        self.pooled = pooled
        # Awaited by close() before the pool closes (the audit trail's last rows).
        self.before_close: list[Callable[[], Awaitable[None]]] = []
        # A streaming replica for read_lagging (--read-database-url); None reads the primary.
        self.replica: Replica | None = None
        # write_lsn's question being asked, and the callers waiting for the next one.
        self._lsn_asker: asyncio.Future[None] | None = None
        self._lsn_next: asyncio.Future[int] | None = None

    async def attach_replica(self, dsn: str, *, min_size: int = 2, max_size: int = 10) -> None:
        """Opens a pool to the streaming replica at `dsn` for read_lagging."""
        self.replica = Replica(await _create_pool(dsn, min_size=min_size, max_size=max_size))

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int = 2, max_size: int = 10, pooled: bool = False
    ) -> Database:
        """Opens a pool to `dsn`. `pooled`: `dsn` is a pooler in transaction pooling mode
        (pgbouncer), which hands each transaction (or statement outside one) whichever
        server connection is free: no prepared statement is kept (asyncpg then uses the
        unnamed statement, parsed, bound and run before the Sync that ends its use of the
        server connection), and no session setting is sent at connect."""
        if pooled:
            # pgbouncer (before 1.21) does not track named prepared statements: one made on
            # a server connection is unknown on the next. Unnamed statements only.
            cache: dict[str, Any] = {"statement_cache_size": 0}
            settings = {"application_name": "trackd"}
        else:
            # Statements are few and fixed; cache them all.
            cache = {"statement_cache_size": 1024}
            settings = {"application_name": "trackd", **SESSION_SETTINGS}
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min(min_size, max_size),
            max_size=max_size,
            connection_class=_Connection,
            server_settings=settings,
            **cache,
        )
        return cls(pool, pooled=pooled)

    async def close(self) -> None:
        """Writes what waits to be written (before_close), then closes every connection of
        the pool, waiting for those in use."""
        for hook in self.before_close:
            try:
                await hook()
            except Exception:  # a failed hook must not keep the pool open
                log.exception("a before-close hook failed")
        await self.pool.close()
        if self.replica is not None:
            await self.replica.pool.close()

    async def _unit(
        self,
        work: Callable[[Connection], Awaitable[T]],
        *,
        idempotent: bool,
        atomic: bool = True,
        **transaction: Any,
    ) -> T:
        """Runs `work` on this pool (see the module's _unit)."""
        return await _unit(self.pool, work, idempotent=idempotent, atomic=atomic, **transaction)

    async def transact(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Runs `work` in one transaction and commits; a deadlock or serialization failure
        reruns it (a few times, with a short backoff) and then becomes ABORTED. A connection
        lost while `work` ran is discarded and its error raised (UNAVAILABLE for the
        caller), since the commit may or may not have happened."""
        return await self._retried(work, atomic=True)

    async def statement(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Runs `work`, a single statement, on a pooled connection without BEGIN and COMMIT
        (the statement is its own transaction: one round trip); retried as `transact`."""
        return await self._retried(work, atomic=False)

    async def _retried(self, work: Callable[[Connection], Awaitable[T]], *, atomic: bool) -> T:
        for attempt in range(RETRIES):
            try:
                return await self._unit(work, idempotent=False, atomic=atomic)
            except RETRYABLE as exc:
                log.warning("transaction conflict (attempt %s): %s", attempt + 1, exc)
                await asyncio.sleep(0.005 * 2**attempt)
        raise Aborted(f"the transaction conflicted with others {RETRIES} times; retry the call")

    async def read(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Runs read-only `work` on a pooled connection, in one repeatable-read snapshot;
        reruns it on another connection if its connection was dead."""
        if self.pooled:
            work = functools.partial(_with_settings, work)
        return await self._unit(work, idempotent=True, isolation="repeatable_read", readonly=True)

    async def write_lsn(self) -> int:
        """The primary's WAL position, asked after this call began: every commit done before
        the call is at or before it. Concurrent callers share questions (one at a time: the
        callers arriving while one is asked share the next), so a burst of writes costs a
        few round trips, not one each."""
        if self._lsn_next is None:
            self._lsn_next = asyncio.get_running_loop().create_future()
            # Nobody may be left to retrieve a failure (every caller cancelled).
            self._lsn_next.add_done_callback(lambda f: f.cancelled() or f.exception())
            if self._lsn_asker is None:
                self._lsn_asker = asyncio.ensure_future(self._ask_lsn())
        return await asyncio.shield(self._lsn_next)

    async def _ask_lsn(self) -> None:
        try:
            while self._lsn_next is not None:
                answer, self._lsn_next = self._lsn_next, None
                try:
                    text = await self.statement(
                        lambda conn: conn.fetchval("SELECT pg_current_wal_lsn()")
                    )
                except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                    answer.set_exception(exc)
                else:
                    answer.set_result(_as_lsn(text) or 0)
        finally:
            self._lsn_asker = None

    async def read_lagging(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Runs read-only `work` as `read` does, on the replica when one is configured and
        it has replayed the call's required_lsn (any position if the call sent none), else
        on the primary; a replica that fails passes its reads to the primary for
        REPLICA_RETRY_AFTER seconds. With a replica, the LSN the snapshot reflects is
        recorded (observe_lsn) so that the caller's next read sees no older state."""
        replica = self.replica
        if replica is None or primary_reads.get():
            return await self.read(work)
        need = required_lsn.get()
        if time.monotonic() >= replica.down_until:
            try:
                replay = await replica.replay_lsn()
                if replay is not None and (need is None or replay >= need):
                    token = _on_replica.set(True)
                    try:
                        lsn, result = await _unit(
                            replica.pool,
                            lambda conn: _lsn_and_work(
                                conn, "SELECT pg_last_wal_replay_lsn()", work
                            ),
                            idempotent=True,
                            isolation="repeatable_read",
                            readonly=True,
                        )
                    finally:
                        _on_replica.reset(token)
                    if lsn is not None and (need is None or lsn >= need):
                        replica.reads += 1
                        observe_lsn(lsn)
                        return result
            except ReadOnPrimary:
                pass
            except _REPLICA_ERRORS as exc:
                replica.failed(exc)
        replica.fallbacks += 1
        lsn, result = await self.read(
            lambda conn: _lsn_and_work(conn, "SELECT pg_current_wal_lsn()", work)
        )
        observe_lsn(lsn)
        return result


async def _with_settings(work: Callable[[Connection], Awaitable[T]], conn: Connection) -> T:
    """Runs `work` after SET LOCAL of SESSION_SETTINGS (a read through a pooler, whose
    server connections trackd cannot configure at connect)."""
    await conn.execute(_SET_LOCAL)
    return await work(conn)
