package periodic

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"
)

// Schedule says when a job's ticks fall. A tick is an absolute instant that
// every instance computes alike from the schedule alone, without talking to
// the others: it is the tick's identity in the runs table, so two instances
// can only agree that a tick was claimed if they compute the same instants.
// Schedules must therefore be pure functions of their argument (no local
// time zone, no "now").
//
// Ticks have microsecond resolution (the database's); sub-microsecond parts
// must be zero.
//
// The schedules of this package also implement [BoundedSchedule]: their
// searches are bounded, and Next and Prev return the zero Time when a bound
// is reached.
type Schedule interface {
	// Next returns the first tick strictly after t, or the zero Time if
	// there is none.
	Next(t time.Time) time.Time
	// Prev returns the last tick strictly before t, or the zero Time if
	// there is none.
	Prev(t time.Time) time.Time
	// String describes the schedule for logs, health and the jobs table.
	String() string
}

// BoundedSchedule is a [Schedule] whose searches for a tick are bounded
// (see doc.go, "Schedules and daylight saving time", for the bounds) and
// say why they found none. [Every] and [Cron] schedules implement it.
type BoundedSchedule interface {
	Schedule
	// NextTick is Next, with [ErrNoNextTick] (wrapped, with the reason)
	// instead of the zero Time.
	NextTick(after time.Time) (time.Time, error)
	// PrevTick is Prev, with [ErrNoPrevTick] instead of the zero Time.
	PrevTick(before time.Time) (time.Time, error)
}

// Jittered is implemented by schedules that delay each tick's firing by a
// deterministic amount in [0, JitterMax()), spreading the load of many jobs
// that share a boundary. The delay is derived from the job name and the
// tick, so every instance fires a tick at the same moment; the tick's
// identity does not change.
type Jittered interface {
	JitterMax() time.Duration
}

var (
	// ErrInvalidSchedule matches every schedule construction error.
	ErrInvalidSchedule = errors.New("periodic: invalid schedule")
	// ErrNoNextTick: a schedule has no tick after the given instant within
	// its search bound (about 400 years for calendar schedules), or it is
	// invalid (its Err is not nil).
	ErrNoNextTick = errors.New("periodic: schedule has no next tick")
	// ErrNoPrevTick: a schedule has no tick before the given instant within
	// its search bound, or it is invalid.
	ErrNoPrevTick = errors.New("periodic: schedule has no previous tick")
)

// MinInterval is the shortest interval [Every] accepts: each tick costs a
// few database round trips on every instance.
const MinInterval = 10 * time.Millisecond

// EverySchedule fires every d on a fixed grid. Build one with [Every].
type EverySchedule struct {
	d, offset, jitter time.Duration
	loc               *time.Location // nil: grid anchored at the Unix epoch (UTC)
	err               error
}

// Every returns a schedule with a tick every d on a fixed grid: at the Unix
// epoch plus whole multiples of d. When d divides a day that is aligned to
// UTC wall-clock boundaries (Every(6*time.Hour) fires at 00:00, 06:00, 12:00
// and 18:00 UTC; Every(30*time.Second) at :00 and :30 of every minute), and
// every instance computes the same grid whenever it starts. Options:
// [EverySchedule.Offset] shifts the grid, [EverySchedule.In] makes it a grid
// of wall-clock times in a time zone, [EverySchedule.Jitter] spreads firing.
//
// d must be a whole number of milliseconds, at least [MinInterval]; an
// invalid d is reported when the job is added.
func Every(d time.Duration) EverySchedule {
	e := EverySchedule{d: d}
	switch {
	case d < MinInterval:
		e.err = fmt.Errorf("%w: Every(%s): the interval must be at least %s", ErrInvalidSchedule, d, MinInterval)
	case d%time.Millisecond != 0:
		e.err = fmt.Errorf("%w: Every(%s): the interval must be a whole number of milliseconds", ErrInvalidSchedule, d)
	}
	return e
}

// Offset shifts the grid by o, in [0, d): Every(24*time.Hour).Offset(3*time.Hour)
// fires daily at 03:00 UTC, or at 03:00 on the local clock with In.
func (e EverySchedule) Offset(o time.Duration) EverySchedule {
	if e.err == nil && (o < 0 || o >= e.d || o%time.Microsecond != 0) {
		e.err = fmt.Errorf("%w: Every(%s).Offset(%s): the offset must be a whole number of microseconds in [0, %s)", ErrInvalidSchedule, e.d, o, e.d)
	}
	e.offset = o
	return e
}

// In makes the grid one of wall-clock times in loc: the ticks are the
// local times of day offset, offset+d, offset+2d, ... on every local date.
// d must divide 24 hours. Every(time.Hour).In(paris) fires on the hour of
// Paris wall-clock time; Every(24*time.Hour).Offset(20*time.Hour).In(paris)
// at 20:00 Paris time every day.
//
// Around daylight saving changes (doc.go, "Schedules and daylight saving
// time", has the table): with d of one hour or less the schedule is a
// wildcard schedule, and keeps elapsed-time intervals (a time of day the
// clock skips does not fire, one it passes twice fires twice); with d over
// one hour it is a fixed-time schedule, and each local time of day fires
// exactly once (at the first instant after the gap if the clock skips it,
// at its first occurrence if the clock passes it twice).
func (e EverySchedule) In(loc *time.Location) EverySchedule {
	if e.err == nil {
		switch {
		case loc == nil:
			e.err = fmt.Errorf("%w: Every(%s).In(nil): pass a *time.Location (time.UTC, time.LoadLocation(...))", ErrInvalidSchedule, e.d)
		case (24*time.Hour)%e.d != 0:
			e.err = fmt.Errorf("%w: Every(%s).In(%s): the interval must divide 24h to form a daily grid of wall-clock times", ErrInvalidSchedule, e.d, loc)
		}
	}
	e.loc = loc
	return e
}

// Jitter delays the firing of each tick by a deterministic amount in
// [0, max), derived from the job name and the tick (see [Jittered]). max
// must be shorter than the interval.
func (e EverySchedule) Jitter(max time.Duration) EverySchedule {
	if e.err == nil && (max < 0 || max >= e.d) {
		e.err = fmt.Errorf("%w: Every(%s).Jitter(%s): jitter must be in [0, %s)", ErrInvalidSchedule, e.d, max, e.d)
	}
	e.jitter = max
	return e
}

// JitterMax implements [Jittered].
func (e EverySchedule) JitterMax() time.Duration { return e.jitter }

// Interval returns d.
func (e EverySchedule) Interval() time.Duration { return e.d }

// Err reports a construction error (also reported when the job is added).
func (e EverySchedule) Err() error { return e.err }

func (e EverySchedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "every %s", e.d)
	if e.offset != 0 {
		fmt.Fprintf(&b, " offset %s", e.offset)
	}
	if e.loc != nil {
		fmt.Fprintf(&b, " in %s", e.loc)
	}
	if e.jitter != 0 {
		fmt.Fprintf(&b, " jitter %s", e.jitter)
	}
	return b.String()
}

// floorDiv is floor(a / b) for b > 0.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func (e EverySchedule) wall() *wallSched {
	return &wallSched{
		loc:   e.loc,
		set:   everyGrid{d: int64(e.d / time.Microsecond), offset: int64(e.offset / time.Microsecond)},
		fixed: e.d > time.Hour,
	}
}

// NextTick implements [BoundedSchedule].
func (e EverySchedule) NextTick(after time.Time) (time.Time, error) {
	if e.err != nil {
		return time.Time{}, fmt.Errorf("%w: %w", ErrNoNextTick, e.err)
	}
	if e.loc == nil {
		d, base := int64(e.d), int64(e.offset)
		k := floorDiv(after.UnixNano()-base, d) + 1
		return time.Unix(0, base+k*d).UTC(), nil
	}
	n, _, err := e.wall().next(after)
	return n, err
}

// PrevTick implements [BoundedSchedule].
func (e EverySchedule) PrevTick(before time.Time) (time.Time, error) {
	if e.err != nil {
		return time.Time{}, fmt.Errorf("%w: %w", ErrNoPrevTick, e.err)
	}
	if e.loc == nil {
		d, base := int64(e.d), int64(e.offset)
		k := floorDiv(before.UnixNano()-base-1, d)
		return time.Unix(0, base+k*d).UTC(), nil
	}
	p, _, err := e.wall().prev(before)
	return p, err
}

// Next implements [Schedule].
func (e EverySchedule) Next(t time.Time) time.Time {
	n, _ := e.NextTick(t)
	return n
}

// Prev implements [Schedule].
func (e EverySchedule) Prev(t time.Time) time.Time {
	p, _ := e.PrevTick(t)
	return p
}

// count returns the number of ticks in (after, upto].
func (e EverySchedule) count(after, upto time.Time) (int64, bool) {
	if e.loc != nil || !upto.After(after) {
		return 0, !upto.After(after)
	}
	d, base := int64(e.d), int64(e.offset)
	return floorDiv(upto.UnixNano()-base, d) - floorDiv(after.UnixNano()-base, d), true
}

// CronSchedule fires on a cron expression. Build one with [Cron].
type CronSchedule struct {
	expr    string
	spec    *cronSpec
	loc     *time.Location
	exprLoc *time.Location // the zone the expression names (UTC if none)
	jitter  time.Duration
}

// Cron parses a standard five-field cron expression (minute hour
// day-of-month month day-of-week, with names, ranges, steps and lists) or a
// descriptor (@yearly, @annually, @monthly, @weekly, @daily, @midnight,
// @hourly), with the meaning ISC/Vixie cron gives them in Debian's
// crontab(5) and cron(8). Day-of-month and day-of-week combine with OR when
// both are restricted, and with AND when either field starts with "*"
// ("0 0 */2 * 1" is odd days that are Mondays). Day-of-week 0 and 7 are
// Sunday. A step needs a range or "*": "5-59/15", not "5/15".
//
// Times are read in UTC unless the expression starts with CRON_TZ=Zone (or
// TZ=Zone), or [CronSchedule.In] sets a zone; the machine's local zone is
// never used, since instances may not share it.
//
// Daylight saving changes follow Debian's cron(8) (doc.go, "Schedules and
// daylight saving time", has the exact rules and a table): a fixed-time job
// (neither minute nor hour starts with "*": "30 2 * * *", "0 0 * * 0",
// @daily) fires once per matching local time, at the first instant after
// the change when the clock skips that time and at the first occurrence
// when the clock repeats it; a wildcard job ("*/15 * * * *", "0 * * * *",
// @hourly) follows the clock: times that do not exist do not fire, times
// that occur twice fire twice.
//
// Expressions that can never fire ("0 0 31 2 *", "0 0 30 2 *") are refused.
// "@every" and "@reboot" are refused: they count from when they are read,
// so instances would not agree on ticks; use [Every].
func Cron(expr string) (CronSchedule, error) {
	src := strings.TrimSpace(expr)
	hint := "want five fields: minute hour day-of-month month day-of-week, e.g. \"30 3 * * *\", optionally prefixed by CRON_TZ=Europe/Paris"
	if strings.HasPrefix(src, "@every") || strings.HasPrefix(src, "@reboot") {
		return CronSchedule{}, fmt.Errorf("%w: %q: @every and @reboot count from process start, so instances would disagree on ticks; use periodic.Every(d)", ErrInvalidSchedule, expr)
	}
	loc := time.UTC
	for _, prefix := range []string{"CRON_TZ=", "TZ="} {
		if !strings.HasPrefix(src, prefix) {
			continue
		}
		name, rest, _ := strings.Cut(strings.TrimPrefix(src, prefix), " ")
		if name == "" || name == "Local" {
			return CronSchedule{}, fmt.Errorf("%w: %q: %s needs an IANA zone name such as Europe/Paris (the machine's local zone is never used: instances may not share it)", ErrInvalidSchedule, expr, prefix)
		}
		l, err := time.LoadLocation(name)
		if err != nil {
			return CronSchedule{}, fmt.Errorf("%w: %q: zone %q: %w (import time/tzdata if the machine has no tzdata)", ErrInvalidSchedule, expr, name, err)
		}
		loc, src = l, strings.TrimSpace(rest)
		break
	}
	spec, err := parseCronFields(src)
	if err != nil {
		return CronSchedule{}, fmt.Errorf("%w: %q: %w (%s)", ErrInvalidSchedule, expr, err, hint)
	}
	var w wallWalk
	if _, ok := spec.nextDate(&w, 0, wallHorizonDays); !ok {
		return CronSchedule{}, fmt.Errorf("%w: %q can never fire: no date matches its day-of-month, month and day-of-week fields (day-of-month and day-of-week combine with AND when either starts with \"*\")", ErrInvalidSchedule, expr)
	}
	return CronSchedule{expr: strings.TrimSpace(expr), spec: spec, loc: loc, exprLoc: loc}, nil
}

// MustCron is Cron that panics on error, for expressions fixed in code.
func MustCron(expr string) CronSchedule {
	c, err := Cron(expr)
	if err != nil {
		panic(err)
	}
	return c
}

// In reads the expression in loc (overriding any CRON_TZ prefix).
func (c CronSchedule) In(loc *time.Location) CronSchedule {
	if c.spec == nil || loc == nil {
		return c
	}
	c.loc = loc
	return c
}

// Jitter delays the firing of each tick by a deterministic amount in
// [0, max) (see [Jittered]). max must be under a minute, the shortest cron
// interval.
func (c CronSchedule) Jitter(max time.Duration) CronSchedule {
	c.jitter = max
	return c
}

// JitterMax implements [Jittered].
func (c CronSchedule) JitterMax() time.Duration { return c.jitter }

// Location returns the zone the expression is read in.
func (c CronSchedule) Location() *time.Location {
	if c.spec == nil {
		return time.UTC
	}
	return c.loc
}

// Err reports a construction error (the zero CronSchedule, or bad jitter).
func (c CronSchedule) Err() error {
	switch {
	case c.spec == nil:
		return fmt.Errorf("%w: the zero CronSchedule; build one with periodic.Cron", ErrInvalidSchedule)
	case c.jitter < 0 || c.jitter >= time.Minute:
		return fmt.Errorf("%w: %q: jitter %s must be in [0, 1m)", ErrInvalidSchedule, c.expr, c.jitter)
	}
	return nil
}

func (c CronSchedule) String() string {
	s := "cron " + c.expr
	if c.spec != nil && (!strings.Contains(c.expr, "TZ=") || c.loc != c.exprLoc) {
		s += " (" + c.loc.String() + ")"
	}
	if c.jitter != 0 {
		s += fmt.Sprintf(" jitter %s", c.jitter)
	}
	return s
}

func (c CronSchedule) wall() *wallSched {
	return &wallSched{loc: c.loc, set: c.spec, fixed: c.spec.fixed()}
}

// NextTick implements [BoundedSchedule].
func (c CronSchedule) NextTick(after time.Time) (time.Time, error) {
	if c.spec == nil {
		return time.Time{}, fmt.Errorf("%w: %w", ErrNoNextTick, c.Err())
	}
	n, _, err := c.wall().next(after)
	return n, err
}

// PrevTick implements [BoundedSchedule].
func (c CronSchedule) PrevTick(before time.Time) (time.Time, error) {
	if c.spec == nil {
		return time.Time{}, fmt.Errorf("%w: %w", ErrNoPrevTick, c.Err())
	}
	p, _, err := c.wall().prev(before)
	return p, err
}

// Next implements [Schedule].
func (c CronSchedule) Next(t time.Time) time.Time {
	n, _ := c.NextTick(t)
	return n
}

// Prev implements [Schedule].
func (c CronSchedule) Prev(t time.Time) time.Time {
	p, _ := c.PrevTick(t)
	return p
}

// scheduleNext returns the first tick after t, bounded: schedules that
// implement [BoundedSchedule] say why there is none; for others, a zero
// Time or one not after t is reported as [ErrNoNextTick].
func scheduleNext(s Schedule, t time.Time) (time.Time, error) {
	if b, ok := s.(BoundedSchedule); ok {
		return b.NextTick(t)
	}
	n := s.Next(t)
	if n.IsZero() || !n.After(t) {
		return time.Time{}, fmt.Errorf("%w: %s: Next(%s) = %s", ErrNoNextTick, s, t.Format(time.RFC3339Nano), n.Format(time.RFC3339Nano))
	}
	return n, nil
}

// schedulePrev is scheduleNext for Prev and [ErrNoPrevTick].
func schedulePrev(s Schedule, t time.Time) (time.Time, error) {
	if b, ok := s.(BoundedSchedule); ok {
		return b.PrevTick(t)
	}
	p := s.Prev(t)
	if p.IsZero() || !p.Before(t) {
		return time.Time{}, fmt.Errorf("%w: %s: Prev(%s) = %s", ErrNoPrevTick, s, t.Format(time.RFC3339Nano), p.Format(time.RFC3339Nano))
	}
	return p, nil
}

// scheduleErr returns a schedule's construction error, if it reports one.
func scheduleErr(s Schedule) error {
	if s == nil {
		return fmt.Errorf("%w: nil; use periodic.Every(d) or periodic.Cron(expr)", ErrInvalidSchedule)
	}
	if e, ok := s.(interface{ Err() error }); ok {
		return e.Err()
	}
	return nil
}

// jitterFor is the firing delay of tick for job: deterministic in [0, max),
// and shorter than the time to the next tick, so that ticks fire in order
// where a clock change brings two ticks closer than the jitter (a
// fixed-time schedule's tick at the end of a gap).
func jitterFor(s Schedule, job string, tick time.Time) time.Duration {
	j, ok := s.(Jittered)
	if !ok {
		return 0
	}
	max := j.JitterMax()
	if e, ok := s.(EverySchedule); !ok || e.loc != nil {
		if n, err := scheduleNext(s, tick); err == nil && n.Sub(tick) < max {
			max = n.Sub(tick)
		}
	}
	if max < time.Microsecond {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(job))
	var b [8]byte
	u := uint64(tick.UnixMicro())
	for i := range b {
		b[i] = byte(u >> (8 * i))
	}
	_, _ = h.Write(b[:])
	return time.Duration(h.Sum64()%uint64(max/time.Microsecond)) * time.Microsecond
}

// latestAtOrBefore returns the last tick at or before t (zero if none).
func latestAtOrBefore(s Schedule, t time.Time) time.Time {
	p, _ := schedulePrev(s, t)
	if n := s.Next(p); !p.IsZero() && !n.IsZero() && !n.After(t) {
		return n
	}
	if p.IsZero() {
		if n := s.Next(t.Add(-time.Nanosecond)); !n.IsZero() && n.Equal(t) {
			return n
		}
	}
	return p
}

// countTicks returns the number of ticks in (after, upto], enumerating at
// most limit of them; ok is false if it gave up.
func countTicks(s Schedule, after, upto time.Time, limit int64) (n int64, ok bool) {
	if e, isEvery := s.(EverySchedule); isEvery {
		if n, ok := e.count(after, upto); ok {
			return n, true
		}
	}
	for t := s.Next(after); !t.IsZero() && !t.After(upto); t = s.Next(t) {
		n++
		if n > limit {
			return n, false
		}
	}
	return n, true
}

// interval returns the schedule's current nominal interval around t: the
// gap between the last tick at or before t and the one after it.
func interval(s Schedule, t time.Time) time.Duration {
	if e, ok := s.(EverySchedule); ok {
		return e.d
	}
	p := latestAtOrBefore(s, t)
	if p.IsZero() {
		p = s.Next(t)
	}
	n := s.Next(p)
	if p.IsZero() || n.IsZero() {
		return 0
	}
	return n.Sub(p)
}
