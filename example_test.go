package pgbaton_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/pgbaton/pgbaton"
)

// The Examples read the connection string from DATABASE_URL, as a program
// would (in this package's tests, TestMain sets it to a throwaway cluster).

// New opens a Locker: its own few lock connections, separate from the
// application's pool. A bad connection string, a pooler or a hot standby
// fails here, with a typed error, rather than at the first lock.
func ExampleNew() {
	ctx := context.Background()
	locker, err := pgbaton.New(ctx, pgbaton.Config{
		ConnString:   os.Getenv("DATABASE_URL"), // directly to PostgreSQL, not through PgBouncer
		MaxConns:     4,                         // dedicated lock connections
		InstanceName: "api-1",                   // shown in pg_stat_activity
	})
	if err != nil {
		fmt.Println("cannot open the Locker:", err)
		return
	}
	defer locker.Close()
	fmt.Println("lock connections at most:", locker.Config().MaxConns)
	// Output:
	// lock connections at most: 4
}

func ExampleLocker_TryAcquire() {
	ctx := context.Background()
	locker, err := pgbaton.New(ctx, pgbaton.Config{ConnString: os.Getenv("DATABASE_URL"), InstanceName: "worker-1"})
	if err != nil {
		panic(err)
	}
	defer locker.Close()
	other, err := pgbaton.New(ctx, pgbaton.Config{ConnString: os.Getenv("DATABASE_URL"), InstanceName: "worker-2"})
	if err != nil {
		panic(err)
	}
	defer other.Close()

	key := pgbaton.KeyName("example.integrity-hash-retry")
	lease, err := locker.TryAcquire(ctx, key)
	if err != nil {
		panic(err)
	}
	_, err = other.TryAcquire(ctx, key)
	fmt.Println("second instance busy:", errors.Is(err, pgbaton.ErrNotAcquired))

	fmt.Println("release:", lease.Release())
	<-lease.Done()
	fmt.Println("after release:", lease.Err())
	// Output:
	// second instance busy: true
	// release: <nil>
	// after release: pgbaton: lease released
}

func ExampleLocker_WithLock() {
	ctx := context.Background()
	locker, err := pgbaton.New(ctx, pgbaton.Config{ConnString: os.Getenv("DATABASE_URL")})
	if err != nil {
		panic(err)
	}
	defer locker.Close()

	err = locker.WithLock(ctx, pgbaton.KeyName("example.db-retention"), func(ctx context.Context) error {
		// Do the work with the application's own pool, passing ctx: it is
		// cancelled if the lease is lost.
		fmt.Println("running retention")
		return nil
	}, pgbaton.Wait(5*time.Second))
	fmt.Println("err:", err)
	// Output:
	// running retention
	// err: <nil>
}

func ExampleLocker_WithXactLock() {
	ctx := context.Background()
	locker, err := pgbaton.New(ctx, pgbaton.Config{ConnString: os.Getenv("DATABASE_URL")})
	if err != nil {
		panic(err)
	}
	defer locker.Close()
	// The lock lives in a transaction on a lock connection; the work goes
	// through the application's pool. COMMIT releases the lock.
	err = locker.WithXactLock(ctx, pgbaton.KeyName("example.healthcheck:system-7"), func(ctx context.Context) error {
		fmt.Println("evaluating system-7")
		return nil
	})
	fmt.Println("err:", err)
	// Output:
	// evaluating system-7
	// err: <nil>
}

func ExampleKeyName() {
	k := pgbaton.KeyName("incident.dedupe-open-for-system:42")
	fmt.Println(k, k.ID())
	// The same key in SQL:
	//   SELECT pg_try_advisory_lock(<pgbaton.KeySQL with $1 = the name>)
	fmt.Println(pgbaton.KeyPair(7, 42))
	// Output:
	// incident.dedupe-open-for-system:42 7967955661360103519
	// pair:7,42
}

func ExampleLease_Token() {
	ctx := context.Background()
	locker, err := pgbaton.New(ctx, pgbaton.Config{ConnString: os.Getenv("DATABASE_URL")})
	if err != nil {
		panic(err)
	}
	defer locker.Close()
	if err := locker.Migrate(ctx); err != nil { // creates the fencing sequence
		panic(err)
	}
	locker.Close()
	// Lock connections opened after Migrate draw tokens.
	locker, err = pgbaton.New(ctx, pgbaton.Config{ConnString: os.Getenv("DATABASE_URL")})
	if err != nil {
		panic(err)
	}
	defer locker.Close()
	a, err := locker.TryAcquire(ctx, pgbaton.KeyName("example.fenced"))
	if err != nil {
		panic(err)
	}
	ta, ok := a.Token()
	if err := a.Release(); err != nil {
		panic(err)
	}
	b, err := locker.TryAcquire(ctx, pgbaton.KeyName("example.fenced"))
	if err != nil {
		panic(err)
	}
	tb, _ := b.Token() // ok as for a: the same connection settings
	if err := b.Release(); err != nil {
		panic(err)
	}
	fmt.Println("has token:", ok, "increases:", tb > ta)
	// Output:
	// has token: true increases: true
}
