package web

import (
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/periodic"
)

// Every schedule periodic records reads back to one with the same ticks.
func TestParseScheduleRoundTrip(t *testing.T) {
	t.Parallel()
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Skip("no time zone database:", err)
	}
	for _, s := range []periodic.Schedule{
		periodic.Every(time.Minute),
		periodic.Every(24 * time.Hour).Offset(3 * time.Hour),
		periodic.Every(6 * time.Hour).In(paris).Jitter(5 * time.Second),
		periodic.Every(90 * time.Second).Offset(15 * time.Second).In(time.UTC),
		periodic.MustCron("*/5 * * * *"),
		periodic.MustCron("CRON_TZ=Europe/Paris 30 2 * * *"),
		periodic.MustCron("0 3 * * 1-5").In(paris).Jitter(10 * time.Second),
	} {
		text := s.(interface{ String() string }).String()
		got, err := parseSchedule(text)
		if err != nil {
			t.Errorf("%q: %v", text, err)
			continue
		}
		at := time.Date(2026, 3, 28, 23, 59, 0, 0, time.UTC)
		for range 5 {
			w, g := s.Next(at), got.Next(at)
			if !w.Equal(g) {
				t.Errorf("%q: next after %s = %s, want %s", text, at, g, w)
				break
			}
			at = w
		}
	}
	for _, bad := range []string{"", "every", "every x", "hourly", "cron nope", "every 1m wobble 2"} {
		if _, err := parseSchedule(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
