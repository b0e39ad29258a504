"""The distribution plan of docs/scale-out.md against the schema as migrated to the latest.

docs/scale-out.md holds the plan in two machine-readable tables (between HTML comment
markers), which this module parses: where every table goes on a Citus cluster
(distributed by a column, reference, or coordinator-only), and every place where today's
schema breaks Citus' rules, with the reason. The rules, read from the catalog:

- every table of the schema is classified, and every classified table exists: a new table
  fails here until the document says where it goes;
- a distributed table has its distribution column, of one type across all of them
  (co-location needs it); a table without it is one exception ("missing-column"), and its
  keys and foreign keys are reworked with it, so they are not listed apart;
- every primary key and unique index of a distributed table includes the distribution
  column ("unique");
- a foreign key runs between two distributed tables (co-located: the same distribution
  column, which both sides of the key include at the same position), into a reference
  table from any table, or between coordinator-only tables ("foreign-key").

The exceptions listed must be exactly the violations found: fixing one, or adding a new
one, fails the test until the document is updated with it.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from conftest import server_config
from trackd.server import app

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "scale-out.md"
PLACEMENTS = {"distributed", "reference", "coordinator"}
KINDS = {"missing-column", "unique", "foreign-key"}


def _table(name: str) -> list[list[str]]:
    """The rows (cells, backticks stripped) of the markdown table between
    `<!-- name:start -->` and `<!-- name:end -->` in docs/scale-out.md, header excluded."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", text, re.S)
    assert m, f"docs/scale-out.md has no {name} table"
    rows = []
    for line in m.group(1).strip().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= {"-", " ", ":"}:
            continue
        rows.append(cells)
    return rows[1:]


def plan() -> dict[str, tuple[str, str]]:
    """table -> (placement, distribution column or '')."""
    out: dict[str, tuple[str, str]] = {}
    for cells in _table("distribution-plan"):
        table, placement, column = cells[0], cells[1], cells[2]
        assert table not in out, f"{table} is classified twice"
        assert placement in PLACEMENTS, f"{table}: unknown placement {placement!r}"
        assert bool(column) == (placement == "distributed"), (
            f"{table}: a distribution column goes with 'distributed' only"
        )
        out[table] = (placement, column)
    return out


def exceptions() -> set[tuple[str, str, str]]:
    """(kind, table, object) of every recorded exception; each must give its reason."""
    out = set()
    for cells in _table("schema-exceptions"):
        kind, table, obj, reason = cells[0], cells[1], cells[2], cells[3]
        assert kind in KINDS, f"unknown exception kind {kind!r}"
        assert reason, f"{kind} {table} {obj}: no reason given"
        assert (kind, table, obj) not in out, f"{kind} {table} {obj} listed twice"
        out.add((kind, table, obj))
    return out


TABLES = """
SELECT c.relname FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition"""

COLUMNS = """
SELECT c.relname AS table, a.attname AS column, a.attnum,
       format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
  AND a.attnum > 0 AND NOT a.attisdropped"""

# Primary keys and unique indexes, constraints or not (a unique index constrains placement
# as a UNIQUE constraint does); expression columns are 0 in indkey.
UNIQUES = """
SELECT t.relname AS table, i.relname AS name, x.indkey::int2[] AS keys
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
WHERE t.relnamespace = 'public'::regnamespace AND x.indisunique"""

FOREIGN_KEYS = """
SELECT k.conname AS name, s.relname AS table, t.relname AS target, k.conkey AS keys,
       k.confkey AS target_keys
FROM pg_constraint k JOIN pg_class s ON s.oid = k.conrelid JOIN pg_class t ON t.oid = k.confrelid
WHERE k.contype = 'f' AND s.relnamespace = 'public'::regnamespace"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def catalog(database_url: str) -> AsyncIterator[dict[str, list[asyncpg.Record]]]:
    """The catalog of the module's database after trackd started on it (and migrated it)."""
    running = await app.start(server_config(), database_url)
    try:
        conn = await asyncpg.connect(database_url)
        try:
            yield {
                "tables": await conn.fetch(TABLES),
                "columns": await conn.fetch(COLUMNS),
                "uniques": await conn.fetch(UNIQUES),
                "foreign_keys": await conn.fetch(FOREIGN_KEYS),
            }
        finally:
            await conn.close()
    finally:
        await running.stop(1.0)


def violations(cat: dict[str, list[asyncpg.Record]]) -> set[tuple[str, str, str]]:
    """What the catalog shows against the plan's rules (see the module's docstring)."""
    p = plan()
    attnum = {(r["table"], r["column"]): r["attnum"] for r in cat["columns"]}
    found: set[tuple[str, str, str]] = set()
    missing = set()
    for table, (placement, column) in p.items():
        if placement == "distributed" and (table, column) not in attnum:
            found.add(("missing-column", table, column))
            missing.add(table)
    for r in cat["uniques"]:
        placement, column = p.get(r["table"], ("", ""))
        if placement != "distributed" or r["table"] in missing:
            continue
        if attnum[(r["table"], column)] not in r["keys"]:
            found.add(("unique", r["table"], r["name"]))
    for r in cat["foreign_keys"]:
        (sp, sc), (tp, tc) = p.get(r["table"], ("", "")), p.get(r["target"], ("", ""))
        if r["table"] in missing or r["target"] in missing:
            continue
        if tp == "reference" or (sp == tp == "coordinator"):
            continue
        if sp == tp == "distributed" and sc == tc:
            pairs = set(zip(r["keys"], r["target_keys"], strict=True))
            if (attnum[(r["table"], sc)], attnum[(r["target"], tc)]) in pairs:
                continue
        found.add(("foreign-key", r["table"], r["name"]))
    return found


def test_every_table_is_classified(catalog: dict[str, list[asyncpg.Record]]) -> None:
    tables = {r["relname"] for r in catalog["tables"]}
    classified = set(plan())
    assert tables - classified == set(), "tables the plan in docs/scale-out.md does not place"
    assert classified - tables == set(), "tables the plan places that the schema lacks"


def test_distribution_columns_share_one_type(catalog: dict[str, list[asyncpg.Record]]) -> None:
    types = {
        (r["column"], r["type"])
        for r in catalog["columns"]
        if plan().get(r["table"], ("", ""))[1] == r["column"]
    }
    assert len(types) == 1, f"co-located tables need one distribution column type: {types}"


def test_exceptions_are_exactly_what_the_catalog_shows(
    catalog: dict[str, list[asyncpg.Record]],
) -> None:
    found = violations(catalog)
    listed = exceptions()
    assert found - listed == set(), "violations docs/scale-out.md does not list"
    assert listed - found == set(), "exceptions listed that the schema no longer has"


def test_the_rules_catch_what_they_should(catalog: dict[str, list[asyncpg.Record]]) -> None:
    """The checks themselves: the columns, keys and foreign keys they reason about are there
    (a query that found nothing would make every rule pass)."""
    assert len(catalog["uniques"]) > 20 and len(catalog["foreign_keys"]) > 15
    found = violations(catalog)
    # params carries experiment_id since migration 0013, but its primary key is (run_pk, key).
    assert ("unique", "params", "params_pkey") in found
    # experiment_tags -> experiments: reference to reference, allowed.
    assert not any(t == "experiment_tags" for _, t, _ in found)
