-- Job definitions (package periodic): what every instance that schedules a
-- job must agree on (schedule, policies, timeout, mode), so that replicas
-- running different definitions during a rolling deploy are reported
-- instead of the last registration silently winning.
--
-- definition_*: the definition registered by the instance that added the
-- job last (hash, description, instance, database time).
-- drift_*: the latest different definition an instance reported running
-- while another one was registered; cleared when that instance registers
-- again.
ALTER TABLE {{schema}}.periodic_jobs
    ADD COLUMN IF NOT EXISTS definition_hash     text,
    ADD COLUMN IF NOT EXISTS definition          text,
    ADD COLUMN IF NOT EXISTS definition_instance text,
    ADD COLUMN IF NOT EXISTS definition_at       timestamptz,
    ADD COLUMN IF NOT EXISTS drift_hash          text,
    ADD COLUMN IF NOT EXISTS drift_definition    text,
    ADD COLUMN IF NOT EXISTS drift_instance      text,
    ADD COLUMN IF NOT EXISTS drift_at            timestamptz;
