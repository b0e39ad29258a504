"""Compiling parsed filters and order_by keys to SQL, and the keyset-paged search queries.

Everything a user wrote reaches PostgreSQL as a bind parameter: values, and keys too. The
SQL text is assembled only from the fixed fragments below, chosen by the parsed structure.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from trackd.server.domain.search.ast import And, Compare, Ident, Node, Not, Or, OrderKey
from trackd.server.store import experiments as experiment_store
from trackd.server.store import logged_models as logged_model_store
from trackd.server.store import permissions
from trackd.server.store import runs as run_store
from trackd.server.store.pool import Connection

# SQL for each metric summary over a metric_series row `s` (see convert.summary_fields).
_N_FINITE = "(s.count - s.nan_count - s.pos_inf_count - s.neg_inf_count)"
SUMMARY_SQL = {
    "latest": "s.latest_value",
    "min": "s.min_value",
    "max": "s.max_value",
    "mean": (
        "(CASE WHEN s.pos_inf_count > 0 AND s.neg_inf_count > 0 THEN 'NaN'::float8"
        " WHEN s.pos_inf_count > 0 THEN 'Infinity'::float8"
        " WHEN s.neg_inf_count > 0 THEN '-Infinity'::float8"
        f" WHEN {_N_FINITE} = 0 THEN 'NaN'::float8 ELSE s.finite_mean END)"
    ),
    "stddev": (
        "(CASE WHEN s.pos_inf_count > 0 OR s.neg_inf_count > 0"
        f" OR {_N_FINITE} = 0 THEN 'NaN'::float8"
        f" ELSE sqrt(greatest(s.finite_m2, 0) / {_N_FINITE}) END)"
    ),
    "count": "s.count::float8",
    "nan_count": "s.nan_count::float8",
    "first_step": "s.first_step::float8",
    "last_step": "s.last_step::float8",
    "latest_step": "s.latest_step::float8",
    "latest_timestamp": "s.latest_ts::float8",
}

_NUMERIC_OP = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
# A run's status as read: UNRESPONSIVE for a RUNNING run silent past the liveness window.
# search_runs binds the liveness cutoff as $3, so that filters and order_by see the status
# GetRun reports.
_RUN_CUTOFF = "$3::bigint"
# And the server's now as $4, which a running run's duration is measured to.
_RUN_NOW = "$4::bigint"
_STATUS_SQL = (
    "(ARRAY['RUNNING','SCHEDULED','FINISHED','FAILED','KILLED','UNRESPONSIVE'])"
    f"[{run_store.status_sql(_RUN_CUTOFF)}]"
)
_MODEL_STATUS_SQL = "(ARRAY['PENDING','READY','UPLOAD_FAILED'])[m.status]"
_CONTEXT_TAG = "mlflow.data.context"

# The search indexes of params and tags hold a value's first VALUE_PREFIX characters in byte
# order (migration 0005: `(key, left(value, 500) text_pattern_ops)`), since a whole value
# may be too long for a btree entry. A comparison on a value comes with the same comparison
# on this expression, which the index serves, and the exact one decides.
VALUE_PREFIX = 500
_PREFIX_SQL = f"left({{a}}.value, {VALUE_PREFIX})"
# Sublinks (EXISTS, NOT EXISTS) the planner may turn into joins, counted in the filter's
# top-level conjunction; the rest are fenced with OFFSET 0 and stay per-row subplans. The
# planner's join search grows much faster than the number of joins (measured: 8 EXISTS in an
# AND plan in 0.05 s, 50 in 0.3 s, 200 in 15 s), and a 10,000-character filter holds 700.
PULL_UP_MAX = 8


@dataclass(frozen=True)
class Column:
    """A searchable attribute: its SQL expression, PostgreSQL type and whether it may be
    NULL (a NULL matches no comparison and sorts last)."""

    sql: str
    pg_type: str
    nullable: bool = False
    # For an attribute read from a tag of the target as `coalesce(value, '')` (a run's
    # description): the tag's key, so that comparisons look the tag up through its index
    # instead of computing the attribute for every row.
    tag: str | None = None


@dataclass(frozen=True)
class MetricSource:
    """Where a target's metrics live: `table` holds rows of `latest_step`, `latest_ts` and
    `latest_value` by (`owner`, key), with the run series' summaries, or, `per_dataset`, by
    (`owner`, key, dataset_name, dataset_digest). `present` is a condition (with `{a}` for
    the row alias) a row must meet to count."""

    table: str
    owner: str
    present: str
    per_dataset: bool


@dataclass(frozen=True)
class Target:
    """What is searched: the row alias and key, its attributes, the tables holding its
    params and tags (keyed by `key_column`) and its metrics; whether it has dataset inputs."""

    table: str
    alias: str
    pk: str
    key_column: str
    attributes: dict[str, Column]
    tags_table: str
    params_table: str | None
    metrics: MetricSource | None
    tiebreak: tuple[tuple[Column, bool], ...]
    default_order: tuple[tuple[Column, bool], ...]
    datasets: bool = False
    # Whether the params table has the type's exact number (runs' params, migration 0011),
    # which numeric comparisons and ordering read.
    typed_params: bool = False
    # Whether the params, tags and metrics tables carry the row's experiment_id, which their
    # search indexes lead with (runs', migration 0013).
    experiment_scoped: bool = False


RUNS = Target(
    table="runs",
    alias="r",
    pk="r.run_pk",
    key_column="run_pk",
    attributes={
        "run_id": Column("r.run_id", "uuid"),
        "run_name": Column("r.run_name", "text"),
        "status": Column(_STATUS_SQL, "text"),
        "user_id": Column("r.user_id", "text"),
        "artifact_uri": Column("r.artifact_uri", "text"),
        "start_time": Column("r.start_time", "bigint"),
        "end_time": Column("r.end_time", "bigint", nullable=True),
        "last_seen_time": Column(run_store.LAST_SEEN, "bigint"),
        "description": Column(run_store.DESCRIPTION, "text", tag=run_store.DESCRIPTION_TAG),
        "external_url": Column(run_store.EXTERNAL_URL, "text"),
        "source_type": Column(run_store.SOURCE_TYPE, "text"),
        "source_id": Column(run_store.SOURCE_ID, "text"),
        "duration": Column(run_store.duration_sql(_RUN_NOW), "float8", nullable=True),
        "parent_run_id": Column(run_store.PARENT_RUN_ID, "uuid", nullable=True),
        "deleted_time": Column("r.deleted_time", "bigint", nullable=True),
        "depth": Column(run_store.DEPTH, "bigint"),
    },
    tags_table="run_tags",
    params_table="params",
    metrics=MetricSource("metric_series", "run_pk", "{a}.count > 0", per_dataset=False),
    tiebreak=((Column("r.start_time", "bigint"), True), (Column("r.run_id", "uuid"), False)),
    default_order=(),
    datasets=True,
    typed_params=True,
    experiment_scoped=True,
)

EXPERIMENTS = Target(
    table="experiments",
    alias="e",
    pk="e.experiment_id",
    key_column="experiment_id",
    attributes={
        "experiment_id": Column("e.experiment_id", "bigint"),
        "name": Column("e.name", "text"),
        "creation_time": Column("e.creation_time", "bigint"),
        "last_update_time": Column("e.last_update_time", "bigint"),
    },
    tags_table="experiment_tags",
    params_table=None,
    metrics=None,
    tiebreak=((Column("e.experiment_id", "bigint"), False),),
    default_order=((Column("e.creation_time", "bigint"), True),),
)

LOGGED_MODELS = Target(
    table="logged_models",
    alias="m",
    pk="m.model_pk",
    key_column="model_pk",
    attributes={
        "name": Column("m.name", "text"),
        "model_id": Column("m.model_id", "text"),
        "model_type": Column("m.model_type", "text"),
        "status": Column(_MODEL_STATUS_SQL, "text"),
        "source_run_id": Column("m.source_run_id", "uuid", nullable=True),
        "creation_timestamp": Column("m.creation_timestamp", "bigint"),
        "last_updated_timestamp": Column("m.last_updated_timestamp", "bigint"),
    },
    tags_table="logged_model_tags",
    params_table="logged_model_params",
    metrics=MetricSource("logged_model_metrics", "model_pk", "", per_dataset=True),
    # As in MLflow: newest first, then by id (the default order is this tiebreak alone).
    tiebreak=(
        (Column("m.creation_timestamp", "bigint"), True),
        (Column("m.model_id", "text"), False),
    ),
    default_order=(),
)


class Binds:
    """Collects bind parameters; `add` returns the placeholder for a value."""

    def __init__(self, initial: Sequence[Any] = ()) -> None:
        self.values: list[Any] = list(initial)

    def add(self, value: Any, pg_type: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{pg_type}"


class _MetricScope:
    """The conditions (with `{a}` for the row alias) a metric row must meet to count: the
    target's own and, for per-dataset metrics, membership in `datasets` ((name, digest)
    pairs, an empty digest meaning any digest of the name). The datasets are bound on first
    use only: a placeholder no fragment mentions would leave PostgreSQL unable to type it."""

    def __init__(self, target: Target, datasets: Sequence[tuple[str, str]], binds: Binds):
        self.t = target
        self.datasets = datasets
        self.b = binds
        self._where: str | None = None

    @property
    def restricted(self) -> bool:
        """Whether metrics are restricted to some datasets."""
        return bool(self.datasets) and self.t.metrics is not None and self.t.metrics.per_dataset

    def where(self) -> str:
        if self._where is None:
            src = self.t.metrics
            assert src is not None
            where = f" AND {src.present}" if src.present else ""
            if self.restricted:
                names = self.b.add([n for n, _ in self.datasets], "text[]")
                digests = self.b.add([d for _, d in self.datasets], "text[]")
                where += (
                    f" AND EXISTS (SELECT 1 FROM unnest({names}, {digests}) AS f(n, d)"  # noqa: S608
                    " WHERE {a}.dataset_name = f.n AND (f.d = '' OR {a}.dataset_digest = f.d))"
                )
            self._where = where
        return self._where

    def any_metric(self) -> str:
        """The target has a metric row that counts (on one of the datasets)."""
        src = self.t.metrics
        assert src is not None
        return (
            f"EXISTS (SELECT 1 FROM {src.table} s"  # noqa: S608 - fixed names, placeholders
            f" WHERE s.{src.owner} = {self.t.pk}" + self.where().replace("{a}", "s") + ")"
        )


def _has_metric_comparison(node: Node) -> bool:
    """Whether the filter compares a metric anywhere (walked without recursion)."""
    stack: list[Node] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, And | Or):
            stack.extend(n.parts)
        elif isinstance(n, Not):
            stack.append(n.part)
        elif n.ident.entity == "metric":
            return True
    return False


class _Compiler:
    def __init__(
        self,
        target: Target,
        binds: Binds,
        metrics: _MetricScope | None,
        experiments: str = "",
    ) -> None:
        self.t = target
        self.b = binds
        self.metrics = metrics
        # The searched experiments' ids (an SQL array) when the target's params, tags and
        # metrics carry experiment_id: every lookup names them too, so that a comparison can
        # find its rows through the (experiment_id, key, value) indexes, within the
        # searched experiments only, instead of over the whole database.
        self.in_experiments = (
            f" AND {{a}}.experiment_id = ANY({experiments})"
            if experiments and target.experiment_scoped
            else ""
        )
        # Whether the comparison being compiled sits in the top-level conjunction, where
        # PostgreSQL turns an EXISTS into a semi-join (a NOT EXISTS into an anti-join).
        self.top = False
        self.pulled_up = 0

    def node(self, n: Node, top: bool = True) -> str:
        """SQL for a filter tree. It recurses once per level, and the parser bounds the
        depth (MAX_NESTING; AND and OR chains are flat), so it stays far from Python's
        recursion limit."""
        if isinstance(n, And):
            return "(" + " AND ".join(self.node(p, top) for p in n.parts) + ")"
        if isinstance(n, Or):
            return "(" + " OR ".join(self.node(p, False) for p in n.parts) + ")"
        if isinstance(n, Not):
            return f"(NOT {self.node(n.part, top and isinstance(n.part, Compare))})"
        self.top = top
        return self.compare(n)

    def exists(self, subquery: str, negated: bool = False) -> str:
        """`EXISTS (subquery)`; fenced (OFFSET 0, which keeps PostgreSQL from turning it
        into a join) past the first PULL_UP_MAX in the top-level conjunction."""
        fence = ""
        if self.top:
            self.pulled_up += 1
            if self.pulled_up > PULL_UP_MAX:
                fence = " OFFSET 0"
        return f"{'NOT ' if negated else ''}EXISTS ({subquery}{fence})"

    def compare(self, c: Compare) -> str:
        e = c.ident.entity
        if e == "metric":
            return self.metric(c)
        if e in ("param", "tag"):
            return self.keyed_string(c)
        if e == "attribute":
            return self.attribute(c)
        return self.dataset(c)

    def metric(self, c: Compare) -> str:
        src = self.t.metrics
        assert src is not None and self.metrics is not None
        key = self.b.add(c.ident.key, "text")
        exists = (
            f"SELECT 1 FROM {src.table} s WHERE s.{src.owner} = {self.t.pk}"  # noqa: S608
            f" AND s.key = {key}" + (self.metrics.where() + self.in_experiments).replace("{a}", "s")
        )
        if c.op == "IS_NULL":
            return self.exists(exists, negated=True)
        if c.op == "IS_NOT_NULL":
            return self.exists(exists)
        expr = SUMMARY_SQL[c.ident.aggregate or "latest"]
        return self.exists(f"{exists} AND {self.numeric(expr, c.op, c.value, 'float8')}")

    def numeric(self, expr: str, op: str, value: Any, pg_type: str) -> str:
        v = self.b.add(value, pg_type)
        cond = f"{expr} {_NUMERIC_OP[op]} {v}"
        if op in (">", ">=", "=") and pg_type in ("float8", "numeric"):
            # PostgreSQL orders NaN above every number and equal to itself; a comparison
            # with NaN is false.
            cond += f" AND {expr} <> 'NaN'::{pg_type}"
        return cond

    def string(self, expr: str, op: str, value: Any) -> str:
        if op == "IN":
            return f"{expr} = ANY({self.b.add(list(value), 'text[]')})"
        if op == "NOT_IN":
            return f"{expr} <> ALL({self.b.add(list(value), 'text[]')})"
        sql_op = {"=": "=", "!=": "<>", "LIKE": "LIKE", "ILIKE": "ILIKE"}[op]
        return f"{expr} {sql_op} {self.b.add(value, 'text')}"

    def keyed(self, table: str, key: str) -> str:
        """The subquery of the rows `p` of a params or tags table of the target's row under
        `key` (bound here), for EXISTS."""
        return (
            f"SELECT 1 FROM {table} p"  # noqa: S608 - fixed names; the key is a placeholder
            f" WHERE p.{self.t.key_column} = {self.t.pk} AND p.key = {self.b.add(key, 'text')}"
            + self.in_experiments.replace("{a}", "p")
        )

    def keyed_string(self, c: Compare) -> str:
        table = self.t.params_table if c.ident.entity == "param" else self.t.tags_table
        assert table is not None
        exists = self.keyed(table, c.ident.key)
        if c.op == "IS_NULL":
            return self.exists(exists, negated=True)
        if c.op == "IS_NOT_NULL":
            return self.exists(exists)
        if isinstance(c.value, int | float):
            assert self.t.typed_params  # the parser takes a number for typed params only
            # A number compares with the exact value of INT and DOUBLE params (params.number,
            # NULL for the other types, which so match no numeric comparison).
            return self.exists(
                f"{exists} AND p.number IS NOT NULL AND "
                + self.numeric("p.number", c.op, Decimal(c.value), "numeric")
            )
        return self.exists(f"{exists} AND {self.value(c.op, c.value)}")

    def value(self, op: str, value: Any) -> str:
        """A comparison on `p.value` of a params or tags table, put where it can on the
        indexed prefix `left(p.value, VALUE_PREFIX)` (migration 0005): equality, IN, and
        LIKE with a literal prefix (a range of prefixes in byte order, as the index holds
        them). Where the prefix decides alone (values shorter than VALUE_PREFIX, a pattern
        that is a prefix and `%`), the exact comparison is left out, so that the planner
        neither visits the heap for it nor counts its selectivity twice."""
        prefix = _PREFIX_SQL.format(a="p")
        # Built only when used: a value bound but not mentioned could not be typed.
        exact = functools.partial(self.string, "p.value", op, value)
        if op in ("=", "IN"):
            values = [value] if op == "=" else list(value)
            # A value shorter than the prefix equals only itself there; longer ones need
            # the whole value too.
            heads = sorted({v[:VALUE_PREFIX] for v in values})
            cond = (
                f"{prefix} = {self.b.add(heads[0], 'text')}"
                if op == "="
                else f"{prefix} = ANY({self.b.add(heads, 'text[]')})"
            )
            if all(len(v) < VALUE_PREFIX for v in values):
                return cond
            return f"{cond} AND {exact()}"
        if op == "LIKE":
            literal = like_prefix(value)
            low = literal[:VALUE_PREFIX]
            if not low:
                return exact()
            cond = f"{prefix} ~>=~ {self.b.add(low, 'text')}"
            high = successor(low)
            if high is not None:
                cond += f" AND {prefix} ~<~ {self.b.add(high, 'text')}"
            if len(literal) <= VALUE_PREFIX and value == like_escape(literal) + "%":
                return cond  # `prefix%`: the range is the whole condition
            return f"{cond} AND {exact()}"
        return exact()

    def attribute(self, c: Compare) -> str:
        col = self.t.attributes[c.ident.key]
        if c.op == "IS_NULL":
            return f"{col.sql} IS NULL"
        if c.op == "IS_NOT_NULL":
            return f"{col.sql} IS NOT NULL"
        if col.tag is not None:
            return self.tag_attribute(col.tag, c.op, c.value)
        if col.pg_type == "uuid":
            cond = self.run_id(col.sql, c.op, c.value)
        elif col.pg_type in ("bigint", "float8"):
            cond = self.numeric(
                col.sql, c.op, c.value, "float8" if isinstance(c.value, float) else "bigint"
            )
        else:
            cond = self.string(col.sql, c.op, c.value)
        # A missing value matches no comparison (`<> ALL` of no ids would hold for NULL).
        return f"({col.sql} IS NOT NULL AND {cond})" if col.nullable else cond

    def tag_attribute(self, tag: str, op: str, value: Any) -> str:
        """A comparison on `coalesce(<the tag's value>, '')`, as a lookup of the tag: a row
        with the tag compares its value, one without it compares ''. So when '' fails the
        comparison, some tag of the key must pass it (EXISTS, which PostgreSQL turns into a
        join on the tags' key and value index); when '' passes, no tag of the key may fail
        it (NOT EXISTS)."""
        exists = self.keyed(self.t.tags_table, tag)
        if _matches_empty(op, value):
            return self.exists(f"{exists} AND NOT ({self.string('p.value', op, value)})", True)
        return self.exists(f"{exists} AND {self.value(op, value)}")

    def dataset(self, c: Compare) -> str:
        """`datasets.name|digest|context op value`: some dataset input of the run matches
        (so a run without datasets matches no comparison)."""
        assert self.t.datasets
        if c.ident.key == "context":
            tag = self.b.add(_CONTEXT_TAG, "text")
            return self.exists(
                "SELECT 1 FROM run_dataset_input_tags t"  # noqa: S608 - placeholders only
                f" WHERE t.run_pk = {self.t.pk} AND t.key = {tag}"
                f" AND {self.string('t.value', c.op, c.value)}"
            )
        column = {"name": "d.name", "digest": "d.digest"}[c.ident.key]
        return self.exists(
            "SELECT 1 FROM run_dataset_inputs i"  # noqa: S608 - placeholders only
            " JOIN datasets d ON d.dataset_pk = i.dataset_pk"
            f" WHERE i.run_pk = {self.t.pk} AND {self.string(column, c.op, c.value)}"
        )

    def run_id(self, expr: str, op: str, value: Any) -> str:
        if op in ("LIKE", "ILIKE"):
            return self.string(f"replace({expr}::text, '-', '')", op, value)
        values = value if isinstance(value, tuple) else (value,)
        ids = [u for u in (_uuid(v) for v in values) if u is not None]
        if op in ("=", "IN"):
            return f"{expr} = ANY({self.b.add(ids, 'uuid[]')})"
        return f"{expr} <> ALL({self.b.add(ids, 'uuid[]')})"


def _matches_empty(op: str, value: Any) -> bool:
    """Whether '' passes the string comparison `op value` (as PostgreSQL compares): a LIKE
    or ILIKE pattern matches '' when it is only `%` wildcards."""
    if op in ("LIKE", "ILIKE"):
        return all(ch == "%" for ch in value)
    if op == "IN":
        return "" in value
    if op == "NOT_IN":
        return "" not in value
    if op == "=":
        return bool(value == "")
    return bool(value != "")  # !=


def like_prefix(pattern: str) -> str:
    """The literal text every match of a LIKE pattern starts with: up to its first
    unescaped `%` or `_` (`\\` escapes the next character, as in PostgreSQL)."""
    out: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            escaped = next(chars, None)
            if escaped is None:
                break  # a trailing escape: PostgreSQL rejects the pattern itself
            out.append(escaped)
        elif ch in "%_":
            break
        else:
            out.append(ch)
    return "".join(out)


def like_escape(text: str) -> str:
    """`text` as a LIKE pattern matching itself only."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def successor(prefix: str) -> str | None:
    """The least string greater than every string that starts with `prefix`, in code point
    (UTF-8 byte) order; None when there is none (every character is the greatest)."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop()) + 1
        if last == 0xD800:
            last = 0xE000  # surrogates are no characters in PostgreSQL text
        if last <= 0x10FFFF:
            return "".join(chars) + chr(last)
    return None


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(hex=text) if len(text) == 32 and text == text.lower() else None
    except ValueError:
        return None


@dataclass
class _SortKey:
    sql: str
    pg_type: str
    descending: bool
    nullable: bool


def _order_keys(
    target: Target,
    keys: Sequence[OrderKey],
    binds: Binds,
    metrics: _MetricScope | None,
    first_source: str = "",
) -> tuple[list[_SortKey], list[str]]:
    """Sort expressions (with the joins they need) for order_by keys plus the tiebreak.
    `first_source`: a subquery of the rows of the first key's metric to join (inner) instead
    of the target's metrics table (see _walk_source)."""
    sort: list[_SortKey] = []
    joins: list[str] = []
    for i, k in enumerate(keys):
        ident: Ident = k.ident
        alias = f"o{i}"
        if i == 0 and first_source:
            joins.append(f"JOIN ({first_source}) {alias} ON {alias}.run_pk = {target.pk}")
            expr = SUMMARY_SQL["latest"].replace("s.", f"{alias}.")
            sort.append(_SortKey(f"({expr} = 'NaN'::float8)::int", "int", False, True))
            sort.append(_SortKey(expr, "float8", k.descending, True))
        elif ident.entity == "metric":
            src = target.metrics
            assert src is not None and metrics is not None
            key = binds.add(ident.key, "text")
            where = metrics.where().replace("{a}", alias)
            if src.per_dataset:
                # Several rows (one per dataset) may match: the latest point among them.
                joins.append(
                    f"LEFT JOIN LATERAL (SELECT {alias}.latest_value FROM {src.table} {alias}"  # noqa: S608
                    f" WHERE {alias}.{src.owner} = {target.pk} AND {alias}.key = {key}{where}"
                    f" ORDER BY {alias}.latest_step DESC, {alias}.latest_ts DESC,"
                    f" {alias}.latest_value DESC LIMIT 1) {alias} ON TRUE"
                )
            else:
                joins.append(
                    f"LEFT JOIN {src.table} {alias} ON {alias}.{src.owner} = {target.pk}"
                    f" AND {alias}.key = {key}{where}"
                )
            expr = SUMMARY_SQL[ident.aggregate or "latest"].replace("s.", f"{alias}.")
            # As in MLflow, NaN comes after every number and before missing values in both
            # directions (PostgreSQL alone would put it first in DESC): 0 number, 1 NaN.
            sort.append(_SortKey(f"({expr} = 'NaN'::float8)::int", "int", False, True))
            sort.append(_SortKey(expr, "float8", k.descending, True))
        elif ident.entity in ("param", "tag"):
            table = target.params_table if ident.entity == "param" else target.tags_table
            key = binds.add(ident.key, "text")
            joins.append(
                f"LEFT JOIN {table} {alias} ON {alias}.{target.key_column} = {target.pk}"
                f" AND {alias}.key = {key}"
            )
            if ident.entity == "param" and target.typed_params:
                # Run params: INT and DOUBLE ones first, by value (NaN after the numbers),
                # then the others by their string form, in either direction.
                flag = f"({alias}.number = 'NaN'::numeric)::int"
                sort.append(_SortKey(flag, "int", False, True))
                sort.append(_SortKey(f"{alias}.number::float8", "float8", k.descending, True))
            sort.append(_SortKey(f"{alias}.value", "text", k.descending, True))
        else:
            col = target.attributes[ident.key]
            sort.append(_SortKey(col.sql, col.pg_type, k.descending, col.nullable))
    if not keys:
        sort.extend(_SortKey(c.sql, c.pg_type, d, False) for c, d in target.default_order)
    sort.extend(_SortKey(c.sql, c.pg_type, d, False) for c, d in target.tiebreak)
    return sort, joins


_INT_RANGE = {"int": 2**31, "bigint": 2**63}


def _check_position(sort: list[_SortKey], values: Sequence[Any]) -> None:
    """ValueError unless `values` fit the sort: one per key, each None or of the key's type
    (a page token is not signed, so its position is checked before it reaches the query)."""
    if len(values) != len(sort):
        raise ValueError("page position does not fit the sort")
    for k, v in zip(sort, values, strict=True):
        if v is None:
            continue
        if k.pg_type in _INT_RANGE:
            bound = _INT_RANGE[k.pg_type]
            ok = isinstance(v, int) and not isinstance(v, bool) and -bound <= v < bound
        else:
            ok = isinstance(v, {"text": str, "float8": float, "uuid": uuid.UUID}[k.pg_type])
        if not ok:
            raise ValueError("page position does not fit the sort")


def _after(sort: list[_SortKey], values: Sequence[Any], binds: Binds, i: int = 0) -> str:
    """The keyset condition "strictly after `values`" for the sort, nulls last."""
    if i == len(sort):
        return "FALSE"
    k = sort[i]
    rest = _after(sort, values, binds, i + 1)
    v = values[i]
    if v is None:
        return f"({k.sql} IS NULL AND {rest})"
    p = binds.add(v, k.pg_type)
    beyond = ">" if not k.descending else "<"
    nulls = f" OR {k.sql} IS NULL" if k.nullable else ""
    return f"({k.sql} {beyond} {p}{nulls} OR ({k.sql} = {p} AND {rest}))"


def walkable(target: Target, order: Sequence[OrderKey], roots: str = "") -> bool:
    """Whether a search can walk the first order key's index (see build_query's `walk`):
    the target's metrics carry experiment_id and the first key is a metric's latest value."""
    return (
        target.experiment_scoped
        and not roots
        and bool(order)
        and order[0].ident.entity == "metric"
        and order[0].ident.aggregate in (None, "latest")
    )


def _walk_source(
    target: Target,
    key: str,
    experiments: str,
    n_experiments: int,
    descending: bool,
    after: Sequence[Any] | None,
    binds: Binds,
) -> str:
    """The series of metric `key` with a number as latest value (neither NaN nor missing),
    of each of the `n_experiments` experiments of the SQL array `experiments` in turn, as
    one UNION ALL of index range scans of (experiment_id, key, latest_value): PostgreSQL
    merges them in value order (a Merge Append) and reads only as far as the page needs.
    After a page position on a number, each scan starts at that number."""
    src = target.metrics
    assert src is not None and not src.per_dataset
    k = binds.add(key, "text")
    cond = f" AND {src.present.replace('{a}', 'm')}" if src.present else ""
    cond += " AND m.latest_value < 'NaN'::float8"
    # (The position is checked with the whole sort key later; a wrong one fails there.)
    if after is not None and len(after) > 1 and isinstance(after[1], float):
        cond += f" AND m.latest_value {'<=' if descending else '>='} "
        cond += binds.add(after[1], "float8")
    # Each scan in the order of the merge (NULLS FIRST in descending order, as the index
    # reads backwards; no value is NULL here): without it PostgreSQL plans each part for
    # itself, unordered, and can only sort them all.
    direction = "DESC NULLS FIRST" if descending else "ASC NULLS LAST"
    parts = [
        f"(SELECT m.run_pk, m.latest_value FROM {src.table} m"  # noqa: S608 - placeholders only
        f" WHERE m.experiment_id = ({experiments})[{i}] AND m.key = {k}{cond}"
        f" ORDER BY m.latest_value {direction})"
        for i in range(1, n_experiments + 1)
    ]
    return " UNION ALL ".join(parts)


def build_query(
    target: Target,
    scope_sql: str,
    scope_args: Sequence[Any],
    node: Node | None,
    order: Sequence[OrderKey],
    after: Sequence[Any] | None,
    limit: int,
    columns: str,
    datasets: Sequence[tuple[str, str]] = (),
    roots: str = "",
    experiments: str = "",
    walk: int = 0,
    rest: bool = False,
) -> tuple[str, list[Any], int]:
    """The page query and its arguments, and how many sort-key columns (named sk0...) it
    returns after `columns`. `datasets` ((name, digest) pairs, an empty digest meaning any)
    restricts per-dataset metrics, in comparisons and in ordering, to those datasets, and,
    as in MLflow, when the filter compares no metric, keeps only the rows with a metric on
    one of them.

    `roots` (runs only) is the condition of a root row. Then the filter selects, in a
    first step, the matching rows and their ancestors (from each row's `path`); a root is
    kept when it matches or is such an ancestor, and the column `descendant_match` says
    whether it is an ancestor of a match. Without `roots` that column is false.

    `experiments`: the SQL array of the searched experiments' ids, for targets whose
    params, tags and metrics carry experiment_id.

    A search whose first order key is a metric's latest value (`walkable`) may be split in
    two queries whose pages, one after the other, make the page of the whole: `walk` (the
    number of experiments in `experiments`) keeps the rows whose value is a number, in the
    order of the index of latest values, which PostgreSQL can read experiment by
    experiment, merged, and stop as soon as the page is full, instead of sorting every
    match; `rest` keeps the others (NaN, or no value), which come after every number in
    either direction.

    In the walk the experiments are named once, by the series walked: the scope (then
    without experiments) and the filter's lookups (by the run's key) do not name them again.
    PostgreSQL takes conditions as independent, so naming the experiments again would
    count their selectivity twice or three times (a tenth of the database's runs estimated
    as a thousandth), and the walk, whose cost depends on how many runs match, would look
    far more expensive than it is."""
    binds = Binds(scope_args)
    metrics = _MetricScope(target, datasets, binds) if target.metrics else None
    where = [scope_sql]
    prefix = ""
    descendant_match = "false"
    if roots:
        where.append(roots)
    if node is not None and roots:
        matched = _Compiler(target, binds, metrics, experiments).node(node)
        prefix = (
            f"WITH matched AS MATERIALIZED (SELECT {target.pk}, {target.alias}.path"  # noqa: S608
            f" FROM {target.table} {target.alias} WHERE {scope_sql} AND {matched}),"
            " ancestors AS (SELECT DISTINCT unnest(m.path) AS run_pk FROM matched m) "
        )
        descendant_match = f"({target.pk} IN (SELECT a.run_pk FROM ancestors a))"  # noqa: S608
        # One IN of the union rather than an OR of two: PostgreSQL joins the rows with
        # these candidates (and estimates their number) instead of testing two hashed
        # subplans on every row of the scope; the OR's estimate of tens of thousands of
        # rows had priced the page's per-row subqueries so high that the plan was JIT
        # compiled, for about a second per search over 100k runs.
        where.append(
            f"{target.pk} IN (SELECT m.run_pk FROM matched m"  # noqa: S608
            " UNION SELECT a.run_pk FROM ancestors a)"
        )
    elif node is not None:
        lookups = "" if walk else experiments
        where.append(_Compiler(target, binds, metrics, lookups).node(node))
    if metrics is not None and metrics.restricted:
        if node is None or not _has_metric_comparison(node):
            where.append(metrics.any_metric())
    source = ""
    if walk:
        assert walkable(target, order, roots) and experiments
        key = order[0].ident.key
        source = _walk_source(target, key, experiments, walk, order[0].descending, after, binds)
    sort, joins = _order_keys(target, order, binds, metrics, source)
    if rest:
        assert walkable(target, order, roots)
        where.append(f"({sort[1].sql} IS NULL OR {sort[1].sql} = 'NaN'::float8)")
    if after is not None:
        _check_position(sort, after)
        where.append(_after(sort, after, binds))
    sort_cols = ", ".join(f"{k.sql} AS sk{i}" for i, k in enumerate(sort))
    ordering = [f"{k.sql} {'DESC' if k.descending else 'ASC'} NULLS LAST" for k in sort]
    if source:
        # Every row has a number here: the NaN flag is 0 throughout, and NULLS FIRST in
        # descending order (no row is NULL) is the order of the index read backwards.
        ordering[:2] = [f"{sort[1].sql} DESC NULLS FIRST" if sort[1].descending else ordering[1]]
    order_sql = ", ".join(ordering)
    if target is RUNS:
        columns += f", {descendant_match} AS descendant_match"
    # Fixed fragments only; every value is a placeholder.
    select = f"SELECT {columns}, {sort_cols} FROM {target.table} {target.alias} "  # noqa: S608
    sql = (
        prefix
        + select
        + " ".join(joins)
        + " WHERE "
        + " AND ".join(where)
        + f" ORDER BY {order_sql} LIMIT {binds.add(limit, 'int')}"
    )
    return sql, binds.values, len(sort)


RUN_COLUMNS = run_store.info_columns(_RUN_CUTOFF, _RUN_NOW)
# A root among the runs of the searched lifecycle stages ($2): one without a parent, or
# whose parent is not among them (a deleted parent's children are roots of the active
# view, as MLflow's UI shows them). A NULL parent_run_pk finds no parent, so the NOT
# EXISTS alone says both; alone in the conjunction (not under an OR) it is planned as an
# anti-join, not as a hashed subplan reading every run of the database.
_RUN_ROOT = (
    "NOT EXISTS (SELECT 1 FROM runs vp"
    " WHERE vp.run_pk = r.parent_run_pk AND vp.lifecycle_stage = ANY($2::smallint[]))"
)


_CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"
_DEFAULT_PLANS = "SET LOCAL plan_cache_mode = auto"
# Whether the experiments hold fewer than $3 runs in the stages (counting at most $3).
_FEW_RUNS = """
SELECT count(*) < $3 FROM (
    SELECT 1 FROM runs r
    WHERE r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = ANY($2::smallint[])
    LIMIT $3) AS s"""


async def search_runs(
    conn: Connection,
    experiment_ids: Sequence[int],
    stages: Sequence[int],
    node: Node | None,
    order: Sequence[OrderKey],
    after: Sequence[Any] | None,
    limit: int,
    cutoff: int,
    now: int,
    *,
    roots_only: bool = False,
    walk_min_runs: int = 0,
) -> tuple[list[asyncpg.Record], int]:
    """A page of runs of the experiments in the lifecycle stages that match `node`, in
    `order`, strictly after the sort position `after`; and the number of sort columns. A
    RUNNING run last seen before the liveness `cutoff` (ms since the epoch) reads, matches
    and sorts as UNRESPONSIVE; a running run's duration runs to `now`. With `roots_only`,
    root runs that match or have a matching descendant (see build_query). A search that
    could walk the index of a metric's latest values walks it only when the experiments
    hold at least `walk_min_runs` runs in the stages (0: always)."""
    roots = _RUN_ROOT if roots_only else ""
    scope = "r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = ANY($2::smallint[])"
    query = functools.partial(
        build_query,
        RUNS,
        # $3, the cutoff, is _RUN_CUTOFF: RUN_COLUMNS and the status attribute read it;
        # $4 is _RUN_NOW.
        scope_args=[list(experiment_ids), list(stages), cutoff, now],
        node=node,
        order=order,
        after=after,
        columns=RUN_COLUMNS,
        roots=roots,
        experiments="$1::bigint[]",
    )
    if not (walkable(RUNS, order, roots) and experiment_ids):
        sql, args, n_sort = query(scope_sql=scope, limit=limit)
        return list(await conn.fetch(sql, *args)), n_sort
    if walk_min_runs > 0:
        # The count and, over few runs, the one query are planned with this search's
        # values: the generic plan of a prepared statement, which PostgreSQL settles on
        # after a few searches, cannot know how few runs the experiments hold (measured on
        # a 1,000-run experiment beside 100,000 others: the count alone took 10 ms as a
        # scan of every run, and a search 28 ms, against 17 ms planned each time).
        await conn.execute(_CUSTOM_PLANS)
        if await conn.fetchval(_FEW_RUNS, list(experiment_ids), list(stages), walk_min_runs):
            sql, args, n_sort = query(scope_sql=scope, limit=limit)
            return list(await conn.fetch(sql, *args)), n_sort
        # The walk keeps the generic plan, its merge of index scans (planned with the
        # values, PostgreSQL may hash-join every run instead).
        await conn.execute(_DEFAULT_PLANS)
    # Ordered by a metric's latest value: first the runs whose value is a number, walked
    # in index order (unless the page starts past them: a position whose NaN flag, its
    # first sort column, is not 0), then, if the page is not full, the others.
    rows: list[asyncpg.Record] = []
    if after is None or (len(after) > 0 and after[0] == 0):
        # The walk's series are the experiments' (see build_query).
        sql, args, n_sort = query(
            scope_sql="r.lifecycle_stage = ANY($2::smallint[])",
            limit=limit,
            walk=len(experiment_ids),
        )
        rows = list(await conn.fetch(sql, *args))
    if len(rows) < limit:
        sql, args, n_sort = query(scope_sql=scope, limit=limit - len(rows), rest=True)
        rows += await conn.fetch(sql, *args)
    return rows, n_sort


async def list_children(
    conn: Connection,
    parent_run_pk: int,
    stages: Sequence[int],
    after: Sequence[Any] | None,
    limit: int,
    cutoff: int,
    now: int,
) -> tuple[list[asyncpg.Record], int]:
    """A page of the child runs of a run in the lifecycle stages, newest first (start_time
    DESC, then run_id), strictly after `after`; and the number of sort columns."""
    sql, args, n_sort = build_query(
        RUNS,
        "r.parent_run_pk = $1::bigint AND r.lifecycle_stage = ANY($2::smallint[])",
        [parent_run_pk, list(stages), cutoff, now],
        None,
        (),
        after,
        limit,
        RUN_COLUMNS,
    )
    return list(await conn.fetch(sql, *args)), n_sort


async def search_experiments(
    conn: Connection,
    stages: Sequence[int],
    node: Node | None,
    order: Sequence[OrderKey],
    after: Sequence[Any] | None,
    limit: int,
    subjects: Sequence[str] | None = None,
) -> tuple[list[asyncpg.Record], int]:
    """A page of experiments in the lifecycle stages that match `node`, in `order` (default
    creation_time DESC), ties by id, strictly after `after`, among those `subjects` may see
    (all for None); and the number of sort columns."""
    base = "e.lifecycle_stage = ANY($1::smallint[])"
    base_args: list[Any] = [list(stages)]
    if subjects is not None:
        # Only the experiments the subjects may see, in the query itself.
        base += " AND " + permissions.VISIBLE.format(n=2)
        base_args.append(list(subjects))
    sql, args, n_sort = build_query(
        EXPERIMENTS,
        base,
        base_args,
        node,
        order,
        after,
        limit,
        experiment_store.COLUMNS,
    )
    return list(await conn.fetch(sql, *args)), n_sort


async def search_logged_models(
    conn: Connection,
    experiment_ids: Sequence[int],
    node: Node | None,
    order: Sequence[OrderKey],
    datasets: Sequence[tuple[str, str]],
    after: Sequence[Any] | None,
    limit: int,
) -> tuple[list[asyncpg.Record], int]:
    """A page of live logged models of the experiments that match `node`, in `order`, ties
    by creation_timestamp DESC and then model_id (the default order), strictly after
    `after`, with metric comparisons and ordering restricted to `datasets` when given (and
    then, if `node` compares no metric, only models with a metric on one of them); and the
    number of sort columns."""
    sql, args, n_sort = build_query(
        LOGGED_MODELS,
        "m.experiment_id = ANY($1::bigint[]) AND m.lifecycle_stage = 1",
        [list(experiment_ids)],
        node,
        order,
        after,
        limit,
        logged_model_store.COLUMNS,
        datasets,
    )
    return list(await conn.fetch(sql, *args)), n_sort
