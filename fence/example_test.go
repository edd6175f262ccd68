package fence_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/fence"
)

// A guarded write in the critical section: the row only moves forward.
func ExampleTable_Update() {
	ctx := context.Background()
	locker, _ := pgbaton.New(ctx, pgbaton.Config{ConnString: "postgres://app@db/app"})
	defer locker.Close()
	db, _ := pgx.Connect(ctx, "postgres://app@db/app")
	defer db.Close(ctx)

	lease, err := locker.TryAcquire(ctx, pgbaton.KeyName("invoice-run"))
	if err != nil {
		return
	}
	defer lease.Release()
	tok, err := fence.FromLease(lease)
	if err != nil {
		return // no schema: run locker.Migrate(ctx) once
	}
	runs := fence.Table{Name: "invoice_runs"} // id, state, fence_token
	err = runs.Update(lease.Context(), db, tok, 1, "state = $3", "sent")
	if errors.Is(err, fence.ErrStaleToken) {
		// Another holder has taken over: stop, do not retry.
		slog.Warn("superseded", "token", tok, "err", err)
	}
}

// Passing the token to another service, which compares it with the largest
// one it has stored.
func ExampleCheck() {
	req, _ := http.NewRequest(http.MethodPut, "http://storage.internal/objects/report", nil)
	req.Header.Set(fence.Header, fence.Token(42).String())

	// On the receiving side:
	incoming, err := fence.Parse(req.Header.Get(fence.Header))
	if err != nil {
		fmt.Println(err)
		return
	}
	stored := fence.Token(57)
	fmt.Println(fence.Check(stored, incoming))
	// Output: fence: stale fencing token 42: the resource already holds token 57; the lease was superseded, stop working on this resource
}

func ExampleParse() {
	tok, err := fence.Parse("1234")
	fmt.Println(tok, err, tok.Int64()+1)
	_, err = fence.Parse("-1")
	fmt.Println(errors.Is(err, fence.ErrInvalidToken))
	// Output:
	// 1234 <nil> 1235
	// true
}
