package pgbaton

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// Lease is a held advisory lock, pinned to one dedicated lock connection.
//
// A lease ends exactly once: by Release, or by loss (its connection failed,
// its heartbeat was not confirmed within Config.LeaseTimeout, or the Locker
// closed). Either way Done is closed and Context is cancelled; Err says which.
type Lease struct {
	b        Backend
	key      Key
	mode     Mode
	acquired time.Time
	token    int64
	hasToken bool
	holder   string
	pid      uint32
	log      func(msg string, args ...any)
	observe  func(Event) // Config.Observer, or nil

	ctx    context.Context
	cancel context.CancelCauseFunc

	mu         sync.Mutex
	ended      bool
	err        error // ErrReleased or *LeaseLostError, once ended
	releaseErr error // what Release returns
	releasing  chan struct{}
}

// Key returns the lease's key.
func (ls *Lease) Key() Key { return ls.key }

// Mode returns the lease's mode.
func (ls *Lease) Mode() Mode { return ls.mode }

// AcquiredAt returns when the lock was granted.
func (ls *Lease) AcquiredAt() time.Time { return ls.acquired }

// Done is closed when the lease ends, by Release or by loss.
func (ls *Lease) Done() <-chan struct{} { return ls.ctx.Done() }

// Context is cancelled when the lease ends; context.Cause returns
// ErrReleased or the [*LeaseLostError]. Derive the context of work that must
// stop when the lock is gone from it.
func (ls *Lease) Context() context.Context { return ls.ctx }

// Err is nil while the lease is held, ErrReleased after Release, and a
// [*LeaseLostError] (errors.Is(err, ErrLeaseLost)) after a loss.
func (ls *Lease) Err() error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.err
}

// Session names the PostgreSQL session holding the lease: its
// application_name (pgbaton:<instance>:<n>) and backend pid, as pg_locks and
// pg_stat_activity show them, for logs and inspection.
func (ls *Lease) Session() (applicationName string, backendPID uint32) { return ls.holder, ls.pid }

// Token returns the lease's fencing token: a number that strictly increases
// per key across every grant, so a resource can reject writes from an older
// holder. ok is false when the Locker has no fencing schema.
func (ls *Lease) Token() (token int64, ok bool) { return ls.token, ls.hasToken }

func newLease(b Backend, key Key, mode Mode, holder string, pid uint32, log *slog.Logger) *Lease {
	if log == nil {
		log = slog.Default()
	}
	ls := &Lease{b: b, key: key, mode: mode, acquired: time.Now(), holder: holder, pid: pid, log: log.Error}
	ls.ctx, ls.cancel = context.WithCancelCause(context.Background())
	return ls
}

// Release unlocks the key on the connection that took it, bounded by
// Config.ReleaseTimeout and independent of any caller context. It returns nil
// if the lock was held until this moment, or the [*LeaseLostError] if the
// lease had been lost (including when the server's unlock returned false).
// It is idempotent: later calls return the same result.
func (ls *Lease) Release() error {
	ls.mu.Lock()
	if ls.ended {
		err := ls.releaseErr
		if err == nil && !errors.Is(ls.err, ErrReleased) {
			err = ls.err
		}
		ls.mu.Unlock()
		return err
	}
	if ls.releasing != nil {
		ch := ls.releasing
		ls.mu.Unlock()
		<-ch
		return ls.Release()
	}
	ls.releasing = make(chan struct{})
	ls.mu.Unlock()
	defer close(ls.releasing)

	ok, err := ls.b.Unlock(ls)
	switch {
	case !ls.b.Forget(ls):
		// The backend dropped the lease concurrently (its connection
		// failed) and is reporting the loss; end the lease here too, so
		// the call below cannot wait on this very Release. Whichever
		// ending comes first stands.
		switch {
		case err != nil:
			ls.lose(err)
		case !ok:
			ls.lose(ErrUnlockFalse)
		default:
			ls.end(ErrReleased) // the unlock went through before the failure
		}
	case err != nil:
		ls.lose(err)
	case !ok:
		ls.lose(ErrUnlockFalse)
	default:
		ls.end(ErrReleased)
	}
	return ls.Release()
}

// lose ends the lease as lost with cause, logging at error level.
func (ls *Lease) lose(cause error) {
	lost := &LeaseLostError{Key: ls.key, Mode: ls.mode, Held: time.Since(ls.acquired), Cause: cause}
	if ls.end(lost) && !errors.Is(cause, ErrLockerClosed) {
		ls.log("pgbaton: lease lost", "key", ls.key.String(), "key_id", ls.key.ID(), "mode", ls.mode.String(),
			"held", lost.Held, "holder", ls.holder, "backend_pid", ls.pid, "err", cause)
	}
}

func (ls *Lease) end(err error) bool {
	ls.mu.Lock()
	if ls.ended {
		ls.mu.Unlock()
		return false
	}
	ls.ended = true
	ls.err = err
	if !errors.Is(err, ErrReleased) {
		ls.releaseErr = err
	}
	ls.mu.Unlock()
	ls.cancel(err)
	if ls.observe != nil {
		e := Event{Kind: EventRelease, Key: ls.key, Mode: ls.mode, Held: time.Since(ls.acquired)}
		if !errors.Is(err, ErrReleased) {
			e.Kind, e.Err = EventLoss, err
		}
		ls.observe(e)
	}
	return true
}
