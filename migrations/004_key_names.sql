-- Key names. pgbaton.KeyName is a one-way hash, so the processes that lock
-- by name record the names they use here (at most once per name, process and
-- hour, off the lock path), and `pgbaton locks` shows locks by name.
-- Rows not seen for the retention (30 days) are pruned by the writers.
CREATE TABLE IF NOT EXISTS {{schema}}.key_names (
    -- 'int8' (pg_locks.objsubid 1) or 'pair' (objsubid 2).
    form       text NOT NULL CHECK (form IN ('int8', 'pair')),
    -- The int8 key; for pairs a << 32 | b, as pgbaton.Key.ID.
    key_id     bigint NOT NULL,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 1024),
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    -- The instance (Config.InstanceName) that last wrote the row.
    instance   text NOT NULL DEFAULT '',
    PRIMARY KEY (key_id, form, name)
);

CREATE INDEX IF NOT EXISTS key_names_last_seen ON {{schema}}.key_names (last_seen);
