package periodic

import (
	"testing"
	"time"
)

// FuzzCron: parsing never panics; an accepted expression has a canonical
// form that parses to the same schedule and formats to itself; Next and
// Prev end within their step bound, find a tick (accepted expressions can
// always fire) and agree with each other.
func FuzzCron(f *testing.F) {
	for _, s := range []string{
		"* * * * *", "*/15 * * * *", "30 2 * * *", "0 0 31 2 *", "0 0 29 2 *", "0 0 13 * 5", "0 0 */2 * 1",
		"5/15 * * * *", "0-59/7 1-3,22 1,15 jan-mar,DEC sun-sat", "*/20,5 * * * *", "0 0 * * 7", "@daily", "@hourly",
		"@weekly", "@every 1m", "CRON_TZ=America/Santiago 0 0 * * *", "TZ=Australia/Lord_Howe */30 2 * * *",
		"CRON_TZ=Local 0 0 * * *", "59 23 31 12 *", "0 0 30 2,4 *", "0 0 * * 0 extra", "61 * * * *", "*/0 * * * *",
	} {
		f.Add(s, int64(1790000000))
	}
	zones := []*time.Location{time.UTC}
	for _, n := range []string{"America/Santiago", "America/New_York", "Australia/Lord_Howe", "Pacific/Apia"} {
		if l, err := time.LoadLocation(n); err == nil {
			zones = append(zones, l)
		}
	}
	f.Fuzz(func(t *testing.T, expr string, sec int64) {
		c, err := Cron(expr)
		if err != nil {
			return
		}
		canon := c.spec.canonical()
		c2, err := Cron(canon)
		if err != nil {
			t.Fatalf("%q: canonical form %q does not parse: %v", expr, canon, err)
		}
		if c2.spec.f != c.spec.f || c2.spec.canonical() != canon {
			t.Fatalf("%q: canonical form %q parses to %+v, not %+v", expr, canon, c2.spec.f, c.spec.f)
		}
		// An instant between 1900 and 2200.
		const lo, span = -2208988800, 9467280000
		at := time.Unix(lo+((sec%span)+span)%span, 0)
		for _, loc := range append(zones, c.loc) {
			s := c.In(loc).wall()
			n, steps, err := s.next(at)
			if err != nil || steps > wallMaxSteps || !n.After(at) {
				t.Fatalf("%q in %s: Next(%s) = %s, %v after %d steps", expr, loc, at, n, err, steps)
			}
			p, steps, err := s.prev(n)
			if err != nil || steps > wallMaxSteps || p.After(at) || !p.Before(n) {
				t.Fatalf("%q in %s: Prev(Next(%s) = %s) = %s, %v after %d steps", expr, loc, at, n, p, err, steps)
			}
			if n2, _, _ := s.next(p); !n2.Equal(n) {
				t.Fatalf("%q in %s: Next(Prev(%s) = %s) = %s", expr, loc, n, p, n2)
			}
		}
	})
}
