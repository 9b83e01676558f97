-- Statistics read from roll-ups that triggers keep in step with `predictions`, so that no page
-- view scans the whole table. Design and figures: docs/storage.md.
--
--   prediction_totals  all time, per model version, predicted digit, true digit, confidence bin
--   prediction_daily   the same per local day, in the time zone held by rollup_settings
--
-- Every write to predictions (the api, the web app's feedback, a manual fix, a restore that
-- inserts rows) goes through statement-level triggers with transition tables: one grouped
-- upsert per statement, in key order, so concurrent writers serialise on the few rows they share
-- for microseconds and never deadlock. Counts are bigint and confidence sums numeric, so a
-- roll-up equals a full recount exactly, whatever the order of the writes.

-- The drawings of old uncorrected predictions may be dropped (DRAWING_RETENTION_DAYS,
-- `python -m digit_predictor.db prune-drawings`); the row and its statistics stay.
ALTER TABLE predictions ALTER COLUMN image_data DROP NOT NULL;

-- 15 equal bins over [0, 1]; a confidence of exactly 1 goes in the last. The same function
-- serves the triggers, the rebuild and the reliability diagram, so they always agree.
CREATE FUNCTION confidence_bin(confidence double precision) RETURNS smallint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN least(floor(confidence * 15), 14)::smallint;

-- One row: the time zone the days of prediction_daily are in. The app's HIGH_SCORE_TZ is a
-- setting, so `python -m digit_predictor.db migrate` compares the two and rebuilds the daily
-- roll-up when they differ (prediction_rollup_rebuild). The default here is the setting's.
CREATE TABLE rollup_settings (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    time_zone text NOT NULL CHECK (now() AT TIME ZONE time_zone IS NOT NULL),
    built_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO rollup_settings (time_zone) VALUES ('America/New_York');

CREATE TABLE prediction_totals (
    model_version   text NOT NULL,
    predicted_digit smallint NOT NULL,
    true_digit      smallint,  -- null: no feedback
    confidence_bin  smallint NOT NULL,
    n               bigint NOT NULL,
    confidence_sum  numeric NOT NULL,
    CONSTRAINT prediction_totals_key
        UNIQUE NULLS NOT DISTINCT (model_version, predicted_digit, true_digit, confidence_bin)
);

CREATE TABLE prediction_daily (
    day             date NOT NULL,  -- local day in rollup_settings.time_zone
    model_version   text NOT NULL,
    predicted_digit smallint NOT NULL,
    true_digit      smallint,
    confidence_bin  smallint NOT NULL,
    n               bigint NOT NULL,
    confidence_sum  numeric NOT NULL,
    CONSTRAINT prediction_daily_key UNIQUE NULLS NOT DISTINCT
        (day, model_version, predicted_digit, true_digit, confidence_bin)
);
-- When each model version first and last answered, without reading every day.
CREATE INDEX prediction_daily_by_version ON prediction_daily (model_version, day);

-- One signed change to a roll-up key: +n for rows that arrive there, -n for rows that leave.
CREATE TYPE prediction_rollup_delta AS (
    day             date,
    model_version   text,
    predicted_digit smallint,
    true_digit      smallint,
    confidence_bin  smallint,
    n               bigint,
    confidence_sum  numeric
);

-- One function for the three statement triggers (plpgsql: its statements' plans are cached per
-- connection). Transition tables hold every row a statement changed, so a bulk insert or delete
-- costs one grouped upsert per roll-up, not one per row. Only the
-- columns named here are read: columns added later (is_digit, ...) change nothing.
CREATE FUNCTION prediction_rollup_trigger() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    zone text := (SELECT time_zone FROM rollup_settings);
    deltas prediction_rollup_delta[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(ROW(day, model_version, predicted_digit, true_digit, bin, n, s)
                         ::prediction_rollup_delta)
        INTO deltas
        FROM (SELECT (created_at AT TIME ZONE zone)::date AS day, model_version,
                     predicted_digit, true_digit, confidence_bin(confidence) AS bin,
                     count(*) AS n, sum(confidence::numeric) AS s
              FROM new_rows GROUP BY 1, 2, 3, 4, 5) AS g;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(ROW(day, model_version, predicted_digit, true_digit, bin, -n, -s)
                         ::prediction_rollup_delta)
        INTO deltas
        FROM (SELECT (created_at AT TIME ZONE zone)::date AS day, model_version,
                     predicted_digit, true_digit, confidence_bin(confidence) AS bin,
                     count(*) AS n, sum(confidence::numeric) AS s
              FROM old_rows GROUP BY 1, 2, 3, 4, 5) AS g;
    ELSE
        -- Only rows whose counted columns changed (feedback, a manual fix); an update that
        -- touches nothing counted (dropping a drawing, an idempotent re-insert) adds nothing.
        SELECT array_agg(ROW((r.created_at AT TIME ZONE zone)::date, r.model_version,
                             r.predicted_digit, r.true_digit, confidence_bin(r.confidence),
                             r.sign, r.sign * r.confidence::numeric)::prediction_rollup_delta)
        INTO deltas
        FROM old_rows AS o
        JOIN new_rows AS nw USING (id)
        CROSS JOIN LATERAL (VALUES
            (-1, o.created_at, o.model_version, o.predicted_digit, o.true_digit, o.confidence),
            (1, nw.created_at, nw.model_version, nw.predicted_digit, nw.true_digit,
             nw.confidence)
        ) AS r(sign, created_at, model_version, predicted_digit, true_digit, confidence)
        WHERE (o.created_at, o.model_version, o.predicted_digit, o.true_digit, o.confidence)
              IS DISTINCT FROM
              (nw.created_at, nw.model_version, nw.predicted_digit, nw.true_digit,
               nw.confidence);
    END IF;
    IF deltas IS NULL THEN
        RETURN NULL;
    END IF;
    -- Totals first, then daily, each in key order: any two transactions lock the roll-up rows
    -- they share in the same order, so they wait for each other briefly and never deadlock.
    INSERT INTO prediction_totals AS t
        (model_version, predicted_digit, true_digit, confidence_bin, n, confidence_sum)
    SELECT d.model_version, d.predicted_digit, d.true_digit, d.confidence_bin,
           sum(d.n), sum(d.confidence_sum)
    FROM unnest(deltas) AS d
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3 NULLS FIRST, 4
    ON CONFLICT ON CONSTRAINT prediction_totals_key DO UPDATE
        SET n = t.n + excluded.n, confidence_sum = t.confidence_sum + excluded.confidence_sum;
    INSERT INTO prediction_daily AS t
        (day, model_version, predicted_digit, true_digit, confidence_bin, n, confidence_sum)
    SELECT d.day, d.model_version, d.predicted_digit, d.true_digit, d.confidence_bin,
           sum(d.n), sum(d.confidence_sum)
    FROM unnest(deltas) AS d
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4 NULLS FIRST, 5
    ON CONFLICT ON CONSTRAINT prediction_daily_key DO UPDATE
        SET n = t.n + excluded.n, confidence_sum = t.confidence_sum + excluded.confidence_sum;
    RETURN NULL;
END
$$;

CREATE TRIGGER prediction_rollup_insert AFTER INSERT ON predictions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION prediction_rollup_trigger();
CREATE TRIGGER prediction_rollup_update AFTER UPDATE ON predictions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION prediction_rollup_trigger();
CREATE TRIGGER prediction_rollup_delete AFTER DELETE ON predictions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION prediction_rollup_trigger();

CREATE FUNCTION prediction_rollup_truncate() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    TRUNCATE prediction_totals, prediction_daily;
    RETURN NULL;
END
$$;
CREATE TRIGGER prediction_rollup_truncate AFTER TRUNCATE ON predictions
    FOR EACH STATEMENT EXECUTE FUNCTION prediction_rollup_truncate();

-- Recounts both roll-ups from predictions, with days in `zone`. Writers wait meanwhile (the lock
-- lets reads through), so no row is counted twice or missed. Used below, when the time-zone
-- setting changes, and by `python -m digit_predictor.db rebuild-rollup`.
CREATE FUNCTION prediction_rollup_rebuild(zone text) RETURNS bigint
    LANGUAGE plpgsql
AS $$
DECLARE
    counted bigint;
BEGIN
    LOCK TABLE predictions IN SHARE ROW EXCLUSIVE MODE;
    UPDATE rollup_settings SET time_zone = zone, built_at = now();
    -- DELETE, not TRUNCATE: readers keep seeing the old figures until this commits.
    DELETE FROM prediction_totals;
    DELETE FROM prediction_daily;
    INSERT INTO prediction_daily
        (day, model_version, predicted_digit, true_digit, confidence_bin, n, confidence_sum)
    SELECT (created_at AT TIME ZONE zone)::date, model_version, predicted_digit, true_digit,
           confidence_bin(confidence), count(*), sum(confidence::numeric)
    FROM predictions
    GROUP BY 1, 2, 3, 4, 5;
    INSERT INTO prediction_totals
        (model_version, predicted_digit, true_digit, confidence_bin, n, confidence_sum)
    SELECT model_version, predicted_digit, true_digit, confidence_bin, sum(n), sum(confidence_sum)
    FROM prediction_daily
    GROUP BY 1, 2, 3, 4;
    -- Fresh planner statistics now, not when autovacuum gets round to it: without them a
    -- freshly built daily roll-up is read with a sequential scan.
    ANALYZE prediction_totals, prediction_daily;
    SELECT coalesce(sum(n), 0) INTO counted FROM prediction_totals;
    RETURN counted;
END
$$;

SELECT prediction_rollup_rebuild(time_zone) FROM rollup_settings;
