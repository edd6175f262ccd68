package periodic

import (
	"sync/atomic"
	"time"
)

// Clock is the scheduler's local clock. Ticks are due in database time:
// every claim round trip measures the offset between this clock and the
// server's clock_timestamp(), and the clock is only used to estimate
// database time between round trips, to decide how long to sleep. A skewed
// or jumping clock therefore never makes a tick run early or twice: an early
// wake-up is caught by the database ("not due yet") and corrected, a late
// one runs the tick late (or records it missed, per the job's policy).
//
// Tests inject skewed or drifting clocks; production uses [SystemClock].
type Clock interface {
	Now() time.Time
}

// ClockFunc adapts a function to [Clock].
type ClockFunc func() time.Time

// Now calls f.
func (f ClockFunc) Now() time.Time { return f() }

// SystemClock is time.Now.
func SystemClock() Clock { return ClockFunc(time.Now) }

// dbClock estimates database time from a local clock and the last measured
// offset.
type dbClock struct {
	local  Clock
	offset atomic.Int64 // database time minus local time, nanoseconds
	known  atomic.Bool
}

// observe records a database timestamp read by a round trip sent at sent
// and answered at recv (both local).
func (c *dbClock) observe(db, sent, recv time.Time) {
	mid := sent.Add(recv.Sub(sent) / 2)
	c.offset.Store(int64(db.Sub(mid)))
	c.known.Store(true)
}

// now returns the estimated database time.
func (c *dbClock) now() time.Time {
	return c.local.Now().Add(time.Duration(c.offset.Load()))
}

// until returns how long to sleep (local) until database time reaches t.
func (c *dbClock) until(t time.Time) time.Duration {
	return t.Sub(c.now())
}
