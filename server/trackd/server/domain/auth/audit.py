"""The audit trail: every write and every permission change by an authenticated caller,
with its outcome, as one log line (logger "trackd.audit") at once and one audit_log row
written in the background, many rows per statement."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from trackd.server import logs
from trackd.server.clock import now_ms
from trackd.server.store import audit as store
from trackd.server.store.pool import Connection, Database

log = logging.getLogger("trackd.audit")

# Rows wait at most this long (seconds) before they are written.
FLUSH_DELAY = 0.2
# At most this many rows wait; more are written by the next flush (and counted as lost
# beyond twice that, with a warning, if the database stays away).
PENDING_MAX = 50_000
DROP_WARN_EVERY = 10_000


class AuditTrail:
    """Records of one server; `flush()` writes what is pending (also on its own after
    FLUSH_DELAY)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[tuple[int, str, str, str, str, str]] = []
        self._task: asyncio.Task[None] | None = None
        # Rows dropped because the database stayed away (warned of at the first and then
        # every DROP_WARN_EVERY, not once a call).
        self.dropped = 0
        # The last rows are written when the server closes its pool.
        db.before_close.append(self.flush)

    def record(
        self, principal: str, method: str, resource: str, outcome: str, request_id: str
    ) -> None:
        """Logs one audited call now and queues its row."""
        sink = logs.audit_sink
        if sink is not None and log.isEnabledFor(logging.INFO):
            # The hot path: a ready JSON line, without a LogRecord and the formatter.
            sink(principal, method, resource, outcome, request_id)
        else:
            self._log(principal, method, resource, outcome, request_id)
        if len(self._pending) >= 2 * PENDING_MAX:
            if self.dropped % DROP_WARN_EVERY == 0:
                log.warning(
                    "audit rows dropped: the database has not taken them (%d so far)",
                    self.dropped + 1,
                )
            self.dropped += 1
            return
        self._pending.append((now_ms(), principal, method, resource, outcome, request_id))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._later())

    @staticmethod
    def _log(principal: str, method: str, resource: str, outcome: str, request_id: str) -> None:
        log.info(
            "%s %s %s %s",
            principal,
            method,
            resource,
            outcome,
            extra={
                "principal": principal,
                "method": method,
                "resource": resource,
                "outcome": outcome,
                "audit_request_id": request_id,
            },
        )

    async def _later(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        await self.flush()

    async def flush(self) -> None:
        """Writes every pending row (kept pending if the database fails)."""
        while self._pending:
            batch, self._pending = self._pending[:PENDING_MAX], self._pending[PENDING_MAX:]
            try:
                await self.db.transact(functools.partial(_insert, rows=batch))
            except Exception:  # the log line is written already; retry later
                log.warning("audit rows not written yet; retrying", exc_info=True)
                self._pending[:0] = batch
                if not self.db.pool.is_closing():
                    with contextlib.suppress(RuntimeError):
                        self._task = asyncio.get_running_loop().create_task(self._later())
                return


async def _insert(conn: Connection, *, rows: list[tuple[int, str, str, str, str, str]]) -> None:
    await store.insert(conn, rows)
