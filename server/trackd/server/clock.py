"""The server's notion of now, in milliseconds since the Unix epoch."""

import time


def now_ms() -> int:
    """Current wall-clock time in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000
