-- Fencing tokens without a WAL flush on the grant path.
--
-- A token is (epoch << 44) | counter. The counter is an UNLOGGED sequence:
-- drawing from it writes no WAL, so a grant never waits for a disk flush
-- (nextval on a logged sequence WAL-logs every 32nd call and then forces a
-- synchronous commit). An unlogged sequence is reset after a crash and on a
-- promoted standby; the epoch, a logged row, is bumped exactly then: every
-- lock session runs fence_prepare() at connect, which, under the epoch row's
-- lock, finds the counter reset (is_called false, no draw since the reset),
-- increments the epoch and commits durably; only then is the counter marked
-- used, and fence_next() refuses to draw from an unmarked counter, so no
-- token of the old epoch is handed out after the reset. So tokens strictly increase across
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

-- Run by every lock session at connect, and by periodic when fence_next()
-- refuses: under the epoch row's lock, if the counter was reset (is_called
-- false: nobody drew since the reset), bump the epoch. The caller commits
-- (durably: lock sessions run with synchronous_commit=on) and only then
-- marks the counter used with nextval, so that any session that sees the
-- counter used also sees the bumped epoch. SECURITY DEFINER so an application
-- role needs only EXECUTE here (PUBLIC has it), SELECT on fence_epoch and
-- SELECT and USAGE on fence_counter.
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
        -- The bump must survive a crash whatever the caller's setting.
        PERFORM pg_catalog.set_config('synchronous_commit', 'on', true);
    END IF;
    RETURN e;
END
$$;

-- Run by every lock session right after fence_prepare() has committed:
-- marks the counter used (nextval: visible to every session at once, so no
-- later fence_prepare() bumps again), then reads the epoch under a share lock
-- of its row, which waits for a bump still in flight (one that found the
-- counter unmarked just before). The epoch it returns is the last of this
-- server lifetime: the next bump needs a crash or a promotion, which ends
-- every session. So a lock session can draw tokens as (that epoch << 44) |
-- nextval(fence_counter), reading no table on the grant path.
CREATE OR REPLACE FUNCTION {{schema}}.fence_settle() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e bigint;
BEGIN
    PERFORM pg_catalog.nextval('{{schema}}.fence_counter');
    SELECT epoch INTO e FROM {{schema}}.fence_epoch FOR SHARE;
    RETURN e;
END
$$;

-- Draws one token. A function, not a subquery in the lock statement: the
-- statement must not name the epoch table, whose lock would then be taken at
-- executor start, before the statement's own lock_timeout applies; here it
-- is taken after the grant, bounded like the grant. It refuses (SQLSTATE
-- PB001) to draw from a counter reset since the last epoch bump, so no
-- session can hand out a token of the old epoch with a reset counter. The
-- check reads the counter first; the epoch is then read in a snapshot of its
-- own (a VOLATILE function's statements each take one), which sees the bump
-- that was committed before the counter was marked used. plpgsql caches its
-- plans per session.
CREATE OR REPLACE FUNCTION {{schema}}.fence_next() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    e bigint;
BEGIN
    IF NOT (SELECT is_called FROM {{schema}}.fence_counter) THEN
        RAISE EXCEPTION 'pgbaton: the fencing-token counter was reset (a crash or a promotion) and the epoch not yet bumped'
            USING ERRCODE = 'PB001', HINT = 'run SELECT {{schema}}.fence_prepare(); then SELECT nextval(''{{schema}}.fence_counter''); and draw again';
    END IF;
    SELECT epoch INTO e FROM {{schema}}.fence_epoch;
    RETURN (e OPERATOR(pg_catalog.<<) 44) OPERATOR(pg_catalog.|) pg_catalog.nextval('{{schema}}.fence_counter');
END
$$;

-- The old sequence stays for sessions of older versions; new sessions do not
-- draw from it.
COMMENT ON SEQUENCE {{schema}}.fence_token IS 'superseded by fence_epoch and fence_counter (migration 5)';
