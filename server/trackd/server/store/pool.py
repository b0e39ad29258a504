"""The asyncpg pool and the unit of work: one transaction, retried on deadlock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from trackd.server.errors import Aborted

log = logging.getLogger(__name__)

T = TypeVar("T")

# Conflicts PostgreSQL resolves by failing one transaction; rerunning it is correct.
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
RETRIES = 5

# What a unit of work receives: a pooled connection (or a plain one, in `trackd migrate`).
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


class Database:
    """Owns the connection pool; `transact` runs one unit of work in a transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 2, max_size: int = 10) -> Database:
        """Opens a pool to `dsn`."""
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min(min_size, max_size),
            max_size=max_size,
            # Statements are few and fixed; cache them all.
            statement_cache_size=1024,
            server_settings={
                "application_name": "trackd",
                # Parallel workers take milliseconds to start: worth it for searches over
                # tens of thousands of runs, a loss for small ones (measured: a 1k-run
                # search took 10.8 ms parallel, 2.2 ms serial). A higher setup cost keeps
                # small plans serial and leaves large ones parallel.
                "parallel_setup_cost": "10000",
            },
        )
        return cls(pool)

    async def close(self) -> None:
        """Closes every connection of the pool, waiting for those in use."""
        await self.pool.close()

    async def transact(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Runs `work` in one transaction and commits; a deadlock or serialization failure
        reruns it (a few times, with a short backoff) and then becomes ABORTED."""
        for attempt in range(RETRIES):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    return await work(conn)
            except RETRYABLE as exc:
                log.warning("transaction conflict (attempt %s): %s", attempt + 1, exc)
                await asyncio.sleep(0.005 * 2**attempt)
        raise Aborted(f"the transaction conflicted with others {RETRIES} times; retry the call")

    async def read(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Runs read-only `work` on a pooled connection, in one repeatable-read snapshot."""
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await work(conn)
