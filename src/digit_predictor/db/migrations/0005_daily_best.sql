-- Today's high score without reading today's rows: the best prediction of each local day, kept
-- by triggers like the roll-ups of 0003 (docs/storage.md). At 83,000 predictions a day the old
-- query (an index range over today's rows, then a sort) cost 75 ms; this is one primary-key read.
--
-- "Best" is the order the high score has always used: highest confidence, then the earliest,
-- then the lowest id; a drawing flagged as not a digit never wins (rows from before the
-- detector, is_digit null, still count).

CREATE TABLE prediction_daily_best (
    day           date PRIMARY KEY,  -- local day in rollup_settings.time_zone
    prediction_id bigint NOT NULL,
    confidence    double precision NOT NULL,
    created_at    timestamptz NOT NULL
);

-- Recount the best of the given days from the table (after a delete or a manual fix). A day's
-- kept row is locked first, so a writer that offers a row meanwhile either committed before
-- (the recount sees its row) or waits and compares with the result. A day with no kept row
-- yet may get one from a concurrent insert, so there the recount is offered like any row.
CREATE FUNCTION prediction_daily_best_recount(days date[], zone text) RETURNS void
    LANGUAGE plpgsql
AS $$
DECLARE
    d date;
    kept boolean;
    best record;
BEGIN
    FOR d IN SELECT DISTINCT x FROM unnest(days) AS x ORDER BY x LOOP
        PERFORM 1 FROM prediction_daily_best WHERE day = d FOR UPDATE;
        kept := FOUND;
        SELECT id, confidence, created_at INTO best
        FROM predictions
        WHERE created_at >= (d::timestamp AT TIME ZONE zone)
          AND created_at < ((d + 1)::timestamp AT TIME ZONE zone)
          AND is_digit IS NOT FALSE
        ORDER BY confidence DESC, created_at, id
        LIMIT 1;
        IF NOT FOUND THEN
            DELETE FROM prediction_daily_best WHERE day = d AND kept;
        ELSIF kept THEN
            UPDATE prediction_daily_best
            SET prediction_id = best.id, confidence = best.confidence,
                created_at = best.created_at
            WHERE day = d;
        ELSE
            INSERT INTO prediction_daily_best AS b (day, prediction_id, confidence, created_at)
            VALUES (d, best.id, best.confidence, best.created_at)
            ON CONFLICT (day) DO UPDATE
                SET prediction_id = excluded.prediction_id, confidence = excluded.confidence,
                    created_at = excluded.created_at
                WHERE (excluded.confidence, b.created_at, b.prediction_id)
                      > (b.confidence, excluded.created_at, excluded.prediction_id);
        END IF;
    END LOOP;
END
$$;

-- Statement triggers with transition tables, as in 0003. Named so they fire before the
-- roll-up triggers (alphabetical order): every writer locks this table's row first, then the
-- roll-ups', always in the same order.
--
-- An insert can only raise a day's best: the statement's best row per day is offered with one
-- upsert that replaces the kept row only when it beats it (plpgsql, so the plan is cached per
-- connection; this runs on every write).
CREATE FUNCTION prediction_daily_best_insert() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    zone text := (SELECT time_zone FROM rollup_settings);
BEGIN
    INSERT INTO prediction_daily_best AS b (day, prediction_id, confidence, created_at)
    SELECT DISTINCT ON (1) (n.created_at AT TIME ZONE zone)::date, n.id, n.confidence,
           n.created_at
    FROM new_rows AS n
    WHERE n.is_digit IS NOT FALSE
    ORDER BY 1, n.confidence DESC, n.created_at, n.id
    ON CONFLICT (day) DO UPDATE
        SET prediction_id = excluded.prediction_id, confidence = excluded.confidence,
            created_at = excluded.created_at
        WHERE (excluded.confidence, b.created_at, b.prediction_id)
              > (b.confidence, excluded.created_at, excluded.prediction_id);
    RETURN NULL;
END
$$;

-- A delete, or an update of created_at, confidence or is_digit (a manual fix), may lower a
-- day's best or move a row to another day: those days are recounted. Feedback, dropping a
-- drawing and an idempotent re-insert change none of these columns and cost nothing here.
CREATE FUNCTION prediction_daily_best_change() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    zone text := (SELECT time_zone FROM rollup_settings);
    stale date[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT array_agg(b.day) INTO stale
        FROM prediction_daily_best AS b JOIN old_rows AS o ON o.id = b.prediction_id;
    ELSE
        SELECT array_agg(c.day) INTO stale
        FROM old_rows AS o
        JOIN new_rows AS nw ON nw.id = o.id
        CROSS JOIN LATERAL (VALUES ((o.created_at AT TIME ZONE zone)::date),
                                   ((nw.created_at AT TIME ZONE zone)::date)) AS c(day)
        WHERE (o.created_at, o.confidence, o.is_digit)
              IS DISTINCT FROM (nw.created_at, nw.confidence, nw.is_digit);
    END IF;
    IF stale IS NOT NULL THEN
        PERFORM prediction_daily_best_recount(stale, zone);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER prediction_best_insert AFTER INSERT ON predictions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION prediction_daily_best_insert();
CREATE TRIGGER prediction_best_update AFTER UPDATE ON predictions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION prediction_daily_best_change();
CREATE TRIGGER prediction_best_delete AFTER DELETE ON predictions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION prediction_daily_best_change();

CREATE OR REPLACE FUNCTION prediction_rollup_truncate() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    TRUNCATE prediction_totals, prediction_daily, prediction_daily_best;
    RETURN NULL;
END
$$;

-- The daily best, counted from the table with days in `zone` (the rebuild, and this migration).
CREATE FUNCTION prediction_daily_best_rebuild(zone text) RETURNS void
    LANGUAGE sql
AS $$
    DELETE FROM prediction_daily_best;
    INSERT INTO prediction_daily_best (day, prediction_id, confidence, created_at)
    SELECT DISTINCT ON (1) (created_at AT TIME ZONE zone)::date, id, confidence, created_at
    FROM predictions
    WHERE is_digit IS NOT FALSE
    ORDER BY 1, confidence DESC, created_at, id;
$$;

-- The rebuild of 0003 (time-zone change, `rebuild-rollup`) now recounts the daily best too.
CREATE OR REPLACE FUNCTION prediction_rollup_rebuild(zone text) RETURNS bigint
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
    PERFORM prediction_daily_best_rebuild(zone);
    -- Fresh planner statistics now, not when autovacuum gets round to it: without them a
    -- freshly built daily roll-up is read with a sequential scan.
    ANALYZE prediction_totals, prediction_daily, prediction_daily_best;
    SELECT coalesce(sum(n), 0) INTO counted FROM prediction_totals;
    RETURN counted;
END
$$;

SELECT prediction_daily_best_rebuild(time_zone) FROM rollup_settings;
