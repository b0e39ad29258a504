"""SearchRuns: parse the filter and order, page by keyset, load the page's data in a fixed
number of queries."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from trackd.server.domain import limits, paging, validation
from trackd.server.domain.experiments import VIEW_STAGES
from trackd.server.domain.runs import RunView
from trackd.server.domain.search import parser
from trackd.server.errors import InvalidArgument
from trackd.server.store import datasets as dataset_store
from trackd.server.store import logged_models as model_store
from trackd.server.store import metrics as metric_store
from trackd.server.store import runs as run_store
from trackd.server.store import search as search_store
from trackd.server.store.pool import Connection, Database

FILTER_MAX = 10_000
ORDER_BY_MAX = 10
EXPERIMENT_IDS_MAX = 100


class RunSearch:
    """Run search over a database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def search(
        self,
        experiment_ids: Sequence[str],
        filter_: str,
        order_by: Sequence[str],
        max_results: int,
        page_token: str,
        view_type: int,
    ) -> tuple[list[RunView], str]:
        """One page of matching runs with their data, and the next page's token ('' on the
        last page). Raises InvalidArgument for a bad filter, order, size or token."""
        eids = validation.experiment_ids(experiment_ids, maximum=EXPERIMENT_IDS_MAX)
        if len(filter_) > FILTER_MAX:
            raise InvalidArgument.for_field(
                "filter", f"is {len(filter_)} characters long; the limit is {FILTER_MAX}"
            )
        if len(order_by) > ORDER_BY_MAX:
            raise InvalidArgument.for_field(
                "order_by", f"has {len(order_by)} clauses; the limit is {ORDER_BY_MAX}"
            )
        if view_type not in VIEW_STAGES:
            raise InvalidArgument.for_field("run_view_type", f"{view_type} is not a ViewType")
        node = parser.parse_filter(filter_, parser.RUNS)
        order = parser.parse_order_by(list(order_by), parser.RUNS)
        size = validation.page_size(
            max_results,
            default=limits.SEARCH_MAX_RESULTS_DEFAULT,
            maximum=limits.SEARCH_MAX_RESULTS_MAX,
        )
        stages = VIEW_STAGES[view_type]
        fingerprint = paging.query_fingerprint("runs", eids, filter_, list(order_by), stages)

        async def fetch(
            conn: Connection, after: list[Any] | None, limit: int
        ) -> tuple[list[asyncpg.Record], int]:
            return await search_store.search_runs(conn, eids, stages, node, order, after, limit)

        return await paging.keyset_page(self.db, page_token, fingerprint, size, fetch, load_views)


async def load_views(conn: Connection, rows: Sequence[asyncpg.Record]) -> list[RunView]:
    """Runs with their params, tags, series, dataset inputs (without schema and profile)
    and model inputs and outputs, in six queries whatever the page size."""
    pks = [r["run_pk"] for r in rows]
    loaded: list[dict[int, list[asyncpg.Record]]] = [defaultdict(list) for _ in range(6)]
    if pks:
        loads: tuple[Callable[[Connection, list[int]], Awaitable[list[asyncpg.Record]]], ...] = (
            run_store.load_params,
            run_store.load_tags,
            metric_store.load_series,
            functools.partial(dataset_store.load_inputs, brief=True),
            model_store.load_run_inputs,
            model_store.load_run_outputs,
        )
        for by_run, load in zip(loaded, loads, strict=True):
            for r in await load(conn, pks):
                by_run[r["run_pk"]].append(r)
    params, tags, series, dataset_inputs, model_inputs, model_outputs = loaded
    return [
        RunView(
            r,
            params[r["run_pk"]],
            tags[r["run_pk"]],
            series[r["run_pk"]],
            dataset_inputs[r["run_pk"]],
            model_inputs[r["run_pk"]],
            model_outputs[r["run_pk"]],
        )
        for r in rows
    ]


__all__ = ["RunSearch", "load_views"]
