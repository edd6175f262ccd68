package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The name registry. [KeyName] is a one-way hash, so a lock seen in pg_locks
// says nothing about what it guards. Lockers and the transaction helpers
// therefore record the names they lock in <schema>.key_names (migration
// 004), which package inspect and `pgbaton locks` read.
//
// Off the lock path: noting a name is an in-memory map lookup (no round
// trip, no allocation once the name is known); a Locker writes the names
// noted since its last write in one statement, at most every
// NameFlushInterval, on a short-lived connection of its own
// (application_name "pgbaton:<instance>:names") that it opens only when
// there is something to write and closes right after. Each name is written at
// most once per process per NameRefreshInterval; memory is bounded
// (maxPendingNames waiting to be written, maxSeenNames remembered; past them,
// names are dropped or re-noted, never unbounded). Rows whose last_seen is
// older than NameRetention are deleted by the writers.
const (
	NameFlushInterval   = 2 * time.Second
	NameRefreshInterval = time.Hour
	NameRetention       = 30 * 24 * time.Hour

	maxPendingNames = 4096
	maxSeenNames    = 65536
	// nameRetryAfter is how long a Locker waits before writing again after
	// the table was missing or not writable.
	nameRetryAfter = time.Minute
)

type seenName struct {
	name string
	id   ident
}

// nameSet is a bounded set of names noted since they were last written.
type nameSet struct {
	epoch atomic.Int64 // bumped every NameRefreshInterval: names are noted again

	mu      sync.RWMutex
	seen    map[seenName]int64 // name → epoch it was last queued in
	pending []Key
	dropped int64
}

// note queues k's name unless it was queued in this epoch. It reports
// whether k was queued.
func (s *nameSet) note(k Key) bool {
	if k.name == "" || k.space == spaceInvalid {
		return false
	}
	sk := seenName{k.name, k.ident()}
	e := s.epoch.Load()
	s.mu.RLock()
	last, ok := s.seen[sk]
	s.mu.RUnlock()
	if ok && last == e {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if last, ok := s.seen[sk]; ok && last == e {
		return false
	}
	if s.seen == nil || len(s.seen) >= maxSeenNames {
		s.seen = make(map[seenName]int64)
	}
	if len(s.pending) >= maxPendingNames {
		s.dropped++
		return false
	}
	s.seen[sk] = e
	s.pending = append(s.pending, k)
	return true
}

// take returns and clears the pending names.
func (s *nameSet) take() []Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pending
	s.pending = nil
	return p
}

// forget makes keys notable again (their write failed).
func (s *nameSet) forget(keys []Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		delete(s.seen, seenName{k.name, k.ident()})
	}
}

// txNames holds the names used by the transaction helpers (LockTx and the
// others), which have no Locker: every Locker of the process writes them
// along with its own, and [WriteNames] writes them on demand.
var txNames nameSet

// noteTxName is the transaction helpers' hook.
func noteTxName(k Key) {
	if !namesDisabled.Load() {
		txNames.note(k)
	}
}

// namesDisabled turns the registry off (benchmarks compare with and without).
var namesDisabled atomic.Bool

// lockerNames is a Locker's part of the registry: its pending names and its
// writer goroutine, started at the first name and stopped by Close.
type lockerNames struct {
	set nameSet

	mu      sync.Mutex
	started bool
	closed  bool
	stop    chan struct{}
	done    chan struct{}
}

// noteName records key's name for the registry: the hook in grant. It costs
// a map lookup when the name is already known.
func (l *Locker) noteName(key Key) {
	if namesDisabled.Load() || !l.names.set.note(key) {
		return
	}
	n := &l.names
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started || n.closed {
		return
	}
	n.started = true
	n.stop, n.done = make(chan struct{}), make(chan struct{})
	go l.nameWriter(n.stop, n.done)
}

// nameLastFlush bounds the writer's last flush at Close.
const nameLastFlush = 200 * time.Millisecond

// closeNames stops the writer after a last write (bounded by
// nameLastFlush): the hook in Close, run alongside the closing of the lock
// connections.
func (l *Locker) closeNames() {
	n := &l.names
	n.mu.Lock()
	n.closed = true
	started := n.started
	n.mu.Unlock()
	if !started {
		return
	}
	select {
	case <-n.stop:
	default:
		close(n.stop)
	}
	<-n.done
}

func (l *Locker) nameWriter(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(NameFlushInterval)
	defer t.Stop()
	epochAt := time.Now()
	var retryAt, pruneAt time.Time
	var warned bool
	write := func(bound time.Duration) {
		if time.Since(epochAt) >= NameRefreshInterval {
			epochAt = time.Now()
			l.names.set.epoch.Add(1)
			txNames.epoch.Add(1)
		}
		if time.Now().Before(retryAt) {
			return
		}
		keys := append(l.names.set.take(), txNames.take()...)
		if len(keys) == 0 {
			return
		}
		// Close ends a periodic flush at once (its context is the
		// Locker's); the last flush gets a context of its own.
		parent := l.closeCtx
		if bound == nameLastFlush {
			parent = context.Background()
		}
		ctx, cancel := context.WithTimeout(parent, bound)
		defer cancel()
		prune := time.Now().After(pruneAt)
		err := l.writeNames(ctx, keys, prune)
		if err == nil {
			if prune {
				pruneAt = time.Now().Add(NameRefreshInterval)
			}
			return
		}
		// Not migrated, not granted, or the server is away: try again
		// later; the names are noted again at their next use.
		l.names.set.forget(keys)
		txNames.forget(keys)
		retryAt = time.Now().Add(nameRetryAfter)
		lvl := slog.LevelDebug
		if !warned && errors.Is(err, ErrPermission) {
			lvl, warned = slog.LevelWarn, true
		}
		l.log.Log(context.Background(), lvl, "pgbaton: recording key names", "err", err, "names", len(keys))
	}
	for {
		select {
		case <-stop:
			// The last flush: short, so that Close stays bounded when the
			// server does not answer (the names are noted again by the
			// next process that uses them).
			write(nameLastFlush)
			return
		case <-t.C:
			write(l.cfg.ConnectTimeout)
		}
	}
}

// writeNames writes keys on a connection of its own.
func (l *Locker) writeNames(ctx context.Context, keys []Key, prune bool) error {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return err
	}
	cfg.Config = *l.connCfg.Copy()
	cfg.RuntimeParams["application_name"] = "pgbaton:" + l.cfg.InstanceName + ":names"
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConnect, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = conn.Close(cctx) // the write's own result is what matters
	}()
	return writeNames(ctx, conn, l.cfg.Schema, l.cfg.InstanceName, keys, prune)
}

const namesUpsert = `INSERT INTO %s.key_names AS k (form, key_id, name, instance)
SELECT f, id, n, $4 FROM unnest($1::text[], $2::int8[], $3::text[]) AS u(f, id, n)
ON CONFLICT (key_id, form, name) DO UPDATE SET last_seen = now(), instance = EXCLUDED.instance`

// Execer runs a statement: a *pgx.Conn, a *pgxpool.Pool or a pgx.Tx.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func writeNames(ctx context.Context, conn Execer, schema, instance string, keys []Key, prune bool) error {
	if schema == "" {
		schema = DefaultSchema
	}
	if !schemaRE.MatchString(schema) {
		return &ConfigError{Field: "Schema", Msg: fmt.Sprintf("%q is not a plain lower-case identifier", schema)}
	}
	q := pgx.Identifier{schema}.Sanitize()
	forms, ids, names := make([]string, 0, len(keys)), make([]int64, 0, len(keys)), make([]string, 0, len(keys))
	dedup := map[seenName]bool{}
	for _, k := range keys {
		sk := seenName{k.name, k.ident()}
		if k.name == "" || k.space == spaceInvalid || dedup[sk] {
			continue
		}
		dedup[sk] = true
		form := "int8"
		if k.space == spacePair {
			form = "pair"
		}
		forms, ids, names = append(forms, form), append(ids, k.id), append(names, k.name)
	}
	if len(names) == 0 {
		return nil
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf(namesUpsert, q), forms, ids, names, instance); err != nil {
		return namesErr(err, schema)
	}
	if prune {
		if _, err := conn.Exec(ctx, "DELETE FROM "+q+".key_names WHERE last_seen < now() - $1::interval",
			fmt.Sprintf("%d seconds", int64(NameRetention.Seconds()))); err != nil {
			return namesErr(err, schema)
		}
	}
	return nil
}

func namesErr(err error, schema string) error {
	switch sqlState(err) {
	case "42501":
		return fmt.Errorf("%w: recording key names needs GRANT USAGE ON SCHEMA %s and GRANT SELECT, INSERT, UPDATE, DELETE ON %s.key_names (see `pgbaton migrate sql`): %w",
			ErrPermission, schema, schema, err)
	case "42P01", "3F000":
		return fmt.Errorf("pgbaton: no %s.key_names table; run Migrate (or `pgbaton migrate up`) to record key names: %w", schema, err)
	}
	return fmt.Errorf("pgbaton: recording key names: %w", err)
}

// WriteNames writes the names noted by the transaction helpers of this
// process (LockTx and the others) that no Locker has written yet, plus
// names, on conn, in schema (default DefaultSchema), as instance. Processes
// that lock only through the transaction helpers call it now and then (a
// Locker does it by itself). It is one statement; conn may be a pool.
func WriteNames(ctx context.Context, conn Execer, schema, instance string, names ...string) error {
	keys := txNames.take()
	for _, n := range names {
		keys = append(keys, KeyName(n))
	}
	if err := writeNames(ctx, conn, schema, instance, keys, false); err != nil {
		txNames.forget(keys)
		return err
	}
	return nil
}
