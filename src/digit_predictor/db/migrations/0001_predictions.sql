-- Every prediction the api makes, the drawing as submitted, and the person's correction.
CREATE TABLE predictions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Written by the api; lets a queued write be retried without creating a second row.
    request_id      uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    predicted_digit smallint NOT NULL CHECK (predicted_digit BETWEEN 0 AND 9),
    confidence      double precision NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    probabilities   double precision[] NOT NULL CHECK (
        array_ndims(probabilities) = 1
        AND cardinality(probabilities) = 10
        AND 0 <= ALL (probabilities) AND 1 >= ALL (probabilities)
        AND array_position(probabilities, NULL) IS NULL
    ),
    true_digit      smallint CHECK (true_digit BETWEEN 0 AND 9),
    feedback_at     timestamptz,
    image_data      bytea NOT NULL CHECK (octet_length(image_data) > 0),
    model_version   text NOT NULL CHECK (model_version <> ''),
    latency_ms      double precision CHECK (latency_ms >= 0),
    source          text CHECK (char_length(source) <= 64),
    CONSTRAINT feedback_has_time CHECK ((true_digit IS NULL) = (feedback_at IS NULL))
);

CREATE INDEX predictions_newest_first ON predictions (created_at DESC, id DESC);
