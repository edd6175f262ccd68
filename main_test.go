package pgbaton

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/internal/testmain"
	"github.com/pgbaton/pgbaton/pgtest"
)

func TestMain(m *testing.M) {
	// Examples read os.Getenv("DATABASE_URL"), as the programs they show do.
	os.Exit(testmain.Run(m, pgtest.Options{DSNEnv: EnvDatabaseURL}))
}

// quietLogger discards log output unless PGBATON_TEST_LOG=1.
func quietLogger() *slog.Logger {
	if os.Getenv("PGBATON_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newTestLocker opens a Locker on dsn with test-friendly defaults, closed at
// the end of the test.
func newTestLocker(t testing.TB, dsn string, mod ...func(*Config)) *Locker {
	t.Helper()
	cfg := Config{ConnString: dsn, Logger: quietLogger(), InstanceName: "test"}
	for _, f := range mod {
		f(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// fastLoss makes loss detection quick for fault tests: heartbeat 100ms,
// lease bound 600ms, server release after 2s.
func fastLoss(c *Config) {
	c.HeartbeatInterval = 100 * time.Millisecond
	c.LeaseTimeout = 600 * time.Millisecond
	c.KeepaliveIdle = time.Second
	c.KeepaliveInterval = time.Second
	c.KeepaliveCount = 1
	c.TCPUserTimeout = 2 * time.Second
	c.ClientConnectionCheckInterval = 200 * time.Millisecond
}

// conn returns the lock connection a lease lives on (test only).
func (ls *Lease) conn() *lockConn {
	switch b := ls.b.(type) {
	case connBackend:
		return b.c
	case xactBackend:
		return b.c
	}
	return nil
}
