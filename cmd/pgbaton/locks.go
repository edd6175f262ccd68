package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/inspect"
)

func init() {
	register(&command{
		Name:    "locks",
		Summary: "who holds the lock: every advisory lock of the database, by name, classified",
		Run:     runLocks,
	})
}

const locksDescription = `Shows every advisory lock of the database, pgbaton's or not: per key its
name (from pgbaton's name registry, periodic's jobs, or --name), holders
(pid, instance or application, client, state, scope, held since when
known) and waiters in queue order with whom they wait behind, and a class:

  ok                   held, nothing looks wrong
  waiting              someone waits for the key
  idle-in-transaction  the holder sits idle in a transaction holding the lock
  stale-holder         a pgbaton lock connection stopped heartbeating
  leaked               a session lock on a non-pgbaton session idle for --stuck-after

For a leaked holder it prints the SELECT pg_terminate_backend(pid) that would
free the lock. It never runs it.

Connection: --dsn, else $DATABASE_URL, else the PG* variables as psql reads
them. The role sees every lock; it needs pg_read_all_stats (or to be the
holders' role) to see other roles' sessions.

Exit status: 0 on success; 1 when the snapshot failed (stderr says why);
2 for a bad command line. With --check: 0 ok, 1 warning (idle-in-transaction
holder, a wait over --long-wait-after), 2 critical (leaked or stale holder, a
wait over --stuck-after), 3 when the check could not run. Findings go to
stdout, errors to stderr; no password is ever printed.

Examples:
  pgbaton locks
  pgbaton locks --key incident.dedupe-open-for-system:42
  pgbaton locks --json --watch 2s > locks.ndjson
  pgbaton locks --check --stuck-after 10m   # for a monitoring probe`

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func runLocks(ctx context.Context, out *output, args []string) error {
	fs := newFlagSet(out, "locks", "[flags]", locksDescription)
	cf := addConnFlags(fs)
	var o inspect.Options
	var names stringList
	asJSON := fs.Bool("json", false, fmt.Sprintf("print the snapshot as JSON (schema version %d; one object per line under --watch)", inspect.Version))
	watch := fs.Duration("watch", 0, "take a snapshot every interval until interrupted (0: once)")
	key := fs.String("key", "", "show only this key: a name (also used to name it), or int8:<id> / pair:<a>,<b>")
	check := fs.Bool("check", false, "grade the snapshot and exit 0 ok, 1 warning, 2 critical, 3 unknown")
	fs.Var(&names, "name", "a key name to recognise (repeatable), for locks pgbaton has not recorded")
	fs.StringVar(&o.Schema, "schema", pgbaton.DefaultSchema, "pgbaton's schema (name registry, periodic jobs)")
	fs.DurationVar(&o.StuckAfter, "stuck-after", 5*time.Minute, "an idle non-pgbaton session holding a session lock this long is leaked; a wait this long is stuck")
	fs.DurationVar(&o.StaleAfter, "stale-after", 0, "a pgbaton lock connection silent this long is a stale holder (default 5 × --heartbeat)")
	fs.DurationVar(&o.HeartbeatInterval, "heartbeat", pgbaton.DefaultHeartbeatInterval, "the lockers' Config.HeartbeatInterval")
	fs.DurationVar(&o.IdleInTransactionAfter, "idle-tx-after", 10*time.Second, "a holder idle in a transaction this long is idle-in-transaction")
	fs.DurationVar(&o.LongWaitAfter, "long-wait-after", 30*time.Second, "a wait this long is a warning under --check")
	if err := parseFlags(fs, args); err != nil {
		if *check && !errors.Is(err, flag.ErrHelp) {
			return &exitError{code: 3, err: err}
		}
		return err
	}
	if *check && *watch > 0 {
		return usagef("--check takes one snapshot; drop --watch")
	}
	if *watch < 0 {
		return usagef("--watch %s: use a positive interval, or 0 for once", *watch)
	}
	o.Names = names
	if *key != "" && !strings.HasPrefix(*key, "int8:") && !strings.HasPrefix(*key, "pair:") {
		o.Names = append(o.Names, *key)
	}
	fail := func(err error) error {
		if *check {
			return &exitError{code: 3, err: err}
		}
		return err
	}
	conn, err := cf.connect(ctx, "locks")
	if err != nil {
		return fail(err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx) // the output is complete; a failed goodbye changes nothing
	}()
	enc := json.NewEncoder(out.Stdout)
	if *watch == 0 {
		enc.SetIndent("", "  ")
	}
	for {
		sctx, cancel := context.WithTimeout(ctx, cf.timeout)
		s, err := inspect.Take(sctx, conn, o)
		cancel()
		if err != nil {
			return fail(redactErr(err, string(cf.connString()), ""))
		}
		if *key != "" {
			s = s.Filter(*key)
		}
		if *asJSON {
			err = enc.Encode(s)
		} else {
			err = s.WriteTable(out.Stdout)
		}
		if err != nil {
			return fail(err)
		}
		if *check {
			level, _ := s.Check()
			if level == inspect.CheckOK {
				return nil
			}
			return &exitError{code: level}
		}
		if *watch == 0 {
			return nil
		}
		if !*asJSON {
			printf(out.Stdout, "\n")
		}
		t := time.NewTimer(*watch)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil // interrupted between snapshots: a normal end of --watch
		case <-t.C:
		}
	}
}
