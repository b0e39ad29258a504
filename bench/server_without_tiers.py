"""trackd's server with the metric tiers switched off (points and summaries only), for
the `envelopes` benchmark's ingest comparison: `python -m bench.server_without_tiers serve`."""

from __future__ import annotations

from typing import Any

from trackd.server import __main__ as cli
from trackd.server.domain import tiers


def _none(*args: Any) -> list[tuple[object, ...]]:
    """No blocks to fold."""
    return []


if __name__ == "__main__":
    tiers.batch_rows = _none  # type: ignore[assignment]
    raise SystemExit(cli.main())
