package periodic

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// This file computes the ticks of wall-clock schedules ([Cron], and [Every]
// with [EverySchedule.In]) by walking local calendar dates and the zone's
// offset periods, with a bound on every loop. The rules are those of doc.go,
// "Schedules and daylight saving time":
//
//   - a schedule matches a set of wall-clock times W (a local date and a
//     time of day, microsecond resolution);
//   - a fixed-time schedule fires each W once, at the first instant at which
//     the local clock reads W or later: W itself if it exists (its first
//     occurrence if the clock passes it twice), the end of the gap if W was
//     skipped;
//   - a wildcard schedule fires at every instant whose local clock reads a
//     matching W: twice in a repeated hour, never in a skipped one.
//
// Wall-clock times and instants are int64 microseconds: instants since the
// Unix epoch, wall-clock times since 1970-01-01T00:00 on the local clock.

const (
	usPerDay = int64(24 * time.Hour / time.Microsecond)
	// wallHorizonDays bounds every calendar search: one 400-year Gregorian
	// cycle (after which dates repeat with the same weekdays) plus a year.
	wallHorizonDays = 146097 + 366
	// wallMaxPeriods bounds the walk over a zone's offset periods when a
	// wildcard schedule looks for a wall-clock time that exists.
	wallMaxPeriods = 4096
	// wallMaxSteps bounds the work of one Next or Prev (calendar days,
	// months skipped and zone periods visited).
	wallMaxSteps = 1 << 20
	// zoneReach is more than any UTC offset in tzdata (+15:13:42 and
	// -15:56:08 are the extremes, both local mean times before 1900), plus
	// a margin: every instant whose local clock reads W lies in
	// [W-zoneReach, W+zoneReach].
	zoneReach = int64(18 * time.Hour / time.Microsecond)
)

// wallWalk counts the work of one search.
type wallWalk struct{ steps int }

func (w *wallWalk) step() bool {
	w.steps++
	return w.steps <= wallMaxSteps
}

// wallSet is a set of wall-clock times: matching dates times matching
// times of day.
type wallSet interface {
	// nextDate returns the first matching date in [day, limit].
	nextDate(w *wallWalk, day, limit int64) (int64, bool)
	// prevDate returns the last matching date in [limit, day].
	prevDate(w *wallWalk, day, limit int64) (int64, bool)
	// firstTod returns the first matching time of day >= tod (µs in a day).
	firstTod(tod int64) (int64, bool)
	// lastTod returns the last matching time of day <= tod.
	lastTod(tod int64) (int64, bool)
}

// firstWall returns the first matching wall-clock time >= x.
func firstWall(s wallSet, w *wallWalk, x int64) (int64, bool) {
	day := floorDiv(x, usPerDay)
	if d, ok := s.nextDate(w, day, day); ok {
		if tod, ok := s.firstTod(x - d*usPerDay); ok {
			return d*usPerDay + tod, true
		}
	}
	d, ok := s.nextDate(w, day+1, day+wallHorizonDays)
	if !ok {
		return 0, false
	}
	tod, _ := s.firstTod(0)
	return d*usPerDay + tod, true
}

// lastWall returns the last matching wall-clock time <= x.
func lastWall(s wallSet, w *wallWalk, x int64) (int64, bool) {
	day := floorDiv(x, usPerDay)
	if d, ok := s.prevDate(w, day, day); ok {
		if tod, ok := s.lastTod(x - d*usPerDay); ok {
			return d*usPerDay + tod, true
		}
	}
	d, ok := s.prevDate(w, day-1, day-wallHorizonDays)
	if !ok {
		return 0, false
	}
	tod, _ := s.lastTod(usPerDay - 1)
	return d*usPerDay + tod, true
}

// zonePeriod is a span of instants [start, end) with one UTC offset.
type zonePeriod struct{ start, end, off int64 }

func periodAt(loc *time.Location, u int64) zonePeriod {
	t := time.UnixMicro(u).In(loc)
	_, off := t.Zone()
	s, e := t.ZoneBounds()
	p := zonePeriod{start: math.MinInt64, end: math.MaxInt64, off: int64(off) * 1e6}
	if !s.IsZero() {
		p.start = s.UnixMicro()
	}
	if !e.IsZero() {
		p.end = e.UnixMicro()
	}
	// Past a zone's last explicit transition Go computes offsets from the
	// zone's rule (the TZif footer), and its bounds are not always those
	// of the period (Go 1.26, time.tzset): they may be the start or end of
	// the UTC year (harmless: the offset is the same on both sides); on 31
	// December of a leap year the end is that day's 00:00 UTC, before u;
	// and the start may be the rule's last change of the year even if an
	// explicit transition came later (tzdata's slim files, as in Go's own
	// copy, end their explicit transitions early). The offsets are right.
	if p.end <= u {
		p.end = time.Date(t.UTC().Year()+1, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	}
	if p.start != math.MinInt64 && offsetAt(loc, p.start) != p.off {
		// The true start is in (p.start, u]: the first second from which
		// the offset is p.off (transitions fall on whole seconds).
		lo, hi := floorDiv(p.start, 1e6), floorDiv(u, 1e6) // offset(lo) != p.off, offset(hi) == p.off
		for hi-lo > 1 {
			if mid := lo + (hi-lo)/2; offsetAt(loc, mid*1e6) == p.off {
				hi = mid
			} else {
				lo = mid
			}
		}
		p.start = max(hi*1e6, p.start)
	}
	return p
}

func offsetAt(loc *time.Location, u int64) int64 {
	_, off := time.UnixMicro(u).In(loc).Zone()
	return int64(off) * 1e6
}

// wallSched is a wall-clock schedule in a zone.
type wallSched struct {
	loc   *time.Location
	set   wallSet
	fixed bool
}

func ceilMicro(t time.Time) int64 {
	u := t.UnixMicro()
	if t.Nanosecond()%1000 != 0 {
		u++
	}
	return u
}

// highWater returns the latest wall-clock time the local clock has read at
// or before instant u: the clock's reading at u, or a higher reading from
// before a recent backward change.
func (s *wallSched) highWater(w *wallWalk, u int64) int64 {
	p := periodAt(s.loc, u)
	hw := u + p.off
	// Earlier periods matter only if their clock ran ahead of u's: their
	// end is within the largest difference of two offsets of u.
	for start := p.start; start != math.MinInt64 && start > u-2*zoneReach && w.step(); {
		q := periodAt(s.loc, start-1)
		if x := start - 1 + q.off; x > hw {
			hw = x
		}
		start = q.start
	}
	return hw
}

// firstReading returns the first instant at which the local clock reads W
// or later: W's first occurrence, or the end of the gap that skips it.
func (s *wallSched) firstReading(w *wallWalk, W int64) (int64, bool) {
	x := W - zoneReach // the clock reads less than W at x and before
	for w.step() {
		p := periodAt(s.loc, x)
		if p.end == math.MaxInt64 || p.end+p.off > W {
			return max(x, W-p.off), true
		}
		x = p.end
	}
	return 0, false
}

func (s *wallSched) next(t time.Time) (time.Time, int, error) {
	var w wallWalk
	u, ok := s.nextMicro(&w, t.UnixMicro())
	if !ok {
		return time.Time{}, w.steps, fmt.Errorf("%w: none found after %s within the search bound (%d years of dates, %d zone periods)", ErrNoNextTick, t.UTC().Format(time.RFC3339), wallHorizonDays/365, wallMaxPeriods)
	}
	return time.UnixMicro(u).UTC(), w.steps, nil
}

func (s *wallSched) prev(t time.Time) (time.Time, int, error) {
	var w wallWalk
	u, ok := s.prevMicro(&w, ceilMicro(t)-1)
	if !ok {
		return time.Time{}, w.steps, fmt.Errorf("%w: none found before %s within the search bound (%d years of dates, %d zone periods)", ErrNoPrevTick, t.UTC().Format(time.RFC3339), wallHorizonDays/365, wallMaxPeriods)
	}
	return time.UnixMicro(u).UTC(), w.steps, nil
}

// nextMicro returns the first tick after instant u.
func (s *wallSched) nextMicro(w *wallWalk, u int64) (int64, bool) {
	if s.fixed {
		// The first wall-clock time the clock has not reached by u.
		W, ok := firstWall(s.set, w, s.highWater(w, u)+1)
		if !ok {
			return 0, false
		}
		return s.firstReading(w, W)
	}
	// W, the first matching wall-clock time >= lo, stays the answer for a
	// later bound in [lo, W] (the clock went forward, not past W).
	x := u + 1
	var W, lo int64
	have := false
	for i := 0; i < wallMaxPeriods && w.step(); i++ {
		p := periodAt(s.loc, x)
		if b := x + p.off; !have || b < lo || b > W {
			var ok bool
			if W, ok = firstWall(s.set, w, b); !ok {
				return 0, false
			}
			lo, have = b, true
		}
		if p.end == math.MaxInt64 || W-p.off < p.end {
			return W - p.off, true
		}
		x = p.end
	}
	return 0, false
}

// prevMicro returns the last tick at or before instant v.
func (s *wallSched) prevMicro(w *wallWalk, v int64) (int64, bool) {
	if s.fixed {
		W, ok := lastWall(s.set, w, s.highWater(w, v))
		if !ok {
			return 0, false
		}
		return s.firstReading(w, W)
	}
	x := v
	var W, hi int64
	have := false
	for i := 0; i < wallMaxPeriods && w.step(); i++ {
		p := periodAt(s.loc, x)
		if b := x + p.off; !have || b > hi || b < W {
			var ok bool
			if W, ok = lastWall(s.set, w, b); !ok {
				return 0, false
			}
			hi, have = b, true
		}
		if p.start == math.MinInt64 || W-p.off >= p.start {
			return W - p.off, true
		}
		x = p.start - 1
	}
	return 0, false
}

// civilFromDays converts days since 1970-01-01 to a proleptic Gregorian
// date (month and day from 1), after Howard Hinnant's chrono-compatible
// low-level date algorithms.
func civilFromDays(z int64) (y, m, d int64) {
	z += 719468
	era := floorDiv(z, 146097)
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d = doy - (153*mp+2)/5 + 1
	m = mp + 3
	if m > 12 {
		m -= 12
	}
	y = yoe + era*400
	if m <= 2 {
		y++
	}
	return y, m, d
}

func weekdayOf(z int64) int64 { return floorMod(z+4, 7) } // 1970-01-01 was a Thursday

func floorMod(a, b int64) int64 { return a - floorDiv(a, b)*b }

func daysIn(y, m int64) int64 {
	switch m {
	case 2:
		if y%4 == 0 && (y%100 != 0 || y%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// cronSpec as a wallSet.

func (s *cronSpec) nextDate(w *wallWalk, day, limit int64) (int64, bool) {
	y, m, d := civilFromDays(day)
	for day <= limit && w.step() {
		if s.f[3].set&(1<<m) == 0 {
			day += daysIn(y, m) - d + 1
			d, m = 1, m+1
		} else {
			if s.dateMatches(int(m), int(d), int(weekdayOf(day))) {
				return day, true
			}
			day, d = day+1, d+1
			if d <= daysIn(y, m) {
				continue
			}
			d, m = 1, m+1
		}
		if m > 12 {
			m, y = 1, y+1
		}
	}
	return 0, false
}

func (s *cronSpec) prevDate(w *wallWalk, day, limit int64) (int64, bool) {
	y, m, d := civilFromDays(day)
	for day >= limit && w.step() {
		if s.f[3].set&(1<<m) == 0 {
			day -= d
		} else {
			if s.dateMatches(int(m), int(d), int(weekdayOf(day))) {
				return day, true
			}
			day, d = day-1, d-1
			if d >= 1 {
				continue
			}
		}
		if m--; m < 1 {
			m, y = 12, y-1
		}
		d = daysIn(y, m)
	}
	return 0, false
}

const usPerMinute = int64(time.Minute / time.Microsecond)

func (s *cronSpec) firstTod(tod int64) (int64, bool) {
	// the first matching minute of the day at or after tod
	i, _ := slices.BinarySearch(s.tods, int32((tod+usPerMinute-1)/usPerMinute))
	if i == len(s.tods) {
		return 0, false
	}
	return int64(s.tods[i]) * usPerMinute, true
}

func (s *cronSpec) lastTod(tod int64) (int64, bool) {
	// the last matching minute of the day at or before tod
	i, found := slices.BinarySearch(s.tods, int32(tod/usPerMinute))
	if !found {
		i--
	}
	if i < 0 {
		return 0, false
	}
	return int64(s.tods[i]) * usPerMinute, true
}

// everyGrid is the times of day offset + k*d of [Every] with
// [EverySchedule.In], on every date.
type everyGrid struct{ d, offset int64 } // µs; d divides a day, offset < d

func (everyGrid) nextDate(_ *wallWalk, day, limit int64) (int64, bool) { return day, day <= limit }
func (everyGrid) prevDate(_ *wallWalk, day, limit int64) (int64, bool) { return day, day >= limit }

func (g everyGrid) firstTod(tod int64) (int64, bool) {
	if tod <= g.offset {
		return g.offset, true
	}
	x := g.offset + (tod-g.offset+g.d-1)/g.d*g.d
	return x, x < usPerDay
}

func (g everyGrid) lastTod(tod int64) (int64, bool) {
	if tod < g.offset {
		return 0, false
	}
	return g.offset + (tod-g.offset)/g.d*g.d, true
}
