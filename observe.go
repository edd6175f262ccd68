package pgbaton

import (
	"errors"
	"time"
)

// EventKind says what an [Event] reports.
type EventKind uint8

const (
	// EventAcquire: an acquisition ended (TryAcquire, Acquire, WithLock,
	// WithXactLock), with its [Outcome] and how long it took.
	EventAcquire EventKind = iota + 1
	// EventRelease: a lease was released normally.
	EventRelease
	// EventLoss: a lease was lost; Err is the cause.
	EventLoss
)

func (k EventKind) String() string {
	switch k {
	case EventAcquire:
		return "acquire"
	case EventRelease:
		return "release"
	case EventLoss:
		return "loss"
	}
	return "unknown"
}

// Outcome is how an acquisition ended.
type Outcome string

const (
	OutcomeAcquired Outcome = "acquired"
	OutcomeBusy     Outcome = "busy"    // a try found the lock held
	OutcomeTimeout  Outcome = "timeout" // a bounded wait expired
	OutcomeError    Outcome = "error"   // anything else; Err says what
)

// Event is what a [Config.Observer] receives. Only the fields that apply to
// Kind are set.
type Event struct {
	Kind    EventKind
	Key     Key
	Mode    Mode
	Outcome Outcome       // EventAcquire
	Wait    time.Duration // EventAcquire: from the call to its outcome
	Held    time.Duration // EventRelease, EventLoss: how long the lease lived
	Err     error         // EventAcquire with OutcomeError: the error; EventLoss: the cause
}

// LossCause names the kind of a loss's cause with a short, bounded string,
// suitable as a metric label: "terminated", "heartbeat_timeout",
// "unlock_false", "locker_closed", "state_unknown", "connection" or "other".
func LossCause(err error) string {
	switch {
	case err == nil:
		return "other"
	case errors.Is(err, ErrLockerClosed):
		return "locker_closed"
	case errors.Is(err, ErrHeartbeatTimeout):
		return "heartbeat_timeout"
	case errors.Is(err, ErrUnlockFalse):
		return "unlock_false"
	case errors.Is(err, errLockStateUnknown):
		return "state_unknown"
	case isCode(err, "57P01"), isCode(err, "57P02"), isCode(err, "57P03"), isCode(err, "25P03"):
		return "terminated"
	case errors.Is(err, ErrConnLost):
		return "connection"
	}
	return "other"
}

// observeAcquire reports the end of an acquisition to the observer.
func (l *Locker) observeAcquire(key Key, mode Mode, start time.Time, err error) {
	if l.cfg.Observer == nil {
		return
	}
	e := Event{Kind: EventAcquire, Key: key, Mode: mode, Wait: time.Since(start), Outcome: OutcomeAcquired}
	var na *NotAcquiredError
	switch {
	case err == nil:
	case errors.As(err, &na) && na.Waited > 0:
		e.Outcome = OutcomeTimeout
	case errors.As(err, &na):
		e.Outcome = OutcomeBusy
	default:
		e.Outcome, e.Err = OutcomeError, err
	}
	l.cfg.Observer(e)
}
