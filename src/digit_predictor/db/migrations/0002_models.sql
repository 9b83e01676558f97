-- The model registry: every model version the api may serve, with its weights, so that every
-- api process and replica, on any machine, loads the same champion without a shared volume.
CREATE TABLE models (
    version         text PRIMARY KEY CHECK (version <> ''),
    created_at      timestamptz NOT NULL DEFAULT now(),
    parent_version  text REFERENCES models (version),
    arch            text NOT NULL CHECK (arch <> ''),
    sha256          text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- A torch state dict (torch.save), loaded with weights_only so it can never run code.
    weights         bytea NOT NULL CHECK (octet_length(weights) > 0),
    -- Training data counts, the gate table, figures.
    card            jsonb NOT NULL DEFAULT '{}'::jsonb,
    status          text NOT NULL DEFAULT 'candidate'
                    CHECK (status IN ('candidate', 'champion', 'retired', 'rejected')),
    promoted_at     timestamptz,
    reason          text,
    -- Taken out of service by a rollback: a later rollback never brings it back.
    rolled_back     boolean NOT NULL DEFAULT false,
    CONSTRAINT champion_was_promoted CHECK (status <> 'champion' OR promoted_at IS NOT NULL)
);

-- At most one champion, whatever races between promotions.
CREATE UNIQUE INDEX models_one_champion ON models ((true)) WHERE status = 'champion';
CREATE INDEX models_newest_first ON models (created_at DESC);
