-- Periodic jobs (package periodic).
--
-- periodic_jobs holds one row per job name: the cluster-wide claim cursor.
-- Every tick up to last_tick has exactly one row in periodic_runs (a run, or
-- a skipped or missed range); claims advance last_tick under the row's lock,
-- so a tick can never be claimed twice, whatever the instances' clocks.
CREATE TABLE IF NOT EXISTS {{schema}}.periodic_jobs (
    job        text PRIMARY KEY CHECK (length(job) BETWEEN 1 AND 200),
    schedule   text NOT NULL,
    -- When the job was first registered: earlier ticks are not its own.
    floor_tick timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The latest tick recorded in periodic_runs (NULL before the first).
    last_tick  timestamptz,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- periodic_runs is the history: one row per tick (job, tick), or per range
-- of consecutive ticks that were skipped or missed (tick .. through_tick,
-- ticks of them). Rows are pruned after the scheduler's retention, except
-- running rows and each job's latest success.
CREATE TABLE IF NOT EXISTS {{schema}}.periodic_runs (
    job          text NOT NULL,
    tick         timestamptz NOT NULL,
    through_tick timestamptz NOT NULL,
    ticks        bigint NOT NULL DEFAULT 1 CHECK (ticks >= 1),
    status       text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned', 'skipped', 'missed')),
    -- Why it ran (scheduled, late, backfill, start) or why not (overlap,
    -- missed).
    kind         text NOT NULL,
    instance     text NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    duration     interval GENERATED ALWAYS AS (finished_at - started_at) STORED,
    error        text,
    -- Fencing token of the run (strictly increasing per job).
    token        bigint,
    -- The advisory lock (int8 key) the run holds while it runs, so that a
    -- running row whose lock is gone can be recognised as abandoned.
    lock_key     bigint,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job, tick),
    CHECK (through_tick >= tick)
);

CREATE INDEX IF NOT EXISTS periodic_runs_running ON {{schema}}.periodic_runs (job) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS periodic_runs_success ON {{schema}}.periodic_runs (job, finished_at) WHERE status = 'succeeded';
CREATE INDEX IF NOT EXISTS periodic_runs_tick ON {{schema}}.periodic_runs (tick);
