"""SearchRuns: parse the filter and order, page by keyset, load the page's data in a fixed
number of queries."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import asyncpg

from trackd.server.clock import now_ms
from trackd.server.domain import limits, paging, validation
from trackd.server.domain.auth import policy
from trackd.server.domain.experiments import VIEW_STAGES
from trackd.server.domain.liveness import Liveness
from trackd.server.domain.runs import RunView, load_views
from trackd.server.domain.search import parser
from trackd.server.errors import InvalidArgument, run_not_found
from trackd.server.store import runs as run_store
from trackd.server.store import search as search_store
from trackd.server.store.pool import Connection, Database

FILTER_MAX = limits.SEARCH_FILTER_MAX
ORDER_BY_MAX = 10
EXPERIMENT_IDS_MAX = 100


class RunSearch:
    """Run search over a database."""

    def __init__(
        self, db: Database, liveness: Liveness | None = None, *, walk_min_runs: int = 0
    ) -> None:
        self.db = db
        self.liveness = liveness or Liveness()
        # Searches ordered by a metric walk its index only over at least this many runs
        # (store.search.search_runs; Config.search_walk_min_runs).
        self.walk_min_runs = walk_min_runs

    async def search(
        self,
        experiment_ids: Sequence[str],
        filter_: str,
        order_by: Sequence[str],
        max_results: int,
        page_token: str,
        view_type: int,
        root_runs_only: bool = False,
    ) -> tuple[list[RunView], str]:
        """One page of matching runs with their data, and the next page's token ('' on the
        last page); with `root_runs_only`, root runs that match or have a matching
        descendant. Raises InvalidArgument for a bad filter, order, size or token."""
        eids = validation.experiment_ids(experiment_ids, maximum=EXPERIMENT_IDS_MAX)
        if len(filter_) > FILTER_MAX:
            raise InvalidArgument.for_field(
                "filter", f"is {len(filter_)} characters long; the limit is {FILTER_MAX}"
            )
        if len(order_by) > ORDER_BY_MAX:
            raise InvalidArgument.for_field(
                "order_by", f"has {len(order_by)} clauses; the limit is {ORDER_BY_MAX}"
            )
        stages, size = _page_of(view_type, max_results)
        node = parser.parse_filter(filter_, parser.RUNS)
        order = parser.parse_order_by(list(order_by), parser.RUNS)
        fingerprint = paging.query_fingerprint(
            "runs", eids, filter_, list(order_by), stages, root_runs_only
        )

        async def fetch(
            conn: Connection, after: list[Any] | None, limit: int
        ) -> tuple[list[asyncpg.Record], int]:
            # Only the experiments the caller may see, in this same snapshot: the others
            # match nothing, as missing ones do, and pages stay full.
            visible = await policy.visible_among(conn, eids)
            return await search_store.search_runs(
                conn,
                visible,
                stages,
                node,
                order,
                after,
                limit,
                self.liveness.cutoff(),
                now_ms(),
                roots_only=root_runs_only,
                walk_min_runs=self.walk_min_runs,
            )

        # A page can hold 50,000 runs: their datasets come without schema and profile.
        load = functools.partial(load_views, brief=True)
        return await paging.keyset_page(
            self.db, page_token, fingerprint, size, fetch, load, lagging=True
        )

    async def children(
        self, run_id: str, max_results: int, page_token: str, view_type: int
    ) -> tuple[list[RunView], str]:
        """One page of the child runs of a run (of any lifecycle stage), newest first, with
        their data, and the next page's token ('' on the last page). Raises
        InvalidArgument for a bad id, size, view type or token, NotFound for an unknown
        run."""
        validation.run_id(run_id)
        stages, size = _page_of(view_type, max_results)
        fingerprint = paging.query_fingerprint("children", run_id, stages)

        async def fetch(
            conn: Connection, after: list[Any] | None, limit: int
        ) -> tuple[list[asyncpg.Record], int]:
            parent = await run_store.ref(conn, run_id)
            if parent is None:
                raise run_not_found(run_id)
            return await search_store.list_children(
                conn,
                parent["run_pk"],
                stages,
                after,
                limit,
                self.liveness.cutoff(),
                now_ms(),
            )

        load = functools.partial(load_views, brief=True)
        return await paging.keyset_page(
            self.db, page_token, fingerprint, size, fetch, load, lagging=True
        )


def _page_of(view_type: int, max_results: int) -> tuple[Sequence[int], int]:
    """The lifecycle stages of a run_view_type and the page size of max_results;
    InvalidArgument for either out of range."""
    if view_type not in VIEW_STAGES:
        raise InvalidArgument.for_field("run_view_type", f"{view_type} is not a ViewType")
    size = validation.page_size(
        max_results,
        default=limits.SEARCH_MAX_RESULTS_DEFAULT,
        maximum=limits.SEARCH_MAX_RESULTS_MAX,
    )
    return VIEW_STAGES[view_type], size


__all__ = ["RunSearch"]
