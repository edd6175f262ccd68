package periodic

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	cron "github.com/netresearch/go-cron"
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

// Jittered is implemented by schedules that delay each tick's firing by a
// deterministic amount in [0, JitterMax()), spreading the load of many jobs
// that share a boundary. The delay is derived from the job name and the
// tick, so every instance fires a tick at the same moment; the tick's
// identity does not change.
type Jittered interface {
	JitterMax() time.Duration
}

// ErrInvalidSchedule matches every schedule construction error.
var ErrInvalidSchedule = errors.New("periodic: invalid schedule")

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
// [EverySchedule.Offset] shifts the grid, [EverySchedule.In] aligns it to
// local midnight in a time zone, [EverySchedule.Jitter] spreads firing.
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
// fires daily at 03:00 (UTC, or local time with In).
func (e EverySchedule) Offset(o time.Duration) EverySchedule {
	if e.err == nil && (o < 0 || o >= e.d || o%time.Microsecond != 0) {
		e.err = fmt.Errorf("%w: Every(%s).Offset(%s): the offset must be a whole number of microseconds in [0, %s)", ErrInvalidSchedule, e.d, o, e.d)
	}
	e.offset = o
	return e
}

// In aligns the grid to midnight in loc instead of the Unix epoch:
// Every(time.Hour).In(paris) fires on the hour of Paris wall-clock time,
// Every(24*time.Hour).Offset(2*time.Hour).In(paris) at 02:00 Paris time.
// Ticks restart at each local midnight, so on a day with a DST change the
// last interval of the day is shorter or longer. d must divide 24 hours.
func (e EverySchedule) In(loc *time.Location) EverySchedule {
	if e.err == nil {
		switch {
		case loc == nil:
			e.err = fmt.Errorf("%w: Every(%s).In(nil): pass a *time.Location (time.UTC, time.LoadLocation(...))", ErrInvalidSchedule, e.d)
		case (24*time.Hour)%e.d != 0:
			e.err = fmt.Errorf("%w: Every(%s).In(%s): the interval must divide 24h to align to local midnight", ErrInvalidSchedule, e.d, loc)
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

// Next implements [Schedule].
func (e EverySchedule) Next(t time.Time) time.Time {
	if e.err != nil {
		return time.Time{}
	}
	if e.loc == nil {
		d, base := int64(e.d), int64(e.offset)
		k := floorDiv(t.UnixNano()-base, d) + 1
		return time.Unix(0, base+k*d).UTC()
	}
	// Local-midnight grid: ticks of t's local day, else the next day's first.
	for day := localMidnight(t, e.loc); ; day = nextMidnight(day, e.loc) {
		end := nextMidnight(day, e.loc)
		first := day.Add(e.offset)
		if !t.Before(end) {
			continue
		}
		var c time.Time
		if t.Before(first) {
			c = first
		} else {
			k := int64(t.Sub(first))/int64(e.d) + 1
			c = first.Add(time.Duration(k) * e.d)
		}
		if c.Before(end) {
			return c.UTC()
		}
	}
}

// Prev implements [Schedule].
func (e EverySchedule) Prev(t time.Time) time.Time {
	if e.err != nil {
		return time.Time{}
	}
	if e.loc == nil {
		d, base := int64(e.d), int64(e.offset)
		k := floorDiv(t.UnixNano()-base-1, d)
		return time.Unix(0, base+k*d).UTC()
	}
	for day := localMidnight(t, e.loc); ; day = localMidnight(day.Add(-time.Nanosecond), e.loc) {
		first := day.Add(e.offset)
		end := nextMidnight(day, e.loc)
		if !first.Before(t) || !first.Before(end) {
			continue
		}
		last := t
		if end.Before(last) {
			last = end
		}
		k := (int64(last.Sub(first)) - 1) / int64(e.d)
		return first.Add(time.Duration(k) * e.d).UTC()
	}
}

// count returns the number of ticks in (after, upto].
func (e EverySchedule) count(after, upto time.Time) (int64, bool) {
	if e.loc != nil || !upto.After(after) {
		return 0, !upto.After(after)
	}
	d, base := int64(e.d), int64(e.offset)
	return floorDiv(upto.UnixNano()-base, d) - floorDiv(after.UnixNano()-base, d), true
}

func localMidnight(t time.Time, loc *time.Location) time.Time {
	l := t.In(loc)
	return time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, loc)
}

func nextMidnight(day time.Time, loc *time.Location) time.Time {
	l := day.In(loc)
	return time.Date(l.Year(), l.Month(), l.Day()+1, 0, 0, 0, 0, loc)
}

// CronSchedule fires on a cron expression. Build one with [Cron].
type CronSchedule struct {
	expr   string
	spec   *cron.SpecSchedule
	jitter time.Duration
}

var cronParser = cron.MustNewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor | cron.DowOrDom)

// Cron parses a standard five-field cron expression (minute hour
// day-of-month month day-of-week, with names, ranges, steps and lists) or a
// descriptor (@yearly, @monthly, @weekly, @daily, @hourly). Day-of-month and
// day-of-week combine with OR when both are restricted, as in Vixie cron.
//
// Times are read in UTC unless the expression starts with CRON_TZ=Zone (or
// TZ=Zone), or [CronSchedule.In] sets a zone; the machine's local zone is
// never used, since instances may not share it. In a zone with daylight
// saving time, a tick that falls in the skipped hour fires once right after
// the change, and a tick in the repeated hour fires once per occurrence of
// that wall-clock time (ISC cron behaviour).
//
// "@every" is refused: it counts from when it is read, so instances would not
// agree on ticks; use [Every].
func Cron(expr string) (CronSchedule, error) {
	src := strings.TrimSpace(expr)
	if strings.HasPrefix(src, "@every") {
		return CronSchedule{}, fmt.Errorf("%w: %q: @every counts from process start, so instances would disagree on ticks; use periodic.Every(d)", ErrInvalidSchedule, expr)
	}
	if !strings.HasPrefix(src, "TZ=") && !strings.HasPrefix(src, "CRON_TZ=") {
		src = "CRON_TZ=UTC " + src
	}
	s, err := cronParser.Parse(src)
	if err != nil {
		return CronSchedule{}, fmt.Errorf("%w: %q: %w (want five fields: minute hour day-of-month month day-of-week, e.g. \"30 3 * * *\", optionally prefixed by CRON_TZ=Europe/Paris)", ErrInvalidSchedule, expr, err)
	}
	spec, ok := s.(*cron.SpecSchedule)
	if !ok {
		return CronSchedule{}, fmt.Errorf("%w: %q is not a calendar expression", ErrInvalidSchedule, expr)
	}
	return CronSchedule{expr: strings.TrimSpace(expr), spec: spec}, nil
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
	spec := *c.spec
	spec.Location = loc
	c.spec = &spec
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
	return c.spec.Location
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
	if c.spec != nil && !strings.Contains(c.expr, "TZ=") {
		s += " (" + c.spec.Location.String() + ")"
	}
	if c.jitter != 0 {
		s += fmt.Sprintf(" jitter %s", c.jitter)
	}
	return s
}

// Next implements [Schedule].
func (c CronSchedule) Next(t time.Time) time.Time {
	if c.spec == nil {
		return time.Time{}
	}
	n := c.spec.Next(t)
	if n.IsZero() {
		return n
	}
	return n.UTC()
}

// Prev implements [Schedule].
func (c CronSchedule) Prev(t time.Time) time.Time {
	if c.spec == nil {
		return time.Time{}
	}
	p := c.spec.Prev(t)
	if p.IsZero() {
		return p
	}
	// Canonicalise through Next, the function that defines the ticks.
	for {
		if n := c.spec.Next(p); !n.IsZero() && n.Before(t) {
			p = n
			continue
		}
		return p.UTC()
	}
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

// jitterFor is the firing delay of tick for job: deterministic in [0, max).
func jitterFor(s Schedule, job string, tick time.Time) time.Duration {
	j, ok := s.(Jittered)
	if !ok {
		return 0
	}
	max := j.JitterMax()
	if max <= 0 {
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
	p := s.Prev(t)
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
