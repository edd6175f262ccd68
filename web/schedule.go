package web

import (
	"fmt"
	"strings"
	"time"

	"github.com/pgbaton/pgbaton/periodic"
)

// parseSchedule reads back a schedule from its String form as periodic
// records it in periodic_jobs.schedule ("every 1m0s offset 30s in
// Europe/Paris jitter 5s", "cron */5 * * * * (UTC) jitter 5s", "cron
// CRON_TZ=Europe/Paris 0 3 * * *"), so that the dashboard can give the next
// tick without the scheduler's process. Jitter delays a tick's firing, not
// the tick, and is ignored here. A text it cannot read returns an error and
// the page shows the next tick as unknown.
func parseSchedule(text string) (periodic.Schedule, error) {
	switch {
	case strings.HasPrefix(text, "every "):
		f := strings.Fields(strings.TrimPrefix(text, "every "))
		if len(f) == 0 {
			return nil, fmt.Errorf("schedule %q: no interval", text)
		}
		d, err := time.ParseDuration(f[0])
		if err != nil {
			return nil, fmt.Errorf("schedule %q: %w", text, err)
		}
		s := periodic.Every(d)
		for i := 1; i+1 < len(f); i += 2 {
			switch f[i] {
			case "offset":
				o, err := time.ParseDuration(f[i+1])
				if err != nil {
					return nil, fmt.Errorf("schedule %q: %w", text, err)
				}
				s = s.Offset(o)
			case "in":
				loc, err := time.LoadLocation(f[i+1])
				if err != nil {
					return nil, fmt.Errorf("schedule %q: %w", text, err)
				}
				s = s.In(loc)
			case "jitter":
			default:
				return nil, fmt.Errorf("schedule %q: unknown word %q", text, f[i])
			}
		}
		if err := s.Err(); err != nil {
			return nil, err
		}
		return s, nil
	case strings.HasPrefix(text, "cron "):
		expr := strings.TrimPrefix(text, "cron ")
		if i := strings.Index(expr, " jitter "); i >= 0 {
			expr = expr[:i]
		}
		var loc *time.Location
		if i := strings.LastIndex(expr, " ("); i >= 0 && strings.HasSuffix(expr, ")") {
			l, err := time.LoadLocation(expr[i+2 : len(expr)-1])
			if err != nil {
				return nil, fmt.Errorf("schedule %q: %w", text, err)
			}
			expr, loc = expr[:i], l
		}
		c, err := periodic.Cron(expr)
		if err != nil {
			return nil, err
		}
		if loc != nil {
			c = c.In(loc)
		}
		return c, nil
	}
	return nil, fmt.Errorf("schedule %q: not a periodic schedule", text)
}

// intervalAt is the time between the two ticks after t (the schedule's
// interval; a cron schedule's current gap), 0 if unknown.
func intervalAt(s periodic.Schedule, t time.Time) time.Duration {
	if e, ok := s.(periodic.EverySchedule); ok {
		return e.Interval()
	}
	a := s.Next(t)
	if a.IsZero() {
		return 0
	}
	b := s.Next(a)
	if b.IsZero() {
		return 0
	}
	return b.Sub(a)
}
