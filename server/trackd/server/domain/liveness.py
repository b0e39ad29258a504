"""Liveness: when a RUNNING run reads as UNRESPONSIVE (derived at read time, never
stored)."""

from __future__ import annotations

from dataclasses import dataclass

from trackd.server.clock import now_ms

DEFAULT_WINDOW_S = 120.0


@dataclass(frozen=True)
class Liveness:
    """The liveness window: a RUNNING run from which the server heard nothing (no
    heartbeat, no metric point) for longer than `window_s` seconds reads as UNRESPONSIVE."""

    window_s: float = DEFAULT_WINDOW_S

    def cutoff(self) -> int:
        """In milliseconds since the Unix epoch, by the server's clock: a RUNNING run last
        seen before this instant reads as UNRESPONSIVE."""
        return now_ms() - round(self.window_s * 1000)
