package pgbaton

import (
	"log/slog"
	"time"
)

// This file is the API for implementers of [Interface] outside this package,
// such as the in-memory fake of package pgbatontest: it lets them hand out
// real [*Lease] values with the same semantics (Done, Context, Err,
// idempotent Release) and resolve and check options exactly as [Locker]
// does. Application code that takes locks needs none of it.

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

// Backend lets lock implementations other than [Locker] (such as the
// in-memory fake in package pgbatontest) hand out Leases with the same
// semantics. Application code never implements it.
type Backend interface {
	// Unlock releases ls's lock and reports whether it was still held.
	Unlock(ls *Lease) (held bool, err error)
	// Forget drops ls from the backend's records and reports whether it was
	// still there; false means the backend already reported it lost.
	Forget(ls *Lease) bool
}

// LeaseInfo describes a lease made by [NewLease].
type LeaseInfo struct {
	Key      Key
	Mode     Mode
	Token    int64
	HasToken bool
	Holder   string // shown by Session
	Logger   *slog.Logger
}

// NewLease makes a held Lease for a [Backend]. The returned lose function
// ends it as lost with the given cause (it is idempotent).
func NewLease(info LeaseInfo, b Backend) (*Lease, func(cause error)) {
	ls := newLease(b, info.Key, info.Mode, info.Holder, 0, info.Logger)
	ls.token, ls.hasToken = info.Token, info.HasToken
	return ls, ls.lose
}

// Validate checks options as [Locker] does: an unknown Mode or a negative
// Wait returns an error matching [ErrInvalidOption]. Implementations of
// [Interface] call it so that every entry point refuses the same input.
func (o AcquireOptions) Validate() error {
	return acquireOptions{mode: o.Mode, wait: o.Wait, hasWait: o.HasWait}.validate()
}
