package pgbatontest_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/pgbatontest"
)

// Reporter is application code: it depends on pgbaton.Interface, so
// production passes a *pgbaton.Locker and unit tests pass the fake.
type Reporter struct {
	Locks pgbaton.Interface
}

// Run builds the daily report unless another instance is building it.
func (r *Reporter) Run(ctx context.Context) (string, error) {
	lease, err := r.Locks.TryAcquire(ctx, pgbaton.KeyName("report.daily"))
	if errors.Is(err, pgbaton.ErrNotAcquired) {
		return "skipped: lock busy", nil
	}
	if err != nil {
		return "", err
	}
	defer lease.Release()
	return "built", nil
}

func Example() {
	ctx := context.Background()
	db := pgbatontest.NewDB() // one database, shared by two "processes"
	other := db.NewLocker(pgbatontest.Options{Name: "other-instance"})
	r := &Reporter{Locks: db.NewLocker(pgbatontest.Options{Name: "this-instance"})}

	fmt.Println(r.Run(ctx))

	held, _ := other.TryAcquire(ctx, pgbaton.KeyName("report.daily"))
	fmt.Println(r.Run(ctx))

	other.Lose(held, nil) // the other instance's connection died
	fmt.Println(held.Err() != nil, errors.Is(held.Err(), pgbaton.ErrLeaseLost))
	fmt.Println(r.Run(ctx))
	// Output:
	// built <nil>
	// skipped: lock busy <nil>
	// true true
	// built <nil>
}
