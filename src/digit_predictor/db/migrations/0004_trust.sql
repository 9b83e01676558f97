-- Whether a drawing looked like a digit at all (issue 12). Nullable: rows stored before the
-- non-digit detector existed have neither.
ALTER TABLE predictions
    ADD COLUMN is_digit boolean,
    -- P(not a digit) from the detector, 0..1; higher = less like a digit.
    ADD COLUMN ood_score double precision CHECK (ood_score BETWEEN 0 AND 1);
