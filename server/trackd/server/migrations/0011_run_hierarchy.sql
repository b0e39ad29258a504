-- Runs as the seed APIs describe them: a first-class hierarchy, an external URL and a
-- source on runs; typed params.
--
-- runs.path: the run's ancestors, from its root down to its parent (NULL for a root run).
-- A parent is set when a run is created and never changes, so a path never changes
-- either: the depth is its length, a run's root is its first element, and "R is an
-- ancestor of D" is `R.run_pk = ANY(D.path)`, with no recursive query at read time.
-- The description is the `mlflow.note.content` tag (MLflow's run description), read from
-- run_tags, so it has no column.
--
-- Every new column is NULL where it has nothing to say (a root's path, no URL, no source,
-- an untyped param): a NULL takes no room in the row, so the tables a search scans stay as
-- narrow as they were for runs and params that do not use them.
ALTER TABLE runs
    ADD COLUMN path         bigint[],
    ADD COLUMN external_url text,
    ADD COLUMN source_type  smallint,
    ADD COLUMN source_id    text;

-- Old data: a run created with only the `mlflow.parentRunId` tag (as MLflow's client
-- nests runs) gets that run as its parent when the tag names a run of the same experiment.
CREATE TEMPORARY TABLE tag_linked ON COMMIT DROP AS
SELECT c.run_pk, p.run_pk AS parent_run_pk
FROM runs c
JOIN run_tags t ON t.run_pk = c.run_pk AND t.key = 'mlflow.parentRunId'
-- (CASE, since the terms of an AND may be evaluated in any order.)
JOIN runs p ON p.run_id = (CASE WHEN t.value ~ '^[0-9a-f]{32}$' THEN t.value::uuid END)
WHERE c.parent_run_pk IS NULL AND p.experiment_id = c.experiment_id AND p.run_pk <> c.run_pk;

UPDATE runs r SET parent_run_pk = l.parent_run_pk FROM tag_linked l WHERE r.run_pk = l.run_pk;
-- Fresh statistics of the links just made, so that the walks below probe the index of
-- parents level by level instead of scanning runs at each level of a deep chain.
ANALYZE runs;

-- Tags can name each other in a circle, which parents set at creation never can: a run
-- linked by its tag whose chain of parents comes back to itself becomes a root again.
-- Only runs that no root reaches walking down can be in a circle or below one, so only
-- those are walked up; each walk stops at the first run it has seen before, so a chain
-- that runs into a circle of other runs ends there (counting steps instead would walk round
-- that circle up to the bound for every run below it), and a circle of any length is found.
CREATE TEMPORARY TABLE rooted ON COMMIT DROP AS
WITH RECURSIVE down (run_pk) AS (
    SELECT run_pk FROM runs WHERE parent_run_pk IS NULL
    UNION ALL
    SELECT c.run_pk FROM runs c JOIN down d ON c.parent_run_pk = d.run_pk
)
SELECT run_pk FROM down;

WITH RECURSIVE up (start, cur, seen) AS (
    SELECT l.run_pk, l.parent_run_pk, ARRAY[l.run_pk] FROM tag_linked l
    WHERE NOT EXISTS (SELECT 1 FROM rooted d WHERE d.run_pk = l.run_pk)
    UNION ALL
    SELECT up.start, r.parent_run_pk, up.seen || r.run_pk
    FROM up JOIN runs r ON r.run_pk = up.cur
    WHERE up.cur <> ALL (up.seen)
)
UPDATE runs r SET parent_run_pk = NULL
FROM (SELECT DISTINCT start FROM up WHERE cur = start) circle
WHERE r.run_pk = circle.start;

-- Every nested run's path, walked down from the roots.
WITH RECURSIVE tree (run_pk, path) AS (
    SELECT run_pk, '{}'::bigint[] FROM runs WHERE parent_run_pk IS NULL
    UNION ALL
    SELECT c.run_pk, t.path || t.run_pk
    FROM runs c JOIN tree t ON c.parent_run_pk = t.run_pk
)
UPDATE runs r SET path = tree.path FROM tree
WHERE r.run_pk = tree.run_pk AND cardinality(tree.path) > 0;

-- Children of a parent in start order (ListChildRuns, has_children) replace the index of
-- parents alone.
DROP INDEX runs_parent_idx;
CREATE INDEX runs_parent_start_idx ON runs (parent_run_pk, start_time DESC, run_id)
    WHERE parent_run_pk IS NOT NULL;

-- params.type: the trackd.v1.ParamType number; NULL for an untyped param (0), as every
-- param logged before is.
-- params.number: the exact value of an INT or DOUBLE param (numeric keeps every int64 and
-- every double exactly, NaN and the infinities included), which numeric comparisons in
-- search read; NULL for the other types.
ALTER TABLE params
    ADD COLUMN type   smallint,
    ADD COLUMN number numeric;
CREATE INDEX params_key_number_idx ON params (key, number) WHERE number IS NOT NULL;

-- The watch log's params events carry each param's type (NULL in events from before).
ALTER TABLE run_events ADD COLUMN param_types smallint[];
