-- Fencing tokens without a WAL flush on the grant path.
--
-- A token is (epoch << 44) | counter. The counter is an UNLOGGED sequence:
-- drawing from it writes no WAL, so a grant never waits for a disk flush
-- (nextval on a logged sequence WAL-logs every 32nd call and then forces a
-- synchronous commit). An unlogged sequence is reset after a crash and on a
-- promoted standby; the epoch, a logged row, is bumped exactly then: every
-- lock session runs fence_prepare() at connect, which, under the epoch row's
-- lock, finds the counter reset (is_called false, no draw since the reset),
-- increments the epoch, commits durably, and draws once, before any token of
-- the new epoch can be handed out. So tokens strictly increase across
-- crashes and restarts, as with the old sequence; 2^44 grants per epoch.
CREATE TABLE IF NOT EXISTS {{schema}}.fence_epoch (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    epoch bigint NOT NULL
);
CREATE UNLOGGED SEQUENCE IF NOT EXISTS {{schema}}.fence_counter AS bigint MINVALUE 1 MAXVALUE 17592186044415 NO CYCLE;

-- The first epoch starts above every token the old sequence handed out.
INSERT INTO {{schema}}.fence_epoch (epoch)
SELECT (CASE WHEN is_called THEN last_value ELSE 0 END >> 44) + 1 FROM {{schema}}.fence_token
ON CONFLICT DO NOTHING;

-- Run by every lock session before it draws a token (one round trip at
-- connect). SECURITY DEFINER so an application role needs only EXECUTE here,
-- SELECT on fence_epoch and USAGE on fence_counter.
CREATE OR REPLACE FUNCTION {{schema}}.fence_prepare() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e bigint;
    called boolean;
BEGIN
    SELECT epoch INTO e FROM {{schema}}.fence_epoch FOR UPDATE;
    SELECT is_called INTO called FROM {{schema}}.fence_counter;
    IF NOT called THEN
        UPDATE {{schema}}.fence_epoch SET epoch = epoch + 1 RETURNING epoch INTO e;
        PERFORM nextval('{{schema}}.fence_counter');
    END IF;
    RETURN e;
END
$$;

-- Draws one token. A function, not a subquery in the lock statement: the
-- statement must not name the epoch table, whose lock would then be taken at
-- executor start, before the statement's own lock_timeout applies. Here it
-- is taken after the grant, bounded like the grant. plpgsql caches its plan
-- per session.
CREATE OR REPLACE FUNCTION {{schema}}.fence_next() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN (SELECT (epoch OPERATOR(pg_catalog.<<) 44) OPERATOR(pg_catalog.|) pg_catalog.nextval('{{schema}}.fence_counter')
            FROM {{schema}}.fence_epoch);
END
$$;

-- The old sequence stays for sessions of older versions; new sessions do not
-- draw from it.
COMMENT ON SEQUENCE {{schema}}.fence_token IS 'superseded by fence_epoch and fence_counter (migration 5)';
