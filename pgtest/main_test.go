package pgtest_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/pgbaton/pgbaton/pgtest"
)

// helperEnv selects a TestHelperProcess mode in a re-executed test binary.
const helperEnv = "PGTEST_HELPER_MODE"

func TestMain(m *testing.M) {
	code := pgtest.Run(m, pgtest.Options{})
	if code == 0 && os.Getenv(helperEnv) == "" {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// testCtx returns a context bounded by d and cancelled at test end.
func testCtx(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// connect opens a pgx connection closed at test end.
func connect(t testing.TB, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %q: %v", dsn, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn.Close(ctx)
	})
	return conn
}

// connectApp is connect with an application_name.
func connectApp(t testing.TB, ctx context.Context, dsn, app string) *pgx.Conn {
	t.Helper()
	return connect(t, ctx, dsn+" application_name="+app)
}

// queryInt runs a query returning one integer.
func queryInt(t testing.TB, ctx context.Context, conn *pgx.Conn, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// startCluster starts a private cluster closed at test end.
func startCluster(t testing.TB, opts pgtest.Options) *pgtest.Cluster {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	c, err := pgtest.Start(testCtx(t, time.Minute), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}
