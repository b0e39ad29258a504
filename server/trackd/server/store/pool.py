"""The asyncpg pool and the unit of work: one transaction, retried on deadlock."""

from __future__ import annotations

import asyncio
import functools
import logging
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


class Database:
    """Owns the connection pool; `transact` runs one unit of work in a transaction."""

    def __init__(self, pool: asyncpg.Pool, *, pooled: bool = False) -> None:
        self.pool = pool
        # Whether the pool reaches a pooler in transaction mode (see connect).
        self.pooled = pooled
        # Awaited by close() before the pool closes (the audit trail's last rows).
        self.before_close: list[Callable[[], Awaitable[None]]] = []

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

    async def _unit(
        self,
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
                conn = await self.pool.acquire()
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
                await self.pool.release(conn)
        raise AssertionError("unreachable")

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


async def _with_settings(work: Callable[[Connection], Awaitable[T]], conn: Connection) -> T:
    """Runs `work` after SET LOCAL of SESSION_SETTINGS (a read through a pooler, whose
    server connections trackd cannot configure at connect)."""
    await conn.execute(_SET_LOCAL)
    return await work(conn)
