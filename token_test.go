package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbaton/pgbaton/pgtest"
)

// tokenChildEnv makes a re-executed test binary a token-drawing process
// (see tokenChild); it is handled in init, before TestMain starts a
// cluster of its own.
const tokenChildEnv = "PGBATON_TOKEN_CHILD"

func init() {
	if v := os.Getenv(tokenChildEnv); v != "" {
		os.Exit(tokenChild(v))
	}
}

// tokenChild takes the key n times, recording each token while holding the
// lock. Its argument is "name|n|dsn".
func tokenChild(arg string) int {
	parts := strings.SplitN(arg, "|", 3)
	n, _ := strconv.Atoi(parts[1])
	name, dsn := parts[0], parts[2]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := New(ctx, Config{ConnString: dsn, InstanceName: name, Logger: quietLogger()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer l.Close()
	rec, err := pgx.Connect(ctx, dsn)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer rec.Close(context.Background())
	for i := range n {
		acquire := l.Acquire
		if i%2 == 1 {
			acquire = l.TryAcquire
		}
		ls, err := acquire(ctx, KeyName("token/processes"), Wait(30*time.Second))
		if err != nil {
			if i%2 == 1 && isNotAcquired(err) {
				continue // a busy try: fine, try again
			}
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		tok, ok := ls.Token()
		// Recorded while the lock is held: the table's order is the grant
		// order.
		_, err = rec.Exec(ctx, "INSERT INTO grants (proc, token, has_token) VALUES ($1, $2, $3)", name, tok, ok)
		if rerr := ls.Release(); err == nil {
			err = rerr
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

func isNotAcquired(err error) bool {
	var na *NotAcquiredError
	return errors.As(err, &na)
}

// TestTokenMonotonicAcrossProcesses: three processes take one key over and
// over (blocking waits and tries); every holder records its token while it
// holds the lock. In grant order the tokens strictly increase.
func TestTokenMonotonicAcrossProcesses(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dsn := pgtest.Shared().NewDatabase(t)
	c := adminConn(t, dsn)
	if err := Migrate(ctx, c, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "CREATE TABLE grants (seq bigserial PRIMARY KEY, proc text, token bigint, has_token bool)"); err != nil {
		t.Fatal(err)
	}
	const procs, each = 3, 40
	cmds := make([]*exec.Cmd, procs)
	outs := make([]*strings.Builder, procs)
	for i := range cmds {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=p%d|%d|%s", tokenChildEnv, i, each, dsn))
		outs[i] = new(strings.Builder)
		cmd.Stdout, cmd.Stderr = outs[i], outs[i]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[i] = cmd
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("process %d: %v\n%s", i, err, outs[i])
		}
	}
	rows, err := c.Query(ctx, "SELECT proc, token, has_token FROM grants ORDER BY seq")
	if err != nil {
		t.Fatal(err)
	}
	type grant struct {
		proc  string
		token int64
		ok    bool
	}
	gs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (grant, error) {
		var g grant
		err := r.Scan(&g.proc, &g.token, &g.ok)
		return g, err
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i, g := range gs {
		seen[g.proc]++
		if !g.ok {
			t.Fatalf("grant %d (%s) had no token on a migrated database", i, g.proc)
		}
		if i > 0 && g.token <= gs[i-1].token {
			t.Fatalf("grant %d: %s got token %d after %s got %d", i, g.proc, g.token, gs[i-1].proc, gs[i-1].token)
		}
	}
	if len(seen) != procs || len(gs) < procs*each/2 {
		t.Fatalf("grants per process %v (%d in all): the processes did not all take the key", seen, len(gs))
	}
}

// TestTokenPerKeyInProcess: tokens increase across tries, blocking waits,
// shared and exclusive grants, two Lockers, and pair keys; two shared
// holders at once get distinct tokens.
func TestTokenPerKeyInProcess(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dsn := pgtest.Shared().NewDatabase(t)
	if err := Migrate(ctx, adminConn(t, dsn), ""); err != nil {
		t.Fatal(err)
	}
	a, b := newTestLocker(t, dsn), newTestLocker(t, dsn)
	for _, key := range []Key{KeyName("token/one"), KeyInt64(77), KeyPair(3, -4)} {
		var last int64
		for i := range 12 {
			l := a
			if i%3 == 1 {
				l = b
			}
			var ls *Lease
			var err error
			switch i % 4 {
			case 0:
				ls, err = l.TryAcquire(ctx, key)
			case 1:
				ls, err = l.Acquire(ctx, key, Wait(5*time.Second))
			case 2:
				ls, err = l.Acquire(ctx, key, Shared, Wait(5*time.Second))
			case 3:
				ls, err = l.TryAcquire(ctx, key, Shared)
			}
			if err != nil {
				t.Fatalf("%s grant %d: %v", key, i, err)
			}
			tok, ok := ls.Token()
			if !ok || tok <= last {
				t.Fatalf("%s grant %d: token %d (ok %v) after %d", key, i, tok, ok, last)
			}
			last = tok
			if err := ls.Release(); err != nil {
				t.Fatal(err)
			}
		}
	}
	s1, err := a.TryAcquire(ctx, KeyName("token/shared"), Shared)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Release()
	s2, err := b.TryAcquire(ctx, KeyName("token/shared"), Shared)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Release()
	t1, _ := s1.Token()
	t2, _ := s2.Token()
	if t1 == t2 || t2 < t1 {
		t.Fatalf("two shared holders: tokens %d and %d; want distinct, in grant order", t1, t2)
	}
}

// TestTokenWithoutSchema: without the schema leases work and say they have
// no token.
func TestTokenWithoutSchema(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	l := newTestLocker(t, pgtest.Shared().NewDatabase(t))
	for _, acquire := range []func(context.Context, Key, ...Option) (*Lease, error){l.TryAcquire, l.Acquire} {
		ls, err := acquire(ctx, KeyName("token/none"), Wait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if tok, ok := ls.Token(); ok || tok != 0 {
			t.Fatalf("lease without the schema: Token() = %d, %v; want 0, false", tok, ok)
		}
		if err := ls.Release(); err != nil {
			t.Fatal(err)
		}
	}
	err := l.WithLock(ctx, KeyName("token/none"), func(context.Context) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
}

// TestTokenSurvivesRestartAndCrash: on a cluster of its own whose WAL writer
// waits 10s before writing asynchronous commits, tokens drawn before a
// restart and before a crash are never handed out again. The control shows
// that a sequence drawn with synchronous_commit=off does go back after a
// crash: lock sessions draw tokens with synchronous_commit=on for this.
func TestTokenSurvivesRestartAndCrash(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"wal_writer_delay": "10000ms"}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dsn := c.DSN("postgres")
	admin := func() *pgx.Conn {
		// The server may still be recovering: polling external state.
		deadline := time.Now().Add(30 * time.Second)
		for {
			conn, err := pgx.Connect(ctx, dsn)
			if err == nil {
				t.Cleanup(func() { _ = conn.Close(context.Background()) })
				return conn
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := Migrate(ctx, admin(), ""); err != nil {
		t.Fatal(err)
	}
	l := newTestLocker(t, dsn)
	key := KeyName("token/durable")
	take := func() int64 {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			ls, err := l.TryAcquire(ctx, key)
			if err == nil {
				tok, ok := ls.Token()
				if rerr := ls.Release(); rerr != nil {
					t.Fatal(rerr)
				}
				if !ok {
					t.Fatal("no token on a migrated database")
				}
				return tok
			}
			if time.Now().After(deadline) { // the server is restarting
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var max int64
	for range 40 { // more than the sequence's 32 values logged ahead
		max = take()
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := take(); got <= max {
		t.Fatalf("after a restart: token %d, but %d was handed out before", got, max)
	}
	for round := range 3 {
		if _, err := admin().Exec(ctx, "CHECKPOINT"); err != nil {
			t.Fatal(err)
		}
		before := take() // the first draw after a checkpoint writes sequence WAL
		if err := c.Crash(ctx); err != nil {
			t.Fatal(err)
		}
		if got := take(); got <= before {
			t.Fatalf("round %d: after a crash: token %d, but %d was handed out before it", round, got, before)
		}
	}

	// Control: the same draw on a session with synchronous_commit=off.
	wentBack := 0
	for range 3 {
		raw := admin()
		if _, err := raw.Exec(ctx, "SET synchronous_commit = off; CHECKPOINT"); err != nil {
			t.Fatal(err)
		}
		var v1, v2 int64
		if err := raw.QueryRow(ctx, "SELECT nextval('pgbaton.fence_token')").Scan(&v1); err != nil {
			t.Fatal(err)
		}
		if err := c.Crash(ctx); err != nil {
			t.Fatal(err)
		}
		if err := admin().QueryRow(ctx, "SELECT nextval('pgbaton.fence_token')").Scan(&v2); err != nil {
			t.Fatal(err)
		}
		if v2 <= v1 {
			wentBack++
		}
		t.Logf("control: synchronous_commit=off drew %d before the crash and %d after", v1, v2)
	}
	if wentBack == 0 {
		t.Fatal("control: the sequence never went back after a crash with synchronous_commit=off; the test does not exercise durability")
	}
}

// tokWrites counts a connection's socket writes: one per round trip.
type tokWrites struct {
	net.Conn
	n *atomic.Int64
}

func (c tokWrites) Write(b []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(b)
}

// TestTokenNoExtraRoundTrip: with or without the schema, TryAcquire and
// Release are one round trip each: the token rides in the lock statement.
func TestTokenNoExtraRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	for _, migrated := range []bool{false, true} {
		dsn := pgtest.Shared().NewDatabase(t)
		if migrated {
			if err := Migrate(ctx, adminConn(t, dsn), ""); err != nil {
				t.Fatal(err)
			}
		}
		cc, err := pgconn.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		writes := new(atomic.Int64)
		dial := cc.DialFunc
		cc.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return tokWrites{conn, writes}, nil
		}
		l := newTestLocker(t, "", func(c *Config) { c.ConnConfig = cc; c.MaxConns = 1 })
		minTry, minRel := int64(1<<30), int64(1<<30)
		for range 20 {
			w0 := writes.Load()
			ls, err := l.TryAcquire(ctx, KeyName("token/rtt"))
			if err != nil {
				t.Fatal(err)
			}
			w1 := writes.Load()
			if _, ok := ls.Token(); ok != migrated {
				t.Fatalf("migrated=%v but Token() ok=%v", migrated, ok)
			}
			if err := ls.Release(); err != nil {
				t.Fatal(err)
			}
			// A heartbeat can fall into a window; the least is the cost.
			minTry, minRel = min(minTry, w1-w0), min(minRel, writes.Load()-w1)
		}
		if minTry != 1 || minRel != 1 {
			t.Fatalf("migrated=%v: TryAcquire took %d writes, Release %d; want one round trip each", migrated, minTry, minRel)
		}
	}
}
