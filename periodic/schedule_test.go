package periodic_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/periodic"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func ticks(s periodic.Schedule, from time.Time, n int) []time.Time {
	var out []time.Time
	for t := s.Next(from); len(out) < n; t = s.Next(t) {
		out = append(out, t)
	}
	return out
}

func TestEveryGridIsAlignedAndIndependentOfStart(t *testing.T) {
	t.Parallel()
	s := periodic.Every(6 * time.Hour)
	base := time.Date(2026, 4, 17, 18, 55, 3, 0, time.UTC)
	got := ticks(s, base, 3)
	want := []time.Time{
		time.Date(2026, 4, 18, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 4, 18, 6, 0, 0, 0, time.UTC),
		time.Date(2026, 4, 18, 12, 0, 0, 0, time.UTC),
	}
	for i := range want {
		if !got[i].Equal(want[i]) {
			t.Errorf("tick %d = %s, want %s", i, got[i], want[i])
		}
	}
	// Two instances starting at different moments compute the same grid.
	a := ticks(s, base.Add(-time.Hour), 2)
	b := ticks(s, base.Add(3*time.Minute), 1)
	if !a[1].Equal(b[0]) {
		t.Errorf("grids differ: %s vs %s", a[1], b[0])
	}
	// Next is strict, Prev is strict.
	tick := want[0]
	if n := s.Next(tick); !n.Equal(want[1]) {
		t.Errorf("Next(on a tick) = %s, want %s", n, want[1])
	}
	if p := s.Prev(tick); !p.Equal(tick.Add(-6 * time.Hour)) {
		t.Errorf("Prev(on a tick) = %s, want %s", p, tick.Add(-6*time.Hour))
	}
	if p := s.Prev(tick.Add(time.Nanosecond)); !p.Equal(tick) {
		t.Errorf("Prev(just after a tick) = %s, want %s", p, tick)
	}
	// Thirty seconds: :00 and :30 of every minute.
	got = ticks(periodic.Every(30*time.Second), time.Date(2026, 1, 1, 0, 0, 7, 0, time.UTC), 2)
	if got[0].Second() != 30 || got[1].Second() != 0 {
		t.Errorf("Every(30s) ticks %v, want :30 and :00", got)
	}
}

func TestEveryOffsetAndLocalMidnight(t *testing.T) {
	t.Parallel()
	daily3 := periodic.Every(24 * time.Hour).Offset(3 * time.Hour)
	if got := daily3.Next(time.Date(2026, 5, 1, 4, 0, 0, 0, time.UTC)); !got.Equal(time.Date(2026, 5, 2, 3, 0, 0, 0, time.UTC)) {
		t.Errorf("daily at 03:00 UTC: next %s", got)
	}
	paris := mustLoc(t, "Europe/Paris")
	daily2 := periodic.Every(24 * time.Hour).Offset(2 * time.Hour).In(paris)
	// Ticks are local midnight plus the offset as a duration: 02:00 on
	// ordinary days; on the spring-forward day (29 March 2026, 02:00 does
	// not exist) midnight + 2h is 03:00 CEST.
	got := ticks(daily2, time.Date(2026, 3, 27, 12, 0, 0, 0, paris), 3)
	for i, wantHour := range []int{2, 3, 2} {
		if l := got[i].In(paris); l.Hour() != wantHour || l.Minute() != 0 || l.Day() != 28+i {
			t.Errorf("tick %d at %s local, want day %d %02d:00", i, l, 28+i, wantHour)
		}
	}
	hourly := periodic.Every(time.Hour).In(paris)
	n := 0
	day := time.Date(2026, 10, 25, 0, 0, 0, 0, paris) // 25-hour day
	for x := hourly.Next(day.Add(-time.Nanosecond)); x.Before(time.Date(2026, 10, 26, 0, 0, 0, 0, paris)); x = hourly.Next(x) {
		n++
	}
	if n != 25 {
		t.Errorf("hourly ticks on the 25-hour day: %d, want 25", n)
	}
	for _, x := range ticks(hourly, day, 30) {
		if p := hourly.Prev(hourly.Next(x)); !p.Equal(x) {
			t.Fatalf("Prev(Next(%s)) = %s", x, p)
		}
	}
}

func TestEveryJitterIsDeterministicAndBounded(t *testing.T) {
	t.Parallel()
	s := periodic.Every(time.Minute).Jitter(10 * time.Second)
	tick := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	seen := map[time.Duration]bool{}
	for i := 0; i < 100; i++ {
		tk := tick.Add(time.Duration(i) * time.Minute)
		d := periodic.FireAt(s, "job", tk).Sub(tk)
		if d < 0 || d >= 10*time.Second || d%time.Microsecond != 0 {
			t.Fatalf("jitter %s out of [0, 10s) or finer than 1µs", d)
		}
		if again := periodic.FireAt(s, "job", tk); !again.Equal(tk.Add(d)) {
			t.Fatal("jitter is not deterministic")
		}
		seen[d] = true
	}
	if len(seen) < 50 {
		t.Errorf("only %d distinct delays over 100 ticks", len(seen))
	}
	if periodic.FireAt(s, "a", tick).Equal(periodic.FireAt(s, "b", tick)) {
		t.Errorf("two jobs got the same delay (possible, but unlikely enough to mean the job is ignored)")
	}
}

func TestScheduleErrorsNameTheFix(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		s    periodic.Schedule
		want string
	}{
		{periodic.Every(time.Millisecond), "at least 10ms"},
		{periodic.Every(1500*time.Millisecond + 500*time.Microsecond), "whole number of milliseconds"},
		{periodic.Every(time.Hour).Offset(2 * time.Hour), "offset"},
		{periodic.Every(7 * time.Hour).In(time.UTC), "divide 24h"},
		{periodic.Every(time.Second).Jitter(time.Second), "jitter"},
		{periodic.MustCron("* * * * *").Jitter(2 * time.Minute), "jitter"},
		{periodic.CronSchedule{}, "zero CronSchedule"},
	} {
		err := c.s.(interface{ Err() error }).Err()
		if !errors.Is(err, periodic.ErrInvalidSchedule) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want ErrInvalidSchedule mentioning %q", c.s, err, c.want)
		}
	}
	for _, expr := range []string{"@every 5m", "61 * * * *", "* * *", "CRON_TZ=Mars/Olympus 0 * * * *"} {
		if _, err := periodic.Cron(expr); !errors.Is(err, periodic.ErrInvalidSchedule) {
			t.Errorf("Cron(%q): err %v, want ErrInvalidSchedule", expr, err)
		}
	}
}

func TestCronZonesAndDST(t *testing.T) {
	t.Parallel()
	// UTC unless a zone is given: never the machine's zone.
	c := periodic.MustCron("30 3 * * *")
	if got := c.Next(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); !got.Equal(time.Date(2026, 1, 1, 3, 30, 0, 0, time.UTC)) {
		t.Errorf("UTC default: %s", got)
	}
	tokyo := periodic.MustCron("CRON_TZ=Asia/Tokyo 0 9 * * *")
	if got := tokyo.Next(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); !got.Equal(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("Tokyo 09:00: %s", got)
	}
	ny := mustLoc(t, "America/New_York")
	// 02:30 does not exist on 8 March 2026 in New York: it fires once,
	// after the change, and the day is not skipped.
	daily := periodic.MustCron("30 2 * * *").In(ny)
	got := ticks(daily, time.Date(2026, 3, 7, 12, 0, 0, 0, ny), 2)
	if d := got[0].In(ny); d.Day() != 8 {
		t.Errorf("spring-forward day skipped: first tick %s", d)
	}
	if d := got[1].In(ny); d.Day() != 9 || d.Hour() != 2 || d.Minute() != 30 {
		t.Errorf("day after: %s", d)
	}
	// Vixie cron: day-of-month OR day-of-week.
	fri13 := periodic.MustCron("0 0 13 * 5")
	got = ticks(fri13, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 3)
	if got[0].Day() != 2 || got[1].Day() != 9 || got[2].Day() != 13 {
		t.Errorf("0 0 13 * 5: %v, want Jan 2 (Fri), 9 (Fri), 13 (13th)", got)
	}
	// Prev agrees with Next.
	h := periodic.MustCron("*/15 * * * *")
	x := time.Date(2026, 11, 1, 5, 7, 0, 0, time.UTC)
	if p := h.Prev(x); !p.Equal(time.Date(2026, 11, 1, 5, 0, 0, 0, time.UTC)) {
		t.Errorf("Prev = %s", p)
	}
	if p := h.Prev(time.Date(2026, 11, 1, 5, 15, 0, 0, time.UTC)); !p.Equal(time.Date(2026, 11, 1, 5, 0, 0, 0, time.UTC)) {
		t.Errorf("Prev(on a tick) = %s, want strictly before", p)
	}
}

// nextWithin is s.Next(t), failing the test if it does not return within
// a few seconds (the schedule once looped forever).
func nextWithin(t *testing.T, s periodic.Schedule, at time.Time) time.Time {
	t.Helper()
	done := make(chan time.Time, 1)
	go func() { done <- s.Next(at) }()
	select {
	case n := <-done:
		return n
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: Next(%s) did not return within 10s", s, at)
		return time.Time{}
	}
}

// Local midnight does not exist in Santiago on 6 September 2026 (and in
// Havana on 8 March 2026): hourly ticks go on through the change.
func TestEveryHourInZoneWithMidnightGapReturns(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		zone     string
		from, to time.Time
	}{
		{"America/Santiago", time.Date(2026, 9, 6, 2, 0, 0, 0, time.UTC), time.Date(2026, 9, 7, 3, 0, 0, 0, time.UTC)},
		{"America/Havana", time.Date(2026, 3, 8, 3, 0, 0, 0, time.UTC), time.Date(2026, 3, 9, 6, 0, 0, 0, time.UTC)},
	} {
		loc := mustLoc(t, c.zone)
		s := periodic.Every(time.Hour).In(loc)
		for at := c.from; at.Before(c.to); at = at.Add(7 * time.Minute) {
			n := nextWithin(t, s, at)
			// Offsets are whole hours there: the next tick is the next
			// whole hour of elapsed time.
			if want := at.Truncate(time.Hour).Add(time.Hour); !n.Equal(want) {
				t.Fatalf("%s: Next(%s) = %s, want %s", c.zone, at.In(loc), n.In(loc), want.In(loc))
			}
		}
	}
}

// A daily midnight job fires on the day whose midnight does not exist, at
// the end of the gap, and a weekly one does not skip that week.
func TestCronMidnightGapStillFiresThatDay(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		expr string
		from time.Time // local, a day before the change
		want time.Time // local, the instant after the gap
	}{
		{"CRON_TZ=America/Santiago 0 0 * * *", time.Date(2026, 9, 5, 12, 0, 0, 0, time.UTC), time.Date(2026, 9, 6, 4, 0, 0, 0, time.UTC)},
		{"CRON_TZ=America/Havana 0 0 * * *", time.Date(2026, 3, 7, 12, 0, 0, 0, time.UTC), time.Date(2026, 3, 8, 5, 0, 0, 0, time.UTC)},
		{"CRON_TZ=Africa/Cairo 0 0 * * *", time.Date(2026, 4, 23, 12, 0, 0, 0, time.UTC), time.Date(2026, 4, 23, 22, 0, 0, 0, time.UTC)},
		{"CRON_TZ=Asia/Beirut 0 0 * * *", time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC), time.Date(2026, 3, 28, 22, 0, 0, 0, time.UTC)},
		// Havana's DST starts at midnight on the second Sunday of March.
		{"CRON_TZ=America/Havana 0 0 * * 0", time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC), time.Date(2026, 3, 8, 5, 0, 0, 0, time.UTC)},
	} {
		c := c
		s := periodic.MustCron(c.expr)
		got := nextWithin(t, s, c.from)
		if !got.Equal(c.want) {
			t.Errorf("%s: Next(%s) = %s, want %s (the end of the gap)", c.expr, c.from, got.In(s.Location()), c.want.In(s.Location()))
		}
		// And the next tick is the following period's, not a second one.
		n := nextWithin(t, s, got)
		if d := n.Sub(got); d < 23*time.Hour {
			t.Errorf("%s: tick after %s is %s, only %s later", c.expr, got.In(s.Location()), n.In(s.Location()), d)
		}
	}
}

// 01:30 occurs twice in New York on 1 November 2026: a daily 01:30 job
// runs once, at the first occurrence (cron(8): fixed-time jobs are not
// re-run in the repeated hour).
func TestCronRepeatedHourRunsDailyJobOnce(t *testing.T) {
	t.Parallel()
	ny := mustLoc(t, "America/New_York")
	s := periodic.MustCron("CRON_TZ=America/New_York 30 1 * * *")
	got := ticks(s, time.Date(2026, 10, 31, 12, 0, 0, 0, ny), 3)
	want := []time.Time{
		time.Date(2026, 11, 1, 5, 30, 0, 0, time.UTC), // 01:30 EDT
		time.Date(2026, 11, 2, 6, 30, 0, 0, time.UTC), // 01:30 EST the next day
		time.Date(2026, 11, 3, 6, 30, 0, 0, time.UTC),
	}
	for i := range want {
		if !got[i].Equal(want[i]) {
			t.Errorf("tick %d = %s, want %s", i, got[i].In(ny), want[i].In(ny))
		}
	}
	// A wildcard job follows the clock: */30 fires at both 01:30s.
	w := periodic.MustCron("CRON_TZ=America/New_York */30 * * * *")
	n := 0
	for x := w.Next(time.Date(2026, 11, 1, 0, 59, 0, 0, ny)); x.Before(time.Date(2026, 11, 1, 2, 0, 0, 0, ny)); x = w.Next(x) {
		n++
	}
	if n != 4 {
		t.Errorf("*/30 between 01:00 EDT and 02:00 EST: %d ticks, want 4 (01:00, 01:30 EDT and EST)", n)
	}
}

// Every(24h).Offset(20h).In(zone) fires at 20:00 on the local clock every
// day, including the days the clocks change.
func TestEveryDailyOffsetIsWallClockTime(t *testing.T) {
	t.Parallel()
	ny := mustLoc(t, "America/New_York")
	s := periodic.Every(24 * time.Hour).Offset(20 * time.Hour).In(ny)
	for _, day := range []time.Time{
		time.Date(2023, 3, 12, 0, 0, 0, 0, ny),
		time.Date(2023, 11, 5, 0, 0, 0, 0, ny),
		time.Date(2026, 3, 8, 0, 0, 0, 0, ny),
		time.Date(2026, 11, 1, 0, 0, 0, 0, ny),
	} {
		got := s.Next(day.Add(-time.Hour)).In(ny)
		if got.Year() != day.Year() || got.YearDay() != day.YearDay() || got.Hour() != 20 || got.Minute() != 0 {
			t.Errorf("Every(24h).Offset(20h).In(New York) on %s: %s, want 20:00 that day", day.Format(time.DateOnly), got)
		}
	}
	// And at 02:30 on the day 02:30 does not exist: the end of the gap.
	s = periodic.Every(24 * time.Hour).Offset(150 * time.Minute).In(ny)
	if got := s.Next(time.Date(2026, 3, 8, 0, 0, 0, 0, ny)); !got.Equal(time.Date(2026, 3, 8, 7, 0, 0, 0, time.UTC)) {
		t.Errorf("02:30 on the spring-forward day: %s, want 03:00 EDT", got.In(ny))
	}
}

func TestCronSyntaxFollowsVixieCron(t *testing.T) {
	t.Parallel()
	from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) // a Thursday
	for _, c := range []struct {
		expr string
		want []int // days of January 2026 of the first ticks
	}{
		{"0 0 13 * 5", []int{2, 9, 13}},     // both restricted: OR
		{"0 0 */2 * 1", []int{5, 19, 0}},    // day-of-month starts with "*": AND (odd days that are Mondays; then 2 Feb)
		{"0 0 1-7 * *", []int{1, 2, 3}},     // day-of-week "*": AND with every day
		{"0 0 * * 7", []int{4, 11, 18}},     // 7 is Sunday
		{"0 0 * * mon-fri", []int{1, 2, 5}}, // names, ranges of names
		{"@weekly", []int{4, 11, 18}},
	} {
		got := ticks(periodic.MustCron(c.expr), from.Add(-time.Second), 3)
		for i, d := range c.want {
			if d != 0 && (got[i].Month() != time.January || got[i].Day() != d) {
				t.Errorf("%s: ticks %v, want January days %v", c.expr, got, c.want)
				break
			}
		}
	}
	for _, c := range []struct{ expr, want string }{
		{"0 0 31 2 *", "can never fire"},
		{"0 0 30 2,4 * ", ""}, // 30 April exists
		{"0 0 31 4,6,9,11 *", "can never fire"},
		{"5/15 * * * *", `"5-59/15"`},
		{"*/0 * * * *", "step"},
		{"0 5-1 * * *", "backwards"},
		{"0 0 * * 8", "out of [0, 7]"},
		{"0 0 * foo *", "name"},
		{"1,*/2 * * * *", `"*" must be the first`},
		{"@reboot", "@reboot"},
		{"@fortnightly", "unknown descriptor"},
		{"0 0 * * * *", "6 fields"},
		{"CRON_TZ=Local 0 0 * * *", "IANA zone"},
	} {
		_, err := periodic.Cron(c.expr)
		if c.want == "" {
			if err != nil {
				t.Errorf("Cron(%q): %v", c.expr, err)
			}
			continue
		}
		if !errors.Is(err, periodic.ErrInvalidSchedule) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Cron(%q): err %v, want ErrInvalidSchedule mentioning %s", c.expr, err, c.want)
		}
	}
}

func TestNextTickReportsNoTick(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, s := range []periodic.BoundedSchedule{periodic.CronSchedule{}, periodic.Every(time.Millisecond), periodic.Every(7 * time.Hour).In(time.UTC)} {
		if _, err := s.NextTick(at); !errors.Is(err, periodic.ErrNoNextTick) {
			t.Errorf("%s: NextTick err %v, want ErrNoNextTick", s, err)
		}
		if _, err := s.PrevTick(at); !errors.Is(err, periodic.ErrNoPrevTick) {
			t.Errorf("%s: PrevTick err %v, want ErrNoPrevTick", s, err)
		}
		if !s.Next(at).IsZero() || !s.Prev(at).IsZero() {
			t.Errorf("%s: Next/Prev not zero", s)
		}
	}
	// Feb 29 on a Sunday (day-of-week "*/7" is a wildcard field, so AND):
	// 2032, then 2060; found, within the bound.
	s := periodic.MustCron("0 0 29 2 */7")
	n, err := s.NextTick(time.Date(2033, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil || !n.Equal(time.Date(2060, 2, 29, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("29 Feb on a Sunday after 2033: %s, %v", n, err)
	}
}

func TestCronStringNamesTheZoneInForce(t *testing.T) {
	t.Parallel()
	paris := mustLoc(t, "Europe/Paris")
	for _, c := range []struct {
		s    periodic.CronSchedule
		want string
	}{
		{periodic.MustCron("0 3 * * *"), "cron 0 3 * * * (UTC)"},
		{periodic.MustCron("CRON_TZ=Asia/Tokyo 0 9 * * *"), "cron CRON_TZ=Asia/Tokyo 0 9 * * *"},
		{periodic.MustCron("CRON_TZ=Asia/Tokyo 0 9 * * *").In(paris), "cron CRON_TZ=Asia/Tokyo 0 9 * * * (Europe/Paris)"},
	} {
		if got := c.s.String(); got != c.want {
			t.Errorf("String() = %q, want %q", got, c.want)
		}
	}
}
