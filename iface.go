package pgbaton

import (
	"context"
	"time"
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

// AcquireOptions is the resolved form of a list of [Option] values, for
// implementations of [Interface] outside this package.
type AcquireOptions struct {
	Mode Mode
	// Wait is the bound of a wait; meaningful only when HasWait is true
	// (without a Wait option the implementation uses its default).
	Wait    time.Duration
	HasWait bool
}

// ResolveOptions applies opts in order, as TryAcquire and Acquire do.
func ResolveOptions(opts ...Option) AcquireOptions {
	var o acquireOptions
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	return AcquireOptions{Mode: o.mode, Wait: o.wait, HasWait: o.hasWait}
}

// Validate returns nil for a usable key, or an error matching
// [ErrInvalidKey] that says what is wrong and how to build a valid one.
func (k Key) Validate() error { return k.validate() }
