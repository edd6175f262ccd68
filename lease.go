package pgbaton

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Lease is a held advisory lock, pinned to one dedicated lock connection.
//
// A lease ends exactly once: by Release, or by loss (its connection failed,
// its heartbeat was not confirmed within Config.LeaseTimeout, or the Locker
// closed). Either way Done is closed and Context is cancelled; Err says which.
type Lease struct {
	l        *Locker
	c        *lockConn
	key      Key
	mode     Mode
	acquired time.Time

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

// Conn returns the application_name and backend pid of the lock connection
// holding the lease, for logs and inspection.
func (ls *Lease) Conn() (applicationName string, backendPID uint32) { return ls.c.name, ls.c.pid }

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

	ok, err := ls.c.unlockKey(ls.key, ls.mode)
	l := ls.l
	l.mu.Lock()
	_, mine := ls.c.leases[ls]
	if mine {
		delete(ls.c.leases, ls)
		l.unreserveLocked(ls.key.ident())
	}
	l.mu.Unlock()
	switch {
	case !mine:
		// The connection failed in the meantime; its cause is the loss.
		ls.lose(&connLostError{Conn: ls.c.name, PID: ls.c.pid, Cause: ls.c.cause})
	case err != nil:
		ls.lose(err)
	case !ok:
		ls.lose(ErrUnlockFalse)
	default:
		ls.end(ErrReleased)
		l.stats.released.Add(1)
	}
	return ls.Release()
}

// lose ends the lease as lost with cause, logging at error level.
func (ls *Lease) lose(cause error) {
	lost := &LeaseLostError{Key: ls.key, Mode: ls.mode, Held: time.Since(ls.acquired), Cause: cause}
	if ls.end(lost) {
		ls.l.stats.lost.Add(1)
		if !errors.Is(cause, ErrLockerClosed) {
			name, pid := ls.Conn()
			ls.l.log.Error("pgbaton: lease lost", "key", ls.key.String(), "key_id", ls.key.ID(), "mode", ls.mode.String(),
				"held", lost.Held, "conn", name, "backend_pid", pid, "err", cause)
		}
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
	return true
}
