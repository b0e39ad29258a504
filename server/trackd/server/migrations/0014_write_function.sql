-- The metric write path in the database (domain/ingest.py): a group of points written by
-- functions, so that a small group is one statement (one round trip, its own implicit
-- transaction) and a large one (COPY) three.
--
-- trackd_lock_group: stream marks, series (created when missing) and their locks, and
--     whether each series' run and experiment are active and its experiment watched.
-- trackd_fold_group: folds the summaries of a batch's inserted points (computed by the
--     server, domain/summaries.py) into the locked series rows, folds the batch's tier
--     blocks (domain/tiers.py), records the watch events, stamps touched_ms and advances
--     the streams.
-- trackd_write_group: both, with the points inserted in between, for a group whose points
--     are all new and whose items are all accepted; otherwise it raises SQLSTATE TD001,
--     the statement writes nothing, and the server writes the group the long way (lock,
--     insert what is new, fold).
--
-- Lock order, the one every writer of series uses: stream rows by id, then series rows
-- by id.
--
-- The functions' statements run with generic plans: the plan cache would otherwise keep
-- planning them anew on every call (a custom plan of unnest over parameter arrays costs
-- less to the estimator than the generic one), and planning was most of their time
-- (measured: trackd_lock_group of one series 0.49 ms a call with custom plans, 0.075 ms
-- with the generic ones). The generic plans are the same index lookups for any size.

-- A float8 from a numeric, saturating as IEEE arithmetic does: beyond the double range
-- +-Infinity, below half the least subnormal 0 (a plain cast raises on both).
CREATE FUNCTION trackd_float8(x numeric) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN x IS NULL OR x = 'NaN' THEN x::float8
    WHEN x >= 179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792 THEN 'Infinity'::float8
    WHEN x <= -179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792 THEN '-Infinity'::float8
    WHEN abs(x) <= 2.4703282292062327208828439643411068618252990130716238221279284125033775363510437593264991818081799618989828234772285886546332835517796989819938739800539093906315035659515570226392290858392449105184435931802849936536152500319370457678249219365623669863658480757001585769269903706311928279558551332927834338409351978015531246597263579574622766465272827220056374006485499977096599470454020828166226237857393450736339007967761930577506740176324673600968951340535537458516661134223766678604162159680461914467291840300530057530849048765391711386591646239524912623653881879636239373280423891018672348497668235089863388587925628302755995657524455507255189313690836254779186948667994968324049705821028513185451396213837722826145437693412532098591327667236328125E-324 THEN 0::float8
    ELSE x::float8
END $$;

-- A double as numeric, exactly as its text reads back (its shortest round-trip form with
-- extra_float_digits = 1, which trackd_fold_group sets), ±Infinity and NaN included;
-- numeric arithmetic on it neither overflows nor underflows.
CREATE FUNCTION trackd_numeric(x float8) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT x::text::numeric $$;

CREATE FUNCTION trackd_lock_group(
    p_streams text[], p_runs bigint[], p_keys text[],
    OUT marks bigint[], OUT series_ids bigint[], OUT active boolean[], OUT watched boolean[],
    OUT compacted bigint[]
)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    -- Streams: created when missing, locked in id order; each one's last committed
    -- sequence, in p_streams' order.
    IF cardinality(p_streams) > 0 THEN
        INSERT INTO ingest_streams (stream_id)
        SELECT id FROM unnest(p_streams) AS id ORDER BY id
        ON CONFLICT (stream_id) DO NOTHING;
        SELECT array_agg(l.last_sequence ORDER BY u.i) INTO marks
        FROM unnest(p_streams) WITH ORDINALITY AS u(id, i)
        JOIN (SELECT stream_id, last_sequence FROM ingest_streams
              WHERE stream_id = ANY(p_streams) ORDER BY stream_id FOR UPDATE) AS l
          ON l.stream_id = u.id;
    ELSE
        marks := '{}';
    END IF;
    -- Series: the missing ones created in (run, key) order, so that concurrent creators
    -- meet the unique index in one order (a creator that meets another's uncommitted row
    -- waits for it; the next statement, with a new snapshot, sees it), with their run's
    -- experiment, which the search indexes lead with (migration 0013).
    INSERT INTO metric_series (run_pk, experiment_id, key)
    SELECT w.r, r.experiment_id, w.k
    FROM unnest(p_runs, p_keys) AS w(r, k) JOIN runs r ON r.run_pk = w.r
    WHERE NOT EXISTS (SELECT 1 FROM metric_series s WHERE s.run_pk = w.r AND s.key = w.k)
    ORDER BY w.r, w.k
    ON CONFLICT (run_pk, key) DO NOTHING;
    -- Locked in id order; with the stages of their runs and experiments, and whether the
    -- experiment is watched: that read of watch_interest takes the ACCESS SHARE lock, held
    -- until commit, that a watch registration waits for (store/events.py).
    SELECT array_agg(l.series_id ORDER BY w.i),
           array_agg(l.run_stage = 1 AND l.experiment_stage = 1 ORDER BY w.i),
           array_agg(l.watched ORDER BY w.i),
           array_agg(l.compacted_step ORDER BY w.i)
    INTO series_ids, active, watched, compacted
    FROM unnest(p_runs, p_keys) WITH ORDINALITY AS w(r, k, i)
    JOIN (SELECT s.series_id, s.run_pk, s.key, s.compacted_step, r.lifecycle_stage AS run_stage,
                 e.lifecycle_stage AS experiment_stage,
                 EXISTS (SELECT 1 FROM watch_interest wi
                         WHERE wi.experiment_id = r.experiment_id
                           AND wi.until_ms > (extract(epoch FROM statement_timestamp())
                                              * 1000)::bigint) AS watched
          FROM metric_series s
          JOIN runs r ON r.run_pk = s.run_pk
          JOIN experiments e ON e.experiment_id = r.experiment_id
          WHERE (s.run_pk, s.key) IN (SELECT * FROM unnest(p_runs, p_keys))
          ORDER BY s.series_id
          FOR NO KEY UPDATE OF s) AS l
      ON l.run_pk = w.r AND l.key = w.k;
END $$;

-- Folds a batch into locked series p_sids: their inserted points' summaries (per series:
-- count, NaN, +Inf, -Inf counts, finite min and max, finite count, mean and sum of squared
-- deviations, first and last step, latest point), their tier blocks (two texts and a
-- count, as domain/tiers.py makes them, the first integer column the series' position in
-- p_sids), their watch events (the points' count and columns of the series whose p_cols
-- is not NULL, recorded when p_watched), the touched time, and the streams' new marks.
--
-- The mean and m2 are combined by Chan et al.'s pairwise update, in numeric: exact where
-- float8 would raise on overflow or underflow, then rounded to the nearest double
-- (saturating to +-Infinity and 0 as the server's floats do).
CREATE FUNCTION trackd_fold_group(
    p_sids bigint[], p_watched boolean[],
    p_count bigint[], p_nan bigint[], p_pinf bigint[], p_ninf bigint[],
    p_min float8[], p_max float8[], p_nfin bigint[], p_mean float8[], p_m2 float8[],
    p_first bigint[], p_last bigint[], p_lstep bigint[], p_lts bigint[], p_lval float8[],
    p_tier_ints text, p_tier_floats text, p_tier_n integer,
    p_npoints integer[], p_cols bytea[],
    p_streams text[], p_seqs bigint[], p_now bigint
) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET extra_float_digits = 1 AS $$
BEGIN
    UPDATE metric_series s SET
        count = s.count + u.count,
        nan_count = s.nan_count + u.nan,
        pos_inf_count = s.pos_inf_count + u.pinf,
        neg_inf_count = s.neg_inf_count + u.ninf,
        min_value = least(s.min_value, u.min),
        max_value = greatest(s.max_value, u.max),
        finite_mean = CASE
            WHEN u.nfin = 0 THEN s.finite_mean
            WHEN c.n_old = 0 THEN u.mean
            ELSE trackd_float8(c.mean) END,
        finite_m2 = CASE
            WHEN u.nfin = 0 THEN s.finite_m2
            WHEN c.n_old = 0 THEN u.m2
            ELSE trackd_float8(c.m2) END,
        first_step = least(s.first_step, u.first),
        last_step = greatest(s.last_step, u.last),
        latest_step = CASE WHEN c.newer THEN u.lstep ELSE s.latest_step END,
        latest_ts = CASE WHEN c.newer THEN u.lts ELSE s.latest_ts END,
        latest_value = CASE WHEN c.newer THEN u.lval ELSE s.latest_value END,
        touched_ms = greatest(s.touched_ms, p_now)
    FROM unnest(p_sids, p_count, p_nan, p_pinf, p_ninf, p_min, p_max, p_nfin, p_mean, p_m2,
                p_first, p_last, p_lstep, p_lts, p_lval)
         AS u(sid, count, nan, pinf, ninf, min, max, nfin, mean, m2, first, last, lstep, lts,
              lval),
    -- The stored row as numbers (each computed once: OFFSET 0 keeps the subqueries apart,
    -- so that trackd_float8 is inlined over plain columns).
    LATERAL (
        SELECT o.n_old, o.newer,
               o.mean + d.delta * u.nfin / (o.n_old + u.nfin) AS mean,
               o.m2 + trackd_numeric(u.m2) + d.delta * d.delta * o.n_old * u.nfin
                   / (o.n_old + u.nfin) AS m2
        FROM (SELECT t.count - t.nan_count - t.pos_inf_count - t.neg_inf_count AS n_old,
                     trackd_numeric(t.finite_mean) AS mean, trackd_numeric(t.finite_m2) AS m2,
                     t.latest_step IS NULL
                         OR (u.lstep, u.lts, u.lval)
                            > (t.latest_step, t.latest_ts, t.latest_value) AS newer
              FROM metric_series t WHERE t.series_id = u.sid OFFSET 0) AS o,
        LATERAL (SELECT trackd_numeric(u.mean) - o.mean AS delta OFFSET 0) AS d
        OFFSET 0
    ) AS c
    WHERE s.series_id = u.sid;

    -- The tier blocks: every integer column one after the other as one bigint[] literal,
    -- then every float8 column as one float8[] literal, p_tier_n blocks each. Row
    -- comparisons order float8 as PostgreSQL does (NaN greatest), the order of the points'
    -- first and last. Every right-hand side reads the stored row as it was. OFFSET 0 keeps
    -- each text parsed once.
    IF p_tier_n > 0 THEN
        INSERT INTO metric_tiers AS t (
            series_id, axis, level, block, count, nan_count, pos_inf_count, neg_inf_count,
            x_min, x_max, y_min, y_max, first_y, last_y, min_value, max_value, first_value,
            last_value)
        SELECT p_sids[u.si], u.axis, u.level, u.block, u.count, u.nan, u.pinf, u.ninf,
               u.x_min, u.x_max, u.y_min, u.y_max, u.first_y, u.last_y, u.min, u.max,
               u.first_value, u.last_value
        FROM (SELECT p_tier_ints::bigint[] AS i, p_tier_floats::float8[] AS f OFFSET 0) AS a
        CROSS JOIN LATERAL unnest(
            a.i[1:p_tier_n], a.i[p_tier_n + 1:2 * p_tier_n],
            a.i[2 * p_tier_n + 1:3 * p_tier_n], a.i[3 * p_tier_n + 1:4 * p_tier_n],
            a.i[4 * p_tier_n + 1:5 * p_tier_n], a.i[5 * p_tier_n + 1:6 * p_tier_n],
            a.i[6 * p_tier_n + 1:7 * p_tier_n], a.i[7 * p_tier_n + 1:8 * p_tier_n],
            a.i[8 * p_tier_n + 1:9 * p_tier_n], a.i[9 * p_tier_n + 1:10 * p_tier_n],
            a.i[10 * p_tier_n + 1:11 * p_tier_n], a.i[11 * p_tier_n + 1:12 * p_tier_n],
            a.i[12 * p_tier_n + 1:13 * p_tier_n], a.i[13 * p_tier_n + 1:14 * p_tier_n],
            a.f[1:p_tier_n], a.f[p_tier_n + 1:2 * p_tier_n],
            a.f[2 * p_tier_n + 1:3 * p_tier_n], a.f[3 * p_tier_n + 1:4 * p_tier_n]
        ) AS u(si, axis, level, block, count, nan, pinf, ninf, x_min, x_max, y_min, y_max,
               first_y, last_y, min, max, first_value, last_value)
        ON CONFLICT (series_id, axis, level, block) DO UPDATE SET
            count = t.count + excluded.count,
            nan_count = t.nan_count + excluded.nan_count,
            pos_inf_count = t.pos_inf_count + excluded.pos_inf_count,
            neg_inf_count = t.neg_inf_count + excluded.neg_inf_count,
            min_value = least(t.min_value, excluded.min_value),
            max_value = greatest(t.max_value, excluded.max_value),
            x_min = least(t.x_min, excluded.x_min),
            x_max = greatest(t.x_max, excluded.x_max),
            y_min = least(t.y_min, excluded.y_min),
            y_max = greatest(t.y_max, excluded.y_max),
            first_y = CASE WHEN (excluded.x_min, excluded.first_y, excluded.first_value)
                                < (t.x_min, t.first_y, t.first_value)
                           THEN excluded.first_y ELSE t.first_y END,
            first_value = CASE WHEN (excluded.x_min, excluded.first_y, excluded.first_value)
                                    < (t.x_min, t.first_y, t.first_value)
                               THEN excluded.first_value ELSE t.first_value END,
            last_y = CASE WHEN (excluded.x_max, excluded.last_y, excluded.last_value)
                               > (t.x_max, t.last_y, t.last_value)
                          THEN excluded.last_y ELSE t.last_y END,
            last_value = CASE WHEN (excluded.x_max, excluded.last_y, excluded.last_value)
                                   > (t.x_max, t.last_y, t.last_value)
                              THEN excluded.last_value ELSE t.last_value END;
    END IF;

    -- The watch log: one event per watched series, in p_sids' order; notifies listeners
    -- at commit (store/events.py).
    IF EXISTS (SELECT 1 FROM unnest(p_watched, p_cols) AS u(w, c) WHERE u.w AND u.c IS NOT NULL)
    THEN
        INSERT INTO run_events (run_pk, experiment_id, kind, key, points, columns, created_ms)
        SELECT s.run_pk, r.experiment_id, 1, s.key, u.n, u.c, p_now
        FROM unnest(p_sids, p_watched, p_npoints, p_cols) WITH ORDINALITY AS u(sid, w, n, c, i)
        JOIN metric_series s ON s.series_id = u.sid
        JOIN runs r ON r.run_pk = s.run_pk
        WHERE u.w AND u.c IS NOT NULL
        ORDER BY u.i;
        PERFORM pg_notify('trackd_events', '');
    END IF;

    IF cardinality(p_streams) > 0 THEN
        UPDATE ingest_streams t SET last_sequence = u.seq, updated_at = p_now
        FROM unnest(p_streams, p_seqs) AS u(id, seq)
        WHERE t.stream_id = u.id;
    END IF;
END $$;

-- One group in one statement: streams p_streams (distinct) whose items carry sequences
-- p_first..p_last, series (p_runs, p_keys) (distinct), points (p_series: a series'
-- position in p_runs), and what trackd_fold_group takes for every series. Returns the
-- series ids. Raises TD001, writing nothing, when an item is a resent chunk, a run or
-- experiment is not active, a point is late (at or below its series' compacted steps)
-- or a point is stored already: the server then writes the
-- group in a transaction of several statements that sorts those out.
CREATE FUNCTION trackd_write_group(
    p_streams text[], p_first bigint[], p_last bigint[], p_runs bigint[], p_keys text[],
    p_series integer[], p_steps bigint[], p_ts bigint[], p_values float8[],
    p_count bigint[], p_nan bigint[], p_pinf bigint[], p_ninf bigint[],
    p_min float8[], p_max float8[], p_nfin bigint[], p_mean float8[], p_m2 float8[],
    p_fstep bigint[], p_lastep bigint[], p_lstep bigint[], p_lts bigint[], p_lval float8[],
    p_tier_ints text, p_tier_floats text, p_tier_n integer,
    p_npoints integer[], p_cols bytea[], p_now bigint
) RETURNS bigint[]
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    g record;
    n bigint;
BEGIN
    SELECT * INTO g FROM trackd_lock_group(p_streams, p_runs, p_keys);
    IF EXISTS (SELECT 1 FROM unnest(g.marks, p_first) AS m(mark, seq) WHERE m.seq <= m.mark)
       OR NOT (true = ALL(g.active)) THEN
        RAISE EXCEPTION 'the group has a resent chunk or a deleted run' USING ERRCODE = 'TD001';
    END IF;
    -- A late point (at or below its series' greatest compacted step, migration 0012) may
    -- repeat a point in a block, which only the server can read.
    IF EXISTS (SELECT 1 FROM unnest(p_series, p_steps) AS u(si, st)
               WHERE u.st <= g.compacted[u.si]) THEN
        RAISE EXCEPTION 'the group has a late point' USING ERRCODE = 'TD001';
    END IF;
    INSERT INTO metric_points (series_id, step, ts, value)
    SELECT g.series_ids[u.si], u.st, u.t, u.v
    FROM unnest(p_series, p_steps, p_ts, p_values) AS u(si, st, t, v)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n <> cardinality(p_steps) THEN
        RAISE EXCEPTION 'the group has points stored already' USING ERRCODE = 'TD001';
    END IF;
    PERFORM trackd_fold_group(
        g.series_ids, g.watched, p_count, p_nan, p_pinf, p_ninf, p_min, p_max, p_nfin, p_mean,
        p_m2, p_fstep, p_lastep, p_lstep, p_lts, p_lval, p_tier_ints, p_tier_floats,
        p_tier_n, p_npoints, p_cols, p_streams, p_last, p_now);
    RETURN g.series_ids;
END $$;
