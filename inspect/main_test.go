package inspect_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton/internal/testmain"
	"github.com/pgbaton/pgbaton/pgtest"
)

func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newDB returns the name, TCP DSN and an admin connection of a fresh
// database.
func newDB(t testing.TB) (name, dsn string, admin *pgx.Conn) {
	t.Helper()
	c := pgtest.Shared()
	name, _ = c.NewDB(t)
	dsn = c.TCPDSN(name)
	admin = connect(t, dsn, "inspector")
	return name, dsn, admin
}

func connect(t testing.TB, dsn, app string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = app
	c, err := pgx.ConnectConfig(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// waitFor polls the server until cond holds, bounded.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waiting reports whether pid waits for an advisory lock.
func waiting(t testing.TB, admin *pgx.Conn, pid uint32) bool {
	var n int
	if err := admin.QueryRow(testCtx(t), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND pid = $1`, int(pid)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}
