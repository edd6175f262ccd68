package pgbaton

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Every error pgbaton returns matches one of these with
// errors.Is, and most carry detail that errors.As can extract.
var (
	// ErrNotAcquired: the lock is held by someone else (try), or a bounded
	// wait expired. See [NotAcquiredError].
	ErrNotAcquired = errors.New("pgbaton: lock not acquired")
	// ErrLeaseLost: a lease ended without Release, or Release found the lock
	// already gone. The work done under it may not have been exclusive. See
	// [LeaseLostError].
	ErrLeaseLost = errors.New("pgbaton: lease lost")
	// ErrReleased is the cause of a lease's context after a normal Release.
	ErrReleased = errors.New("pgbaton: lease released")
	// ErrLockerClosed: the Locker was closed.
	ErrLockerClosed = errors.New("pgbaton: locker closed")
	// ErrInvalidKey: the key is the zero Key or its name is unusable.
	ErrInvalidKey = errors.New("pgbaton: invalid key")
	// ErrInvalidOption: an option of one call is unusable (an unknown Mode,
	// a negative Wait, a nil transaction), in every entry point: Acquire,
	// TryAcquire, WithLock, WithXactLock, the transaction helpers, the fake.
	ErrInvalidOption = errors.New("pgbaton: invalid option")
	// ErrInvalidConfig: Config validation failed. See [ConfigError].
	ErrInvalidConfig = errors.New("pgbaton: invalid config")
	// ErrPoolerDetected: the connection goes through a connection pooler or
	// proxy (PgBouncer and the like), where session locks land on shared
	// backends and leak. Connect lock connections directly to PostgreSQL, or
	// use the transaction-scoped helpers, which are safe behind a pooler.
	// Behind PgBouncer in session mode, Config.AllowPooler accepts it.
	ErrPoolerDetected = errors.New("pgbaton: connection pooler detected; session leases need a direct connection to PostgreSQL " +
		"(behind PgBouncer in session mode set Config.AllowPooler; behind transaction pooling use TryLockTx/LockTx)")
	// ErrHotStandby: the server is a hot standby, which grants advisory locks
	// locally without coordinating with the primary.
	ErrHotStandby = errors.New("pgbaton: server is a hot standby; advisory locks there do not coordinate with the primary; connect to the primary")
	// ErrTooManyLocks: the Locker's own cap on held keys (Config.MaxHeldKeys)
	// or on locks per connection times connections is reached.
	ErrTooManyLocks = errors.New("pgbaton: too many locks held by this Locker")
	// ErrLockTableFull: PostgreSQL's shared lock table is full (SQLSTATE
	// 53200). While it is, every session of the cluster fails; raise
	// max_locks_per_transaction or hold fewer keys.
	ErrLockTableFull = errors.New("pgbaton: PostgreSQL lock table full (53200 out of shared memory)")
	// ErrDeadlock: PostgreSQL chose this wait as a deadlock victim (40P01),
	// typically two shared holders both upgrading to exclusive.
	ErrDeadlock = errors.New("pgbaton: deadlock detected")
	// ErrConnect: a lock connection could not be opened within
	// Config.ConnectTimeout.
	ErrConnect = errors.New("pgbaton: cannot open lock connection")
	// ErrPermission: the role lacks a privilege pgbaton needs (SQLSTATE
	// 42501); the message names the GRANT (`pgbaton migrate sql` prints them
	// all).
	ErrPermission = errors.New("pgbaton: permission denied")
	// ErrConnLost: the lock connection a call ran on failed during the call
	// (terminated backend, restart, network). The caller holds nothing: the
	// server frees every lock of a closed session.
	ErrConnLost = errors.New("pgbaton: lock connection lost")
	// ErrStatementCanceled: the server cancelled the lock statement (SQLSTATE
	// 57014: an operator's pg_cancel_backend, or a statement_timeout). The
	// caller holds nothing, and the key is free of this Locker: after any
	// failed lock statement the session's hold is made known before the
	// connection serves anything else.
	ErrStatementCanceled = errors.New("pgbaton: lock statement cancelled by the server")
	// ErrLockFailed: any other server error from a lock statement. As for
	// every error from an acquisition, the caller holds nothing and the key
	// is free of this Locker.
	ErrLockFailed = errors.New("pgbaton: lock statement failed")
)

// NotAcquiredError says which key was busy and how long the caller waited
// (zero for a try). It matches ErrNotAcquired.
type NotAcquiredError struct {
	Key    Key
	Mode   Mode
	Waited time.Duration
	// Local is true when the holder is another lease of the same Locker, so
	// no round trip was needed to know.
	Local bool
}

// localHolderMsg ends the message of a NotAcquiredError whose holder is
// another lease of the same Locker: waiting for it from the same Locker is
// waiting for yourself when that lease is the caller's own.
const localHolderMsg = ": held by another lease of this Locker (leases are not re-entrant)"

func (e *NotAcquiredError) Error() string {
	var msg string
	if e.Waited > 0 {
		msg = fmt.Sprintf("pgbaton: lock %q (%s) not acquired within %s", e.Key, e.Mode, e.Waited.Round(time.Millisecond))
	} else {
		msg = fmt.Sprintf("pgbaton: lock %q (%s) is busy", e.Key, e.Mode)
	}
	if e.Local {
		msg += localHolderMsg
	}
	return msg
}

// Is makes errors.Is(err, ErrNotAcquired) true.
func (e *NotAcquiredError) Is(target error) bool { return target == ErrNotAcquired }

// LeaseLostError says which lease was lost and why. It matches ErrLeaseLost
// and unwraps to the cause (a connection error, a PostgreSQL error such as
// 57P01 admin shutdown, or ErrLockerClosed).
type LeaseLostError struct {
	Key   Key
	Mode  Mode
	Held  time.Duration // how long the lease had been held when it was lost
	Cause error
}

func (e *LeaseLostError) Error() string {
	return fmt.Sprintf("pgbaton: lease on %q lost after %s: %v", e.Key, e.Held.Round(time.Millisecond), e.Cause)
}

// Is makes errors.Is(err, ErrLeaseLost) true.
func (e *LeaseLostError) Is(target error) bool { return target == ErrLeaseLost }

// Unwrap returns the cause.
func (e *LeaseLostError) Unwrap() error { return e.Cause }

// ConfigError names the field that failed validation and how to fix it.
type ConfigError struct {
	Field string
	Msg   string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("pgbaton: invalid config: %s: %s", e.Field, e.Msg)
}

// Is makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// errConnLost is the cause used when a lock connection stops answering.
type connLostError struct {
	Conn  string // application_name of the lock connection
	PID   uint32
	Cause error
}

func (e *connLostError) Error() string {
	return fmt.Sprintf("lock connection %s (backend pid %d) lost: %v", e.Conn, e.PID, e.Cause)
}

func (e *connLostError) Unwrap() error { return e.Cause }

// Is makes errors.Is(err, ErrConnLost) true.
func (e *connLostError) Is(target error) bool { return target == ErrConnLost }

// ErrHeartbeatTimeout is the cause of a loss when no heartbeat was confirmed
// within Config.LeaseTimeout: the network or the server stopped answering.
var ErrHeartbeatTimeout = errors.New("no heartbeat confirmed within the lease timeout")

// ErrUnlockFalse is the cause of a loss found at release: pg_advisory_unlock
// returned false, so the server no longer held the lock.
var ErrUnlockFalse = errors.New("pg_advisory_unlock returned false: the server no longer held the lock")
