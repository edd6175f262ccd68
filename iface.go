package pgbaton

import (
	"context"
)

// Interface is what application code should depend on to take locks, so
// that unit tests can pass the in-memory fake of package pgbatontest instead
// of a [*Locker]. Both implementations hand out real [*Lease] values and
// return the same typed errors; one conformance suite runs against both.
//
//	type IncidentService struct {
//		locks pgbaton.Interface // *pgbaton.Locker in production, *pgbatontest.Locker in tests
//	}
type Interface interface {
	// TryAcquire takes key if it is free, or returns a [*NotAcquiredError].
	TryAcquire(ctx context.Context, key Key, opts ...Option) (*Lease, error)
	// Acquire takes key, waiting at most the Wait option (default: the
	// implementation's acquire timeout).
	Acquire(ctx context.Context, key Key, opts ...Option) (*Lease, error)
	// WithLock runs fn under a lease on key; fn's context is cancelled if
	// the lease is lost.
	WithLock(ctx context.Context, key Key, fn func(ctx context.Context) error, opts ...Option) error
	// WithXactLock runs fn while a lock transaction holds key (see
	// [Locker.WithXactLock]).
	WithXactLock(ctx context.Context, key Key, fn func(ctx context.Context) error, opts ...Option) error
}

var _ Interface = (*Locker)(nil)

// Validate returns nil for a usable key, or an error matching
// [ErrInvalidKey] that says what is wrong and how to build a valid one.
func (k Key) Validate() error { return k.validate() }
