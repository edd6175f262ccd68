package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
)

// schema is the service's own tables: the seed's audit records with their
// integrity-hash state, users and their activation e-mails, and the tables
// the retention job trims.
const schema = `
CREATE TABLE IF NOT EXISTS audit_records (
	id            bigserial PRIMARY KEY,
	txn_id        text NOT NULL,
	payload       jsonb NOT NULL,
	created_at    timestamptz NOT NULL DEFAULT now(),
	hash_status   text NOT NULL DEFAULT 'pending' CHECK (hash_status IN ('pending', 'complete', 'failed')),
	hash          text,
	hash_attempts integer NOT NULL DEFAULT 0,
	hashed_at     timestamptz,
	hashed_by     text
);
CREATE INDEX IF NOT EXISTS audit_records_pending ON audit_records (id) WHERE hash_status = 'pending';

CREATE TABLE IF NOT EXISTS users (
	id           bigserial PRIMARY KEY,
	email        text NOT NULL UNIQUE,
	created_at   timestamptz NOT NULL DEFAULT now(),
	activated_at timestamptz,
	drip_stage   integer NOT NULL DEFAULT 0,
	last_drip_at timestamptz
);
CREATE TABLE IF NOT EXISTS email_outbox (
	id         bigserial PRIMARY KEY,
	user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
	template   text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	sent_at    timestamptz,
	UNIQUE (user_id, template)
);
CREATE TABLE IF NOT EXISTS sessions (
	id         text PRIMARY KEY,
	user_id    bigint,
	expires_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_limit_counters (
	key          text NOT NULL,
	window_start timestamptz NOT NULL,
	count        integer NOT NULL DEFAULT 0,
	PRIMARY KEY (key, window_start)
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
	key        text PRIMARY KEY,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS capabilities (
	name    text PRIMARY KEY,
	url     text NOT NULL,
	enabled boolean NOT NULL DEFAULT true
);
CREATE TABLE IF NOT EXISTS test_results (
	id         bigserial PRIMARY KEY,
	capability text NOT NULL,
	tick       timestamptz NOT NULL,
	token      bigint NOT NULL,
	instance   text NOT NULL,
	http_status integer,
	ok         boolean NOT NULL,
	error      text,
	latency_ms integer,
	created_at timestamptz NOT NULL DEFAULT now(),
	UNIQUE (capability, tick)
);
`

// migrate creates pgbaton's tables and the service's, once, whichever
// instance gets there first.
func migrate(ctx context.Context, locker *pgbaton.Locker, pool *pgxpool.Pool) error {
	if err := locker.Migrate(ctx); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := pgbaton.LockTx(ctx, tx, pgbaton.KeyName("seedjobs.schema")); err != nil {
			return fmt.Errorf("schema lock: %w", err)
		}
		if _, err := tx.Exec(ctx, schema); err != nil {
			return fmt.Errorf("creating the schema: %w", err)
		}
		return nil
	})
}
