package pgbaton

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/pgtest"
)

type eventLog struct {
	mu  sync.Mutex
	evs []Event
}

func (l *eventLog) observe(e Event) {
	l.mu.Lock()
	l.evs = append(l.evs, e)
	l.mu.Unlock()
}

func (l *eventLog) take() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	evs := l.evs
	l.evs = nil
	return evs
}

func TestObserverSeesEveryOutcome(t *testing.T) {
	t.Parallel()
	cl := pgtest.Shared()
	dsn := cl.NewDatabase(t)
	ctx := testCtx(t)
	var log eventLog
	l := newTestLocker(t, dsn, func(c *Config) { c.Observer = log.observe })
	other := newTestLocker(t, dsn)
	k := KeyName("observed")

	ls, err := l.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Release(); err != nil {
		t.Fatal(err)
	}
	evs := log.take()
	if len(evs) != 2 || evs[0].Kind != EventAcquire || evs[0].Outcome != OutcomeAcquired || evs[1].Kind != EventRelease || evs[1].Key != k {
		t.Fatalf("acquire+release events = %+v", evs)
	}

	if err := l.WithXactLock(ctx, k, func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	evs = log.take()
	if len(evs) != 2 || evs[0].Outcome != OutcomeAcquired || evs[1].Kind != EventRelease {
		t.Fatalf("WithXactLock events = %+v", evs)
	}

	h, err := other.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.TryAcquire(ctx, k); !errors.Is(err, ErrNotAcquired) {
		t.Fatal(err)
	}
	if _, err := l.Acquire(ctx, k, Wait(50*time.Millisecond)); !errors.Is(err, ErrNotAcquired) {
		t.Fatal(err)
	}
	evs = log.take()
	if len(evs) != 2 || evs[0].Outcome != OutcomeBusy || evs[1].Outcome != OutcomeTimeout || evs[1].Wait < 50*time.Millisecond {
		t.Fatalf("busy/timeout/error events = %+v", evs)
	}
	_ = h.Release()

	ls, err = l.TryAcquire(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	_, pid := ls.Session()
	if err := cl.TerminateBackend(ctx, int(pid)); err != nil {
		t.Fatal(err)
	}
	_ = mustLose(t, ls, 5*time.Second) // it has already checked the error is ErrLeaseLost
	evs = log.take()
	if len(evs) != 2 || evs[1].Kind != EventLoss || LossCause(evs[1].Err) != "terminated" {
		t.Fatalf("loss events = %+v (cause %q)", evs, LossCause(evs[len(evs)-1].Err))
	}
}
